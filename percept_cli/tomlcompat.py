"""TOML reading on every Python that pyproject allows: tomllib (3.11+), or its backport tomli on 3.10.

Import it from here (`from percept_cli.tomlcompat import tomllib`), never `import tomllib` directly.
"""

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pyproject installs tomli there
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = ["tomllib"]
