"""weights.lock: the pinned model table, read and validated, with the user lock read over it.

Each model is a `[models.NAME]` table (layout, tasks, parameters, builtin folder or Hub files) with
`[[models.NAME.files]]` blocks pinning every file to a full commit, a size and a sha256. The packaged
lock ($PERCEPT_WEIGHTS_LOCK overrides it) comes first; the user lock ($PERCEPT_LOCK, default
$XDG_CONFIG_HOME/percept/weights.lock), which `percept models pull NAME --pin` writes, is read over it:
its keys of a [models.NAME] replace the packaged ones. Writes go through tomlkit, which keeps comments.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from percept_cli.errors import ModelError

PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGED_LOCK = PACKAGE_DIR / "weights.lock"
ROLES = ("weights", "vae_weights", "vae_config", "scheduler_config", "config", "percept_config", "file")
COMMIT_RE, SHA256_RE, NAME_RE = re.compile(r"[0-9a-f]{40}"), re.compile(r"[0-9a-f]{64}"), re.compile(r"[\w-]+")


@dataclass(frozen=True)
class LockFile:
    """One file of a model: where it comes from and what its bytes must hash to ("" / 0 = unknown)."""

    role: str
    path: str  # inside the repo; builtin: inside the package
    repo: str = ""  # "" for builtin files
    revision: str = ""  # full 40-hex commit
    size: int = 0
    sha256: str = ""

    @property
    def pinned(self) -> bool:
        """Whether commit (Hub files), size and sha256 are all known."""
        return bool(self.sha256 and self.size and (self.revision or not self.repo))


@dataclass(frozen=True)
class LockEntry:
    """One model of the lock; `source` is the lock file its files come from."""

    name: str
    layout: str  # "percept" (our safetensors folder) or "official" (the paper's .pt + SD2's VAE)
    source: Path
    description: str = ""
    tasks: tuple[str, ...] = ()
    parameters: int = 0
    builtin: bool = False
    folder: str = ""  # builtin only: the model folder, relative to the package
    config: dict[str, Any] = field(default_factory=dict, hash=False)
    files: tuple[LockFile, ...] = ()

    @property
    def pinned(self) -> bool:
        return bool(self.files) and all(f.pinned for f in self.files)

    @property
    def download_size(self) -> int | None:
        """Total bytes of the files, or None if any size is unknown."""
        return sum(f.size for f in self.files) if self.files and all(f.size for f in self.files) else None

    def file(self, role: str) -> LockFile | None:
        return next((f for f in self.files if f.role == role), None)


@dataclass(frozen=True)
class Lock:
    """The lock in use (`path`) with the user lock (`user`, None if none was read) over it."""

    path: Path
    user: Path | None
    default: str
    models: dict[str, LockEntry]

    def entry(self, name: str) -> LockEntry:
        if name not in self.models:
            raise ModelError(f"unknown model '{name}' in {self.path}: use one of {', '.join(self.models) or '(none)'}")
        return self.models[name]


def lock_path() -> Path:
    """The weights.lock in use: $PERCEPT_WEIGHTS_LOCK, else the one installed with the package."""
    return Path(os.environ.get("PERCEPT_WEIGHTS_LOCK") or PACKAGED_LOCK).expanduser()


def user_lock_path() -> Path:
    """$PERCEPT_LOCK, else weights.lock in the user's config folder ($XDG_CONFIG_HOME or ~/.config)."""
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "percept" / "weights.lock"
    return Path(os.environ.get("PERCEPT_LOCK") or config).expanduser()


def read_json(path: str | Path, default: Any = ModelError) -> dict[str, Any]:
    """A JSON object from a file; `default` if it is missing or not one, else a ModelError naming the fix."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        if default is not ModelError:
            return default
        if isinstance(e, FileNotFoundError):
            raise ModelError(f"missing '{path}': the model folder is incomplete; re-download or re-save it") from None
        raise ModelError(f"cannot read '{path}': {e}; fix or re-download the file") from None
    if not isinstance(data, dict) and default is ModelError:
        raise ModelError(f"'{path}' holds a JSON {type(data).__name__}, not an object; fix or re-download the file")
    return data if isinstance(data, dict) else default


def load_lock(path: str | Path | None = None) -> Lock:
    """Read and validate the lock in use with the user lock over it (an explicit path: that file alone)."""
    import tomlkit

    base = Path(path).expanduser() if path else lock_path()
    user = None if path or not user_lock_path().is_file() else user_lock_path()
    tables: dict[str, dict[str, Any]] = {}
    sources: dict[str, Path] = {}
    default = ""
    for p in [base] + ([user] if user else []):
        try:
            data = tomlkit.parse(p.read_text(encoding="utf-8")).unwrap()
        except FileNotFoundError:
            raise ModelError(f"weights.lock not found at {p}: fix PERCEPT_WEIGHTS_LOCK or reinstall percept") from None
        except (tomlkit.exceptions.ParseError, UnicodeDecodeError) as e:
            raise ModelError(f"{p} is not valid TOML ({e}): fix it or restore it from the repository") from None
        models = data.get("models", {})
        if not isinstance(models, dict) or not all(isinstance(raw, dict) for raw in models.values()):
            raise ModelError(f"{p}: `models` must be a table of [models.NAME] tables: fix it")
        for name, raw in models.items():
            tables[name] = {**tables.get(name, {}), **raw}
            sources[name] = p if "files" in raw or name not in sources else sources[name]
        default = data.get("default") or default
    models = {name: _parse_entry(sources[name], name, raw) for name, raw in tables.items()}
    if not isinstance(default, str) or (default and default not in models):
        raise ModelError(f"{base}: default = {default!r} is not one of its models ({', '.join(models)}): fix it")
    return Lock(base, user, default, models)


def default_model_name(lock: Lock | None = None) -> str:
    """The model used without --model: $PERCEPT_MODEL, else the lock's `default`."""
    if env := os.environ.get("PERCEPT_MODEL", "").strip():
        return env
    if not (lock := lock or load_lock()).default:
        raise ModelError(f"{lock.path} names no default model: pass --model NAME or set PERCEPT_MODEL")
    return lock.default


