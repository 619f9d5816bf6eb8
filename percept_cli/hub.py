"""Model files on disk, verified: lock entries (lock.py) fetched from the Hub, local folders, hf:// specs.

huggingface_hub does the work: its cache first (no network), one `model_info` per repo and revision for the commit,
sizes and LFS sha256 of every file without retries (a dead Hub fails before any download), `hf_hub_download` at the
pinned commit; every file is then checked against its sha256. Read at call time: HF_HUB_CACHE > HF_HOME/hub,
HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE, PERCEPT_CACHE > XDG_CACHE_HOME/percept (verified.json: digests by path, size,
mtime and inode).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, NamedTuple, Sequence

from percept_cli.checkpoints import ModelSource, source_from_folder  # noqa: F401 (hub.source_from_folder)
from percept_cli.errors import ChecksumError, DownloadError, ModelError, ModelNotCachedError, UsageError
from percept_cli.lock import (COMMIT_RE, PACKAGE_DIR, SHA256_RE, Lock, LockEntry, LockFile, atomic_write, load_lock,
                              read_json, user_lock_path, write_lock_files)

OFFICIAL_ROLES = ("weights", "vae_weights", "vae_config", "scheduler_config")
LARGE_DOWNLOAD = 1_000_000_000  # bytes; above this the download notice recommends a GPU
HF_SPEC_RE = re.compile(r"hf://(?P<repo>[\w.-]+/[\w.-]+)@(?P<rev>[^/\s]+)(?:/(?P<path>\S*))?")
HTTP_ERRORS = {  # what a failed Hub call says, by HTTP status (0: no answer; 500: any other)
    0: "download of {what} from {endpoint} broke off ({error}): run `percept models pull {model}`",
    401: "{endpoint} refused {what} (HTTP {status}): set HF_TOKEN to a token that can read it",
    404: "{what} was not found on {endpoint} (HTTP 404): check repo, commit and path in the lock or hf:// spec",
    500: "{endpoint} answered HTTP {status} for {what}: run `percept models pull {model}` later, or check HF_ENDPOINT"}
HTTP_ERRORS[403] = HTTP_ERRORS[401]
USER_LOCK_HEADER = ("percept's user lock: models pinned by `percept models pull NAME --pin` (trust on first use),\n"
                    "read over the packaged weights.lock. Delete a model's tables here to pin it again.")


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache: HF_HUB_CACHE > HF_HOME/hub > XDG_CACHE_HOME/huggingface/hub."""
    if cache := os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(cache).expanduser()
    xdg = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return Path(os.environ.get("HF_HOME") or xdg / "huggingface").expanduser() / "hub"


