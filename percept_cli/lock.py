"""weights.lock: the pinned model table, read and validated, and rewritten one model at a time.

Each model is a `[models.NAME]` table (layout, tasks, parameters, builtin folder or Hub files) with
`[[models.NAME.files]]` blocks pinning every file to a full commit, a size and a sha256. Reading
checks every field and names the fix; writing replaces one model's file blocks, keeps every other
line and comment, and re-parses the result before it atomically replaces the file.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from percept_cli.errors import ModelError

PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGED_LOCK = PACKAGE_DIR / "weights.lock"
ROLES = ("weights", "vae_weights", "vae_config", "scheduler_config", "config", "percept_config", "file")
LAYOUTS = ("percept", "official")
COMMIT_RE = re.compile(r"[0-9a-f]{40}")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
NAME_RE = re.compile(r"[A-Za-z0-9_-]+")  # TOML bare keys, so `lock` can write [models.NAME.files]


# ---------------------------------------------------------------------------------------------
# reading weights.lock


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

    def as_dict(self) -> dict[str, Any]:
        """The file's fields as a JSON-ready dict."""
        return {"role": self.role, "repo": self.repo, "revision": self.revision, "path": self.path,
                "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class LockEntry:
    """One model of weights.lock."""

    name: str
    layout: str
    description: str = ""
    tasks: tuple[str, ...] = ()
    parameters: int = 0
    builtin: bool = False
    folder: str = ""  # builtin only: the model folder, relative to the package
    config: dict[str, Any] = field(default_factory=dict, hash=False)
    files: tuple[LockFile, ...] = ()

    @property
    def pinned(self) -> bool:
        """Whether the entry lists files and every one is pinned."""
        return bool(self.files) and all(f.pinned for f in self.files)

    @property
    def download_size(self) -> int | None:
        """Total bytes of the files, or None if any size is unknown."""
        if not self.files or any(f.size <= 0 for f in self.files):
            return None
        return sum(f.size for f in self.files)

    def file(self, role: str) -> LockFile | None:
        """The first file with this role, if any."""
        return next((f for f in self.files if f.role == role), None)


@dataclass(frozen=True)
class Lock:
    """A parsed weights.lock."""

    path: Path
    default: str
    models: dict[str, LockEntry]

    def entry(self, name: str) -> LockEntry:
        """The entry called NAME, or a ModelError listing the names there are."""
        if name not in self.models:
            raise ModelError(f"unknown model '{name}' in {self.path}: use one of {', '.join(self.models) or '(none)'}")
        return self.models[name]


def lock_path() -> Path:
    """The weights.lock in use: $PERCEPT_WEIGHTS_LOCK, else the one installed with the package."""
    env = os.environ.get("PERCEPT_WEIGHTS_LOCK")
    return Path(env).expanduser() if env else PACKAGED_LOCK


def load_lock(path: str | Path | None = None) -> Lock:
    """Read and validate a weights.lock (default: lock_path())."""
    p = Path(path).expanduser() if path else lock_path()
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"weights.lock not found at {p}: fix PERCEPT_WEIGHTS_LOCK or reinstall percept") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"{p} is not valid TOML ({e}): fix it or restore it from the repository") from None
    raw_models = data.get("models", {})
    if not isinstance(raw_models, dict):
        raise ModelError(f"{p}: `models` must be a table of [models.NAME] tables: fix weights.lock")
    models = {name: _parse_entry(p, name, raw) for name, raw in raw_models.items()}
    default = data.get("default", "")
    if not isinstance(default, str) or (default and default not in models):
        raise ModelError(f"{p}: default = {default!r} is not one of its models ({', '.join(models)}): fix weights.lock")
    return Lock(p, default, models)


def default_model_name(lock: Lock | None = None) -> str:
    """The model used without --model: $PERCEPT_MODEL, else the lock's `default`."""
    env = os.environ.get("PERCEPT_MODEL", "").strip()
    if env:
        return env
    lock = lock or load_lock()
    if not lock.default:
        raise ModelError(f"{lock.path} names no default model: pass --model NAME or set PERCEPT_MODEL")
    return lock.default