def _parse_entry(path: Path, name: str, raw: dict[str, Any]) -> LockEntry:
    """Validate one [models.NAME] table into a LockEntry; ModelError names the field and the fix."""

    def check(ok: Any, msg: str) -> None:
        if not ok:
            raise ModelError(f"{path}: model '{name}': {msg}: fix {path.name}")

    relpath = lambda p: isinstance(p, str) and p and not p.startswith(("/", "\\")) and ".." not in p.split("/")
    check(NAME_RE.fullmatch(name), "names may only use letters, digits, '_' and '-'")
    check(raw.get("layout") in ("percept", "official"), f"layout = {raw.get('layout')!r} must be percept or official")
    builtin, folder = raw.get("builtin", False), raw.get("folder", "")
    check(builtin in (True, False) and (not builtin or relpath(folder)),
          'builtin = true needs folder = "assets/NAME" (a relative path inside the package)')
    check(isinstance(raw.get("files", []), list), "files must be an array of tables ([[models.NAME.files]])")
    files = []
    for i, f in enumerate(raw.get("files", [])):
        check(isinstance(f, dict) and not set(f) - set(LockFile.__dataclass_fields__),
              f"files[{i}] may only hold role, repo, revision, path, size, sha256")
        f = LockFile(**{"role": "", "path": "", **f})
        for ok, msg in ((f.role in ROLES, f"role = {f.role!r} must be one of {', '.join(ROLES)}"),
                        (relpath(f.path), f"path = {f.path!r} must be a relative path without '..'"),
                        (type(f.size) is int and f.size >= 0, "size must be a byte count (0 = unknown)"),
                        (f.sha256 == "" or SHA256_RE.fullmatch(str(f.sha256)), "sha256 must be 64 lowercase hex digits"),
                        (f.revision == "" or COMMIT_RE.fullmatch(str(f.revision)),
                         f'revision = {f.revision!r} must be a full 40-hex commit or "" (never a branch)'),
                        (not builtin or not (f.repo or f.revision), "builtin files have no repo or revision"),
                        (builtin or (isinstance(f.repo, str) and "/" in f.repo), 'repo must be like "owner/name"')):
            check(ok, f"files[{i}]: {msg}")
        files.append(f)
    check(isinstance(raw.get("tasks", []), list) and isinstance(raw.get("config", {}), dict),
          "tasks must be an array and config a table")
    return LockEntry(name=name, layout=raw["layout"], source=path, description=str(raw.get("description", "")),
                     tasks=tuple(raw.get("tasks", [])), parameters=int(raw.get("parameters", 0)), builtin=builtin,
                     folder=folder, config=raw.get("config", {}), files=tuple(files))


def write_lock_files(path: str | Path, name: str, files: Sequence[LockFile], parameters: int | None = None,
                     header: str = "") -> None:
    """Replace NAME's files (and `parameters`) in a lock file (symlinks followed), keeping every other line and
    comment; a missing file (the user lock) is created with `header` as its comment. Atomic, re-parsed first."""
    import tomlkit
    from tomlkit.items import AoT, Comment, Whitespace

    real = Path(os.path.realpath(Path(path).expanduser()))
    doc = tomlkit.parse(real.read_text(encoding="utf-8")) if real.exists() else tomlkit.document()
    for line in header.splitlines() if not real.exists() else ():
        doc.add(tomlkit.comment(line))
    if header and name not in doc.setdefault("models", tomlkit.table(is_super_table=True)):
        doc["models"].add(name, tomlkit.table())  # the user lock gets tables as it needs them
    if (table := doc.get("models", {}).get(name)) is None:
        raise ModelError(f"{real} has no [models.{name}] table header: add the files of '{name}' by hand")
    if parameters is not None:
        table["parameters"] = int(parameters)
    old = table.pop("files", [])
    body, trail = (old[-1] if isinstance(old, AoT) and old else table).value.body, []
    while body and body[-1][0] is None:  # comments and blank lines at the end precede what follows: keep them there
        trail.insert(0, body.pop()[1])
    keys = ("role", "repo", "revision", "path", "size", "sha256")
    table["files"] = tomlkit.item([{k: getattr(f, k) for k in keys if f.repo or k not in ("repo", "revision")}
                                   for f in files])
    for item in (x for x in trail if isinstance(x, (Comment, Whitespace))):  # not the Null the pop left
        table.add(item)
    text = tomlkit.dumps(doc)
    again = _parse_entry(real, name, {"layout": "percept", **tomlkit.parse(text).unwrap()["models"][name]})
    assert list(again.files) == list(files), "lock rewrite changed other fields"
    atomic_write(real, text, mode=os.stat(real).st_mode & 0o7777 if real.exists() else None)


def atomic_write(path: Path, text: str, mode: int | None = None) -> None:
    """Write text to a temporary file beside path, then rename it over path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