def _auth() -> dict[str, Any]:
    """huggingface_hub's endpoint and token keywords, read at call time."""
    endpoint = (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    return {"endpoint": endpoint, "token": os.environ.get("HF_TOKEN") or None}


def hf_hub() -> Any:
    """huggingface_hub, imported once the integer settings it parses on import are known to parse."""
    for var in ("HF_HUB_ETAG_TIMEOUT", "HF_HUB_DOWNLOAD_TIMEOUT"):
        if var in os.environ and not os.environ[var].strip().isdigit():
            raise UsageError(f"{var}={os.environ[var]!r} must be a whole number of seconds: fix or unset it")
    import huggingface_hub

    return huggingface_hub


def sha256_file(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def file_sha256(path: str | Path, *, trust_cache: bool = True) -> str:
    """sha256 of a file, reusing the digest verified.json holds for the same (real path, size, mtime, inode)."""
    real, xdg = os.path.realpath(path), Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    store_path = Path(os.environ.get("PERCEPT_CACHE") or xdg / "percept").expanduser() / "verified.json"
    ident = lambda st: {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}  # noqa: E731
    before = ident(os.stat(real))
    store = {k: v for k, v in read_json(store_path, {}).items() if os.path.exists(k)}
    rec = store.get(real)
    if trust_cache and isinstance(rec, dict) and {k: rec.get(k) for k in before} == before \
            and SHA256_RE.fullmatch(str(rec.get("sha256"))):
        return rec["sha256"]
    digest = sha256_file(real)
    if ident(os.stat(real)) == before:  # unchanged while hashing: safe to remember (a read-only cache only costs time)
        try:
            atomic_write(store_path, json.dumps({**store, real: {**before, "sha256": digest}}, indent=1) + "\n")
        except OSError:
            pass
    return digest


Fetched = NamedTuple("Fetched", [("file", LockFile), ("path", Path)])  # lock fields as found, and where


def cached_file(f: LockFile) -> Path | None:
    """Where a file is on disk (builtin: in the package; Hub: in the cache at its commit), or None; no network."""
    if not f.repo:
        return p if (p := PACKAGE_DIR / f.path).is_file() else None
    p = COMMIT_RE.fullmatch(f.revision) and hf_hub().try_to_load_from_cache(
        f.repo, f.path, cache_dir=hub_cache_dir(), revision=f.revision)
    return Path(p) if isinstance(p, str) else None


def file_row(f: LockFile, path: Path | None) -> dict[str, Any]:
    """A file's lock fields and where it is on this machine, for JSON."""
    return {**asdict(f), "pinned": f.pinned, "cache_path": str(path) if path else None}


def _label(f: LockFile) -> str:
    return f"{f.path} of {f.repo}" + (f"@{f.revision[:12]}" if f.revision else "") if f.repo else \
        f"builtin file {PACKAGE_DIR / f.path}"


def _not_cached(model: str, offline: bool = False) -> ModelNotCachedError:
    return ModelNotCachedError(f"model '{model}' is not cached{' and the Hub cannot be reached' * offline}: run "
                               f"`percept models pull {model}`{' on a networked machine' * offline}, or use --model tiny")


def _mismatch(f: LockFile, model: str, size: int | None, digest: str | None, fix: str,
              where: str = "") -> ChecksumError | None:
    """The error for a file whose size or sha256 (where known) differs from what the lock expects, else None."""
    source = "the Hub's file listing" if model.startswith("hf://") else "weights.lock"
    for found, mine, theirs in (("is {} bytes", f.size, size), ("has sha256 {}", f.sha256, digest)):
        if mine and theirs not in (None, "") and mine != theirs:
            return ChecksumError(f"{_label(f)} (model '{model}') {found.format(theirs)}{where}, {source} expects "
                                 f"{mine}: {fix}")
    return None


def _hub_call(call: Any, what: str, model: str, *, probing: bool) -> Any:
    """Run a huggingface_hub call; map its failure to a percept error naming the file and the fix."""
    if any((os.environ.get(v) or "").strip().upper() in {"1", "ON", "YES", "TRUE"}
           for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        raise _not_cached(model, offline=True)
    try:
        return call(hf_hub())
    except Exception as e:
        err = e
        while err.__cause__ and not isinstance(err, hf_hub().errors.HfHubHTTPError):  # hf_hub_download wraps it
            err = err.__cause__  # type: ignore[assignment]
        status = getattr(getattr(err, "response", None), "status_code", None)
        status = status if isinstance(err, hf_hub().errors.HfHubHTTPError) and status else 0
        if probing and not status:  # no HTTP answer at all: refused, timed out
            raise _not_cached(model, offline=True) from None
        raise DownloadError(HTTP_ERRORS.get(status, HTTP_ERRORS[500] if status else HTTP_ERRORS[0]).format(
            what=what, endpoint=_auth()["endpoint"], status=status, model=model, error=type(e).__name__)) from None


def _listing(repo: str, revision: str, model: str) -> tuple[str, dict[str, tuple[int, str]]]:
    """One model_info call, without retries: the commit a revision names now, and each file's size and LFS sha256."""
    what = f"{repo}@{revision[:12]}"
    info = _hub_call(lambda hf: hf.HfApi(**_auth()).model_info(
        repo, revision=revision, files_metadata=True, timeout=float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or 10)),
        what, model, probing=True)
    if not COMMIT_RE.fullmatch(info.sha or ""):
        raise DownloadError(f"{_auth()['endpoint']} did not answer like a Hugging Face Hub for {what} (no commit "
                            "sha): check HF_ENDPOINT")
    siblings = info.siblings or []
    return info.sha, {s.rfilename: (s.lfs.size, s.lfs.sha256) if s.lfs else (s.size or 0, "") for s in siblings}


def _probe(files: Sequence[LockFile], model: str) -> list[LockFile]:
    """Each file's commit (unpinned: the one `main` points to now), size and LFS sha256 from the Hub, refusing any
    the lock contradicts before a byte is downloaded."""
    listing = functools.cache(lambda repo, revision: _listing(repo, revision, model))  # one call per repo
    out = []
    for f in files:
        commit, known = listing(f.repo, f.revision or "main")
        if f.path not in known:
            raise DownloadError(HTTP_ERRORS[404].format(what=_label(f), endpoint=_auth()["endpoint"]))
        size, sha = known[f.path]
        if err := _mismatch(f, model, size, sha, "nothing was downloaded; check the commit, size and sha256 in the "
                            "lock", where=" on the Hub"):
            raise err
        out.append(replace(f, revision=commit, size=f.size or size, sha256=f.sha256 or sha))
    return out


def fix_for(entry: LockEntry | str) -> str:
    """What to run when a model's file is bad: builtin files come with the package, never from the Hub."""
    if isinstance(entry, LockEntry) and entry.builtin:
        return ("reinstall percept (pip install --force-reinstall percept-cli, or `git checkout percept_cli/assets` "
                f"in a clone); if you retrained '{entry.name}' on purpose, run `percept models lock {entry.name}`")
    return f"run `percept models pull {getattr(entry, 'name', entry)} --force`"


def _fetch(files: Sequence[LockFile], model: str | LockEntry, *, download: bool, progress: bool, force: bool = False,
           trust_cache: bool = True, probed: bool = False) -> list[Fetched]:
    """Make files present and verified: cache (or package) first, then probe the Hub, then download; a file that
    fails its check is refused (a Hub file is deleted first: the snapshot link and the blob behind it)."""
    name = getattr(model, "name", model)
    paths = {f: None if force and f.repo else cached_file(f) for f in files}
    if missing := [f for f in files if paths[f] is None]:
        if not missing[0].repo:
            raise ModelError(f"{_label(missing[0])} of model '{name}' is missing: {fix_for(model)}")
        if not download:
            raise _not_cached(name)
        total = sum(f.size for f in (missing if probed else _probe(missing, name)))
        if progress or total >= LARGE_DOWNLOAD:
            gpu = "; a GPU is recommended" if total >= LARGE_DOWNLOAD else ""
            print(f"downloading {name}" + (f" (~{human_size(total)}{gpu})" if total else ""), file=sys.stderr,
                  flush=True)
        for f in missing:
            paths[f] = Path(_hub_call(lambda hf: hf.hf_hub_download(
                f.repo, f.path, revision=f.revision, cache_dir=hub_cache_dir(), force_download=force, **_auth(),
                tqdm_class=None if progress else functools.partial(hf.utils.tqdm, disable=True)),
                _label(f), name, probing=False))
    out = []
    for f in files:
        path = paths[f]
        size, digest = os.stat(path).st_size, file_sha256(path, trust_cache=trust_cache)
        fix = ("the cached file was deleted; " if f.repo else "") + fix_for(model)
        if err := _mismatch(f, name, size, digest, fix):
            for p in {path, Path(os.path.realpath(path))} if f.repo else ():
                p.unlink(missing_ok=True)
            raise err
        out.append(Fetched(replace(f, size=size, sha256=digest), path))
    return out


def human_size(n: int | None) -> str:
    """Bytes as a short decimal size ("11 GB", "335 MB"); "?" when unknown."""
    scale = next(((u, s) for u, s in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)) if (n or 0) >= s), None)
    return "?" if not n else f"{n / scale[1]:.3g} {scale[0]}" if scale else f"{n} B"