def _parse_entry(path: Path, name: str, raw: Any) -> LockEntry:
    """Validate one [models.NAME] table into a LockEntry; ModelError names the field and the fix."""

    def bad(msg: str) -> ModelError:
        return ModelError(f"{path}: model '{name}': {msg}: fix weights.lock")

    if not NAME_RE.fullmatch(name):
        raise bad("names may only use letters, digits, '_' and '-'")
    if not isinstance(raw, dict):
        raise bad("must be a table")
    layout = raw.get("layout")
    if layout not in LAYOUTS:
        raise bad(f"layout = {layout!r} must be one of {', '.join(LAYOUTS)}")
    builtin = raw.get("builtin", False)
    folder = raw.get("folder", "")
    if not isinstance(builtin, bool) or (builtin and not _safe_relpath(folder)):
        raise bad("builtin = true needs folder = \"assets/NAME\" (a relative path inside the package)")
    files = raw.get("files", [])
    if not isinstance(files, list):
        raise bad("files must be an array of tables ([[models.NAME.files]])")
    parsed = []
    for i, f in enumerate(files):
        where = f"files[{i}]"
        if not isinstance(f, dict) or set(f) - {"role", "repo", "revision", "path", "size", "sha256"}:
            raise bad(f"{where} may only hold role, repo, revision, path, size, sha256")
        lf = LockFile(role=f.get("role", ""), path=f.get("path", ""), repo=f.get("repo", ""),
                      revision=f.get("revision", ""), size=f.get("size", 0), sha256=f.get("sha256", ""))
        if lf.role not in ROLES:
            raise bad(f"{where}.role = {lf.role!r} must be one of {', '.join(ROLES)}")
        if not isinstance(lf.path, str) or not _safe_relpath(lf.path):
            raise bad(f"{where}.path = {lf.path!r} must be a relative path without '..'")
        if not isinstance(lf.size, int) or isinstance(lf.size, bool) or lf.size < 0:
            raise bad(f"{where}.size must be a byte count (0 = unknown)")
        if not isinstance(lf.sha256, str) or (lf.sha256 and not SHA256_RE.fullmatch(lf.sha256)):
            raise bad(f"{where}.sha256 must be 64 lowercase hex digits or \"\"")
        if not isinstance(lf.revision, str) or (lf.revision and not COMMIT_RE.fullmatch(lf.revision)):
            raise bad(f"{where}.revision = {lf.revision!r} must be a full 40-hex commit or \"\" (never a branch)")
        if builtin and (lf.repo or lf.revision):
            raise bad(f"{where}: builtin files have no repo or revision")
        if not builtin and not (isinstance(lf.repo, str) and "/" in lf.repo):
            raise bad(f"{where}.repo must be a Hub repo id like \"owner/name\"")
        parsed.append(lf)
    tasks = raw.get("tasks", [])
    config = raw.get("config", {})
    if not isinstance(tasks, list) or not isinstance(config, dict):
        raise bad("tasks must be an array and config a table")
    return LockEntry(name=name, layout=layout, description=str(raw.get("description", "")), tasks=tuple(tasks),
                     parameters=int(raw.get("parameters", 0)), builtin=builtin, folder=folder, config=config,
                     files=tuple(parsed))


def _safe_relpath(p: Any) -> bool:
    """Whether p is a non-empty relative POSIX path that stays inside its root."""
    return isinstance(p, str) and bool(p) and not p.startswith(("/", "\\")) and ".." not in p.split("/")


# ---------------------------------------------------------------------------------------------
# writing weights.lock: replace one model's [[models.NAME.files]] blocks, keep every other line


_HEADER_RE = re.compile(r"\s*(\[\[?)\s*([\w.\-\"' ]+?)\s*\]\]?\s*(#.*)?")


def write_lock_files(path: str | Path, name: str, files: Sequence[LockFile], parameters: int | None = None) -> None:
    """Rewrite NAME's files (and `parameters`, when given) in a weights.lock (symlinks followed), keeping
    comments; atomic, re-parsed first."""
    real = Path(os.path.realpath(Path(path).expanduser()))
    text = real.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    heads = [(i, m[2].replace(" ", ""), m[1] == "[[") for i, line in enumerate(lines)
             if (m := _HEADER_RE.fullmatch(line.rstrip("\r\n")))]
    # 1. Each header's body runs to the next header, less the comments/blank lines just above it.
    spans = []
    for k, (start, key, is_array) in enumerate(heads):
        end = heads[k + 1][0] if k + 1 < len(heads) else len(lines)
        while end > start + 1 and (not lines[end - 1].strip() or lines[end - 1].lstrip().startswith("#")):
            end -= 1
        spans.append((start, end, key, is_array))
    table = f"models.{name}"
    mine = [s for s in spans if s[2] == table or s[2].startswith(table + ".")]
    if not any(s[2] == table and not s[3] for s in mine):
        raise ModelError(f"{real} has no [{table}] table header: add the files of '{name}' by hand")
    # 2. Drop the old [[models.NAME.files]] blocks and any `files = [...]` key in [models.NAME].
    drop: set[int] = set()
    for start, end, key, is_array in mine:
        if is_array and key == f"{table}.files":
            drop.update(range(start, end))
        elif key == table:
            if parameters is not None:
                at = [i for i in range(start + 1, end) if re.match(r"\s*parameters\s*=", lines[i])]
                if at:
                    lines[at[0]] = f"parameters = {int(parameters)}\n"
                else:
                    lines[start] = lines[start].rstrip("\r\n") + f"\nparameters = {int(parameters)}\n"
            i = start + 1
            while i < end:
                if re.match(r"\s*files\s*=", lines[i]):
                    j = _value_end(lines, i)
                    drop.update(range(i, j + 1))
                    i = j
                i += 1
    # 3. Insert the new blocks after the model's last table.
    insert_at = max(s[1] for s in mine)
    blocks = "".join(_render_file(name, f) for f in files)
    head = "".join(line for i, line in enumerate(lines[:insert_at]) if i not in drop)
    tail = "".join(line for i, line in enumerate(lines[insert_at:], insert_at) if i not in drop)
    new_text = head.rstrip("\n") + "\n" + blocks
    if tail.strip():
        new_text += "\n" + tail.lstrip("\n")
    # 4. The result must parse and say exactly what was meant, before it replaces the file.
    try:
        again = _parse_entry(real, name, tomllib.loads(new_text)["models"][name])
    except (tomllib.TOMLDecodeError, KeyError) as e:
        raise ModelError(f"rewriting {real} would break it ({e}): edit the files of '{name}' by hand") from None
    assert list(again.files) == list(files), "weights.lock rewrite changed other fields"
    assert parameters is None or again.parameters == parameters, "weights.lock rewrite lost the parameter count"
    atomic_write(real, new_text, mode=os.stat(real).st_mode & 0o7777)


def _render_file(name: str, f: LockFile) -> str:
    """One [[models.NAME.files]] block, preceded by a blank line."""
    rows = [f"[[models.{name}.files]]", f"role = {json.dumps(f.role)}"]
    if f.repo:
        rows += [f"repo = {json.dumps(f.repo)}", f"revision = {json.dumps(f.revision)}"]
    rows += [f"path = {json.dumps(f.path)}", f"size = {int(f.size)}", f"sha256 = {json.dumps(f.sha256)}"]
    return "\n" + "\n".join(rows) + "\n"


def _value_end(lines: list[str], i: int) -> int:
    """The last line of the TOML value that starts on line i (arrays may span lines)."""
    depth, quote, started = 0, "", False
    for j in range(i, len(lines)):
        line = lines[j]
        k = line.index("=") + 1 if j == i else 0
        while k < len(line):
            c = line[k]
            if quote:
                if c == "\\" and quote == '"':
                    k += 1
                elif c == quote:
                    quote = ""
            elif c in "\"'":
                quote = c
            elif c == "#":
                break
            elif c in "[{":
                depth, started = depth + 1, True
            elif c in "]}":
                depth -= 1
            k += 1
        if not started or depth <= 0:
            return j
    return len(lines) - 1


def atomic_write(path: Path, text: str, mode: int | None = None) -> None:
    """Write text to a temporary file beside path, then rename it over path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