def resolve_model(spec: str, *, download: bool = True, progress: bool = True, lock: Lock | None = None) -> ModelSource:
    """Turn a lock name, a local folder or hf://REPO@COMMIT/PATH into verified files on disk."""
    spec = spec.strip()
    hf_hub()  # a bad HF_* setting is a one-line error here, not a traceback inside diffusers later
    if spec.startswith("hf://"):
        return _resolve_hf(spec, download=download, progress=progress)[0]
    lock = lock or load_lock()
    if spec in lock.models:
        entry = lock.models[spec]
        return _source_for_entry(entry, _fetch_entry(entry, download=download, progress=progress))
    if spec and Path(spec).expanduser().exists():
        if not Path(spec).expanduser().is_dir():
            raise ModelError(f"model '{spec}' is a file: pass the folder that holds it (config.json + *.safetensors, "
                             "or one .pt + vae/ + scheduler/ + percept.json)")
        return source_from_folder(spec, spec)
    raise ModelError(f"unknown model '{spec}': use one of {', '.join(lock.models) or '(none)'}, a local folder, "
                     "or hf://REPO@COMMIT/PATH")


def _fetch_entry(entry: LockEntry, *, download: bool, progress: bool, force: bool = False) -> list[Fetched]:
    """Fetch and verify a lock entry's files; an unpinned entry is refused (loading never follows a branch)."""
    if not entry.files:
        raise ModelError(f"model '{entry.name}' lists no files in weights.lock yet: add its files"
                         + (f" under percept_cli/{entry.folder} and run `percept models lock {entry.name}`"
                            if entry.builtin else f", then `percept models pull {entry.name} --pin`"))
    if not entry.pinned:
        loose = ", ".join(f.path for f in entry.files if not f.pinned)
        status = "is" if any(cached_file(f) for f in entry.files) else "is not cached and"
        raise ModelNotCachedError(
            f"model '{entry.name}' {status} unpinned in {entry.source} ({loose}: no commit, size or sha256): run "
            f"`percept models pull {entry.name} --pin` on a networked machine (trust on first use), or use --model tiny")
    return _fetch(entry.files, entry, download=download, progress=progress, force=force, trust_cache=not force)


def _source_for_entry(entry: LockEntry, fetched: list[Fetched]) -> ModelSource:
    """Build the ModelSource of a lock entry from its verified files."""
    by_role = {x.file.role: x.path for x in fetched}
    if entry.layout == "percept":
        if "config" not in by_role:
            raise ModelError(f"model '{entry.name}' has no file with role \"config\" in weights.lock: add it")
        root = PACKAGE_DIR / entry.folder if entry.builtin else by_role["config"].parent
        if outside := [str(x.path) for x in fetched if not x.path.is_relative_to(root)]:
            raise ModelError(f"model '{entry.name}': files of a percept-layout model must share one folder, "
                             f"commit and repo ({', '.join(outside)}): fix weights.lock")
        return source_from_folder(root, entry.name, extra_config=entry.config)
    if missing := [r for r in OFFICIAL_ROLES if r not in by_role]:
        raise ModelError(f"model '{entry.name}' (official layout) lacks files with role {', '.join(missing)} "
                         "in weights.lock: add them")
    if by_role["vae_config"].parent != by_role["vae_weights"].parent:
        raise ModelError(f"model '{entry.name}': vae_config and vae_weights must come from the same repo, commit "
                         "and folder: fix weights.lock")
    return ModelSource(name=entry.name, layout="official", weights=by_role["weights"],
                       vae=by_role["vae_weights"].parent, scheduler=by_role["scheduler_config"].parent,
                       config={"layout": "official", **entry.config})


def _resolve_hf(spec: str, *, download: bool, progress: bool, force: bool = False) -> tuple[ModelSource, list[Fetched]]:
    """hf://REPO@COMMIT/PATH: a model folder inside a Hub repo, fetched at that exact commit."""
    if not (m := HF_SPEC_RE.fullmatch(spec)):
        raise ModelError(f"model '{spec}' is not of the form hf://OWNER/REPO@COMMIT/PATH: fix the spec")
    repo, rev, sub = m["repo"], m["rev"], (m["path"] or "").strip("/")
    if not COMMIT_RE.fullmatch(rev):
        raise ModelError(f"model '{spec}' names revision '{rev}': hf:// needs the full 40-hex commit (loading never "
                         "follows a branch); copy it from the repo's history on the Hub")
    folder = hub_cache_dir() / f"models--{repo.replace('/', '--')}" / "snapshots" / rev / sub
    if not force:
        try:  # percept.json/config.json are fetched last, so a complete layout means a complete download
            return source_from_folder(folder, spec), []
        except ModelError:
            pass
    if not download:
        raise _not_cached(spec)
    _, known = _listing(repo, rev, spec)
    wanted = sorted((p for p in known if p.startswith(f"{sub}/" if sub else "")),
                    key=lambda p: (p.rpartition("/")[2] in ("percept.json", "config.json"), p))
    if not wanted:
        raise ModelError(f"'{sub or '/'}' holds no files in {repo}@{rev[:12]}: check the path in '{spec}'")
    files = [LockFile("file", p, repo, rev, *known[p]) for p in wanted]
    fetched = _fetch(files, spec, download=True, progress=progress, force=force, probed=True)
    return source_from_folder(folder, spec), fetched


def pull_model(spec: str, *, force: bool = False, progress: bool = True, pin: bool | Path = False,
               lock: Lock | None = None) -> list[Fetched]:
    """Download and verify a model's files. With `pin` (True: the user lock, or a lock file's path), an unpinned
    entry is fetched at the commit `main` points to now, and every file's commit, size and sha256 are written
    there: trust on first use."""
    hf_hub()  # a bad HF_* setting is a one-line error before anything else
    if spec.startswith("hf://"):
        return _resolve_hf(spec, download=True, progress=progress, force=force)[1]
    entry = (lock or load_lock()).entry(spec)
    if not pin or entry.builtin or entry.pinned:
        return _fetch_entry(entry, download=True, progress=progress, force=force)
    print(f"pinning '{spec}' at the current commit of its repos: trust on first use, the Hub's bytes today become "
          "what every later load must match", file=sys.stderr, flush=True)
    fetched = _fetch(_probe(entry.files, entry.name), entry, download=True, progress=progress, force=force,
                     trust_cache=not force, probed=True)
    write_lock_files(user_lock_path() if pin is True else pin, entry.name, [x.file for x in fetched],
                     header=USER_LOCK_HEADER if pin is True else "")
    return fetched


def verify_models(name: str | None = None, *, lock: Lock | None = None) -> dict[str, list[dict[str, Any]]]:
    """Re-hash every cached file of one model (or all), ignoring the verified cache; no network. Each file's
    lock fields, cache_path, actual_size, actual_sha256, status (ok | mismatch | missing | unpinned) and error."""
    lock = lock or load_lock()
    out: dict[str, list[dict[str, Any]]] = {}
    for entry in [lock.entry(name)] if name else lock.models.values():
        out[entry.name] = []
        for f in entry.files:
            path = cached_file(f)
            size, digest = (os.stat(path).st_size, file_sha256(path, trust_cache=False)) if path else (None, None)
            err = _mismatch(f, entry.name, size, digest, fix_for(entry))
            out[entry.name].append({**file_row(f, path), "actual_size": size, "actual_sha256": digest, "status":
                                    "missing" if not path else "mismatch" if err else "ok" if f.pinned else "unpinned",
                                    "error": str(err) if err else None})
    return out


def lock_model(name: str, *, lock: Lock | None = None) -> list[LockFile]:
    """Pin NAME in the lock in use (never the user lock): builtin files re-hashed from the package, unpinned
    Hub files at `main` now. For maintainers; users run `percept models pull NAME --pin`."""
    lock = lock or load_lock()
    entry = lock.entry(name)
    if not entry.builtin:
        return [x.file for x in pull_model(name, progress=False, pin=lock.path, lock=lock)]
    folder = PACKAGE_DIR / entry.folder
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and not any(
        part.startswith(".") or part == "__pycache__" for part in p.relative_to(folder).parts))
    if not paths:
        raise ModelError(f"builtin model folder {folder} is empty or missing: put the trained '{name}' there first, "
                         f"then run `percept models lock {name}`")
    roles = {"config.json": "config", "percept.json": "percept_config", "vae/config.json": "vae_config",
             "scheduler/scheduler_config.json": "scheduler_config", "diffusion_pytorch_model.safetensors": "weights",
             "vae/diffusion_pytorch_model.safetensors": "vae_weights"}
    files = [LockFile(roles.get(p.relative_to(folder).as_posix(), "file"), p.relative_to(PACKAGE_DIR).as_posix(),
                      size=p.stat().st_size, sha256=file_sha256(p, trust_cache=False)) for p in paths]
    from safetensors import SafetensorError, safe_open

    try:  # the parameter count, from the weights' safetensors header
        with safe_open(str(folder / "diffusion_pytorch_model.safetensors"), framework="np") as st:
            parameters = int(sum(math.prod(st.get_slice(k).get_shape()) for k in st.keys()))
    except (SafetensorError, OSError, ValueError):
        parameters = None
    write_lock_files(lock.path, name, files, parameters=parameters)
    return files
