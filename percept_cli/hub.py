"""Hub downloads pinned by weights.lock (lock.py), sha256 checks, the cache and offline use.

huggingface_hub does the work: the cache is looked up first (never the network), `HfApi.model_info`
gives commits, sizes and LFS sha256 in one request a repo without retries (so a dead Hub fails at
once), and `hf_hub_download` fetches each file at its pinned commit. Read at call time: HF_HUB_CACHE >
HF_HOME/hub, HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE; PERCEPT_CACHE > XDG_CACHE_HOME/percept (verified.json:
digests of files already checked). huggingface_hub is imported lazily, so `percept --help` stays fast.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Sequence

from percept_cli.errors import ChecksumError, DownloadError, ModelError, ModelNotCachedError, UsageError
from percept_cli.lock import (COMMIT_RE, PACKAGE_DIR, SHA256_RE, Lock, LockEntry, LockFile, atomic_write, load_lock,
                              read_json, user_lock_path, write_lock_files)

if TYPE_CHECKING:
    from percept_cli.checkpoints import ModelSource

OFFICIAL_ROLES = ("weights", "vae_weights", "vae_config", "scheduler_config")
LARGE_DOWNLOAD = 1_000_000_000  # bytes; above this the download notice recommends a GPU
HF_SPEC_RE = re.compile(r"hf://(?P<repo>[\w.-]+/[\w.-]+)@(?P<rev>[^/\s]+)(?:/(?P<path>\S*))?")
USER_LOCK_HEADER = ("percept's user lock: models pinned by `percept models pull NAME --pin` (trust on first use),\n"
                    "read over the packaged weights.lock. Delete a model's tables here to pin it again.")


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache: HF_HUB_CACHE > HF_HOME/hub > XDG_CACHE_HOME/huggingface/hub."""
    if cache := os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(cache).expanduser()
    xdg = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return Path(os.environ.get("HF_HOME") or xdg / "huggingface").expanduser() / "hub"


def percept_cache_dir() -> Path:
    """Where percept keeps verified.json: PERCEPT_CACHE > XDG_CACHE_HOME/percept."""
    xdg = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return Path(os.environ.get("PERCEPT_CACHE") or xdg / "percept").expanduser()


def hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def hub_offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def check_hf_env() -> None:
    """Refuse the integer settings huggingface_hub would crash on while importing, naming the variable."""
    for var in ("HF_HUB_ETAG_TIMEOUT", "HF_HUB_DOWNLOAD_TIMEOUT"):
        if var in os.environ and not os.environ[var].strip().isdigit():
            raise UsageError(f"{var}={os.environ[var]!r} must be a whole number of seconds: fix or unset it")


def _hf() -> Any:
    check_hf_env()
    import huggingface_hub

    return huggingface_hub


# ---------------------------------------------------------------------------------------------
# hashing, with a cache of verified file identities


def sha256_file(path: str | Path) -> str:
    """The sha256 of a file's bytes, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _verified(update: dict[str, Any] | None = None) -> dict[str, Any]:
    """verified.json ({real path: {size, mtime_ns, inode, sha256}}), first updated (None values drop)."""
    path = percept_cache_dir() / "verified.json"
    store = read_json(path, {})
    store = store if isinstance(store, dict) else {}
    if update:
        store = {k: v for k, v in {**store, **update}.items() if v is not None and os.path.exists(k)}
        try:
            atomic_write(path, json.dumps(store, indent=1, sort_keys=True) + "\n")
        except OSError:  # a read-only cache only costs re-hashing later
            pass
    return store


def file_sha256(path: str | Path, *, trust_cache: bool = True) -> str:
    """sha256 of a file, reusing the digest recorded for the same (real path, size, mtime_ns, inode)."""
    real = os.path.realpath(path)

    def ident() -> dict[str, int]:
        st = os.stat(real)
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}

    before, rec = ident(), _verified().get(real)
    if trust_cache and isinstance(rec, dict) and SHA256_RE.fullmatch(str(rec.get("sha256"))) \
            and all(rec.get(k) == v for k, v in before.items()):
        return rec["sha256"]
    digest = sha256_file(real)
    if ident() == before:  # unchanged while hashing: safe to remember
        _verified({real: {**before, "sha256": digest}})
    return digest


# ---------------------------------------------------------------------------------------------
# local folders: our layout and the official one


def source_from_folder(folder: str | Path, name: str, *, extra_config: dict[str, Any] | None = None) -> ModelSource:
    """A ModelSource for a folder in our layout or the official one; ModelError lists what is missing."""
    from percept_cli.checkpoints import ModelSource

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ModelError(f"model folder {folder} does not exist: check the path")
    pjson = folder / "percept.json"
    config = read_json(pjson) if pjson.is_file() else {}
    if not isinstance(config, dict):
        raise ModelError(f"{pjson} must hold a JSON object: fix or regenerate it")
    config = {**(extra_config or {}), **config}
    pts = sorted(folder.glob("*.pt"))
    sched = [] if (folder / "scheduler" / "scheduler_config.json").is_file() else ["scheduler/scheduler_config.json"]
    if config.get("layout") == "official" or (pts and not (folder / "config.json").is_file()):
        missing = [] if len(pts) == 1 else [
            "exactly one .pt state dict" + (f" (found {', '.join(p.name for p in pts)})" if pts else "")]
        missing += _missing_vae(folder / "vae", required=True) + sched
        if config.get("layout") != "official" or not isinstance(config.get("num_heads"), int):
            missing.append('percept.json with {"layout": "official", "num_heads": N}')
        if missing:
            raise ModelError(f"model folder {folder} (official layout) lacks {'; '.join(missing)}: add them, "
                             "e.g. vae/ and scheduler/ from stabilityai/stable-diffusion-2")
        return ModelSource(name=name, layout="official", weights=pts[0], vae=folder / "vae",
                           scheduler=folder / "scheduler", config=config)
    missing = [x for x, ok in (("config.json", (folder / "config.json").is_file()), ("*.safetensors weights", any(
        folder.glob("*.safetensors"))), ("percept.json", pjson.is_file())) if not ok]
    missing += sched + _missing_vae(folder / "vae", required=False)
    if missing:
        hint = "" if (folder / "config.json").is_file() else (
            " (or, for the official layout: one .pt + vae/ + scheduler/ + percept.json)")
        raise ModelError(f"model folder {folder} lacks {', '.join(missing)}: save it with percept's trainer{hint}")
    vae = folder / "vae"
    return ModelSource(name=name, layout="percept", root=folder, vae=vae if vae.is_dir() else None,
                       scheduler=folder / "scheduler", config=config)


def _missing_vae(vae: Path, *, required: bool) -> list[str]:
    """What a diffusers AutoencoderKL folder lacks (nothing if optional and absent)."""
    if not vae.is_dir():
        return ["vae/ (config.json + diffusion_pytorch_model.safetensors)"] if required else []
    missing = [] if (vae / "config.json").is_file() else ["vae/config.json"]
    return missing + ([] if any(vae.glob("diffusion_pytorch_model.*")) else ["vae/diffusion_pytorch_model.safetensors"])


# ---------------------------------------------------------------------------------------------
# Hub files: cache lookup, probe, download, verification


class Fetched(NamedTuple):
    """A file on disk, with its lock fields filled in from what was actually found."""

    file: LockFile
    path: Path


def cached_file(f: LockFile) -> Path | None:
    """The file's path in the HF cache at its pinned commit, or None; never touches the network."""
    if not COMMIT_RE.fullmatch(f.revision):
        return None
    p = _hf().try_to_load_from_cache(f.repo, f.path, cache_dir=hub_cache_dir(), revision=f.revision)
    return Path(p) if isinstance(p, str) else None


def _label(f: LockFile) -> str:
    return f"{f.path} of {f.repo}" + (f"@{f.revision[:12]}" if f.revision else "")


def _unreachable(model: str) -> ModelNotCachedError:
    return ModelNotCachedError(f"model '{model}' is not cached and the Hub cannot be reached: run "
                               f"`percept models pull {model}` on a networked machine, or use --model tiny")


def _hub_error(e: Exception, what: str, model: str, *, probing: bool) -> Exception:
    """Map a huggingface_hub/HTTP exception to a percept error naming the file and the fix."""
    while e.__cause__ and not isinstance(e, _hf().errors.HfHubHTTPError):  # hf_hub_download wraps the HTTP error
        e = e.__cause__  # type: ignore[assignment]
    endpoint, status = hub_endpoint(), getattr(getattr(e, "response", None), "status_code", None)
    if isinstance(e, _hf().errors.HfHubHTTPError) and status:
        if status in (401, 403):
            return DownloadError(f"{endpoint} refused {what} (HTTP {status}): set HF_TOKEN to a token that can read it")
        if status == 404:
            return DownloadError(f"{what} was not found on {endpoint} (HTTP 404): check repo, commit and path "
                                 "in weights.lock (or the hf:// spec)")
        return DownloadError(f"{endpoint} answered HTTP {status} for {what}: try `percept models pull {model}` "
                             "again later, or check HF_ENDPOINT")
    if probing:  # no HTTP answer at all: offline, refused, timed out
        return _unreachable(model)
    return DownloadError(f"download of {what} from {endpoint} broke off ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}): run `percept models pull {model}` again")


def _listing(repo: str, revision: str, model: str) -> tuple[str, dict[str, tuple[int, str]]]:
    """(commit, {path: (size, LFS sha256 or "")}) of a repo at a revision, in one request, no retries."""
    if hub_offline():
        raise _unreachable(model)
    try:
        info = _hf().HfApi(endpoint=hub_endpoint(), token=_token()).model_info(
            repo, revision=revision, files_metadata=True, timeout=_timeout())
    except Exception as e:
        raise _hub_error(e, f"{repo}@{revision[:12]}", model, probing=True) from None
    return info.sha or "", {s.rfilename: (s.lfs.size, s.lfs.sha256) if s.lfs else (s.size or 0, "")
                            for s in info.siblings or []}


def _probe(files: Sequence[LockFile], model: str) -> list[LockFile]:
    """HEAD each file, without retries: its commit (unpinned: the one `main` points to now, one per repo), size
    and LFS sha256, refusing any the lock contradicts before a byte is downloaded."""
    if hub_offline():
        raise _unreachable(model)
    hf, heads, out = _hf(), {}, []
    for f in files:
        url = hf.hf_hub_url(f.repo, f.path, revision=f.revision or heads.get(f.repo, "main"), endpoint=hub_endpoint())
        try:
            meta = hf.get_hf_file_metadata(url, token=_token(), timeout=_timeout())
        except Exception as e:
            raise _hub_error(e, _label(f), model, probing=True) from None
        if not COMMIT_RE.fullmatch(meta.commit_hash or ""):
            raise DownloadError(f"{hub_endpoint()} did not answer like a Hugging Face Hub for {_label(f)} "
                                "(no X-Repo-Commit header): check HF_ENDPOINT")
        heads.setdefault(f.repo, meta.commit_hash)
        sha = etag if SHA256_RE.fullmatch(etag := (meta.etag or "").strip('"')) else ""
        for what, mine, theirs in (("size", f.size, meta.size), ("sha256", f.sha256, sha)):
            if mine and theirs and mine != theirs:
                raise ChecksumError(f"{_label(f)} (model '{model}') has {what} {theirs} on the Hub, the lock expects "
                                    f"{mine}: nothing was downloaded; check the commit, size and sha256 in the lock")
        out.append(replace(f, revision=meta.commit_hash, size=f.size or meta.size or 0, sha256=f.sha256 or sha))
    return out


def _token() -> str | None:
    return os.environ.get("HF_TOKEN") or None


def _timeout() -> float:
    return float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or 10)


def _download(f: LockFile, model: str, *, force: bool, progress: bool) -> Path:
    """Download one file at its commit into the HF cache (huggingface_hub's own progress bar)."""
    hf = _hf()

    class Quiet(hf.utils.tqdm):  # type: ignore[misc, name-defined]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **{**kwargs, "disable": True})

    try:
        return Path(hf.hf_hub_download(f.repo, f.path, revision=f.revision, cache_dir=hub_cache_dir(),
                                       endpoint=hub_endpoint(), token=_token(),
                                       force_download=force, tqdm_class=None if progress else Quiet))
    except Exception as e:
        raise _hub_error(e, _label(f), model, probing=False) from None


def fix_for(entry: LockEntry | str) -> str:
    """What to run when a model's file is bad: builtin files come with the package, never from the Hub."""
    if isinstance(entry, LockEntry) and entry.builtin:
        return ("reinstall percept (pip install --force-reinstall percept-cli, or `git checkout percept_cli/assets` "
                f"in a clone); if you retrained '{entry.name}' on purpose, run `percept models lock {entry.name}`")
    name = entry.name if isinstance(entry, LockEntry) else entry
    return f"the cached file was deleted; run `percept models pull {name} --force`"


def _check(f: LockFile, path: Path, model: str, *, trust_cache: bool, fix: str) -> LockFile:
    """Compare a file on disk with its expected size/sha256; the lock fields as found, or ChecksumError."""
    where = _label(f) if f.repo else f"builtin file {PACKAGE_DIR / f.path}"
    source = "the Hub's file listing" if model.startswith("hf://") else "weights.lock"
    size = os.stat(path).st_size
    digest = file_sha256(path, trust_cache=trust_cache) if not f.size or size == f.size else ""
    if (f.size and size != f.size) or (f.sha256 and digest != f.sha256):
        if f.repo:  # delete the snapshot link and the blob behind it
            blob = Path(os.path.realpath(path))
            _verified({str(blob): None})
            for p in {path, blob}:
                p.unlink(missing_ok=True)
        got, want = (f"is {size} bytes", f.size) if digest == "" else (f"has sha256 {digest}", f.sha256)
        raise ChecksumError(f"{where} (model '{model}') {got}, {source} expects {want}: {fix}")
    return replace(f, size=size, sha256=digest)


def _fetch(files: Sequence[LockFile], model: str, *, download: bool, progress: bool, force: bool = False,
           trust_cache: bool = True, probed: bool = False) -> list[Fetched]:
    """Make Hub files (each at a commit) present and verified: cache first, then probe, then download."""
    paths = {f: (None if force else cached_file(f)) for f in files}
    missing = [f for f in files if paths[f] is None]
    if missing:
        if not download:
            raise ModelNotCachedError(f"model '{model}' is not cached: run `percept models pull {model}`, "
                                      "or use --model tiny")
        total = sum(f.size for f in (missing if probed else _probe(missing, model)))
        if progress or total >= LARGE_DOWNLOAD:
            gpu = "; a GPU is recommended" if total >= LARGE_DOWNLOAD else ""
            print(f"downloading {model}" + (f" (~{human_size(total)}{gpu})" if total else ""), file=sys.stderr,
                  flush=True)
        for f in missing:
            paths[f] = _download(f, model, force=force, progress=progress)
    return [Fetched(_check(f, paths[f], model, trust_cache=trust_cache, fix=fix_for(model)), paths[f])  # type: ignore
            for f in files]


def _builtin(entry: LockEntry, *, trust_cache: bool = True) -> list[Fetched]:
    """Verify the files a builtin entry ships inside the package."""
    out = []
    for f in entry.files:
        if not (p := PACKAGE_DIR / f.path).is_file():
            raise ModelError(f"builtin file {p} of model '{entry.name}' is missing: {fix_for(entry)}")
        out.append(Fetched(_check(f, p, entry.name, trust_cache=trust_cache, fix=fix_for(entry)), p))
    return out


def human_size(n: int | None) -> str:
    """Bytes as a short decimal size ("11 GB", "335 MB"); "?" when unknown."""
    scale = next(((u, s) for u, s in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)) if (n or 0) >= s), None)
    return "?" if not n else f"{n / scale[1]:.3g} {scale[0]}" if scale else f"{n} B"


# ---------------------------------------------------------------------------------------------
# resolve: spec -> verified ModelSource


def resolve_model(spec: str, *, download: bool = True, progress: bool = True, lock: Lock | None = None) -> ModelSource:
    """Turn a lock name, a local folder or hf://REPO@COMMIT/PATH into verified files on disk."""
    spec = spec.strip()
    check_hf_env()  # a one-line error here, not a traceback inside diffusers later
    if spec.startswith("hf://"):
        return _resolve_hf(spec, download=download, progress=progress)[0]
    lock = lock or load_lock()
    if spec in lock.models:
        entry = lock.models[spec]
        return _source_for_entry(entry, _fetch_entry(entry, download=download, progress=progress))
    path = Path(spec).expanduser()
    if spec and path.exists():
        if not path.is_dir():
            raise ModelError(f"model '{spec}' is a file: pass the folder that holds it (config.json + *.safetensors, "
                             "or one .pt + vae/ + scheduler/ + percept.json)")
        return source_from_folder(path, spec)
    raise ModelError(f"unknown model '{spec}': use one of {', '.join(lock.models) or '(none)'}, a local folder, "
                     "or hf://REPO@COMMIT/PATH")


def _fetch_entry(entry: LockEntry, *, download: bool, progress: bool, force: bool = False,
                 trust_cache: bool = True) -> list[Fetched]:
    """Fetch and verify a lock entry's files; an unpinned entry is refused (loading never follows a branch)."""
    if not entry.files:
        raise ModelError(f"model '{entry.name}' lists no files in weights.lock yet: add its files"
                         + (f" under percept_cli/{entry.folder} and run `percept models lock {entry.name}`"
                            if entry.builtin else f", then `percept models pull {entry.name} --pin`"))
    if entry.builtin:
        return _builtin(entry, trust_cache=trust_cache)
    if not entry.pinned:
        loose = ", ".join(f.path for f in entry.files if not f.pinned)
        status = "is" if any(cached_file(f) for f in entry.files) else "is not cached and"
        raise ModelNotCachedError(
            f"model '{entry.name}' {status} unpinned in {entry.source} ({loose}: no commit, size or sha256): run "
            f"`percept models pull {entry.name} --pin` on a networked machine (trust on first use), or use --model tiny")
    return _fetch(entry.files, entry.name, download=download, progress=progress, force=force, trust_cache=trust_cache)


def _source_for_entry(entry: LockEntry, fetched: list[Fetched]) -> ModelSource:
    """Build the ModelSource of a lock entry from its verified files."""
    from percept_cli.checkpoints import ModelSource

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
    m = HF_SPEC_RE.fullmatch(spec)
    if not m:
        raise ModelError(f"model '{spec}' is not of the form hf://OWNER/REPO@COMMIT/PATH: fix the spec")
    repo, rev, sub = m["repo"], m["rev"], (m["path"] or "").strip("/")
    if not COMMIT_RE.fullmatch(rev):
        raise ModelError(f"model '{spec}' names revision '{rev}': hf:// needs the full 40-hex commit (loading never "
                         "follows a branch); copy it from the repo's history on the Hub")
    folder = hub_cache_dir() / _hf().file_download.repo_folder_name(repo_id=repo, repo_type="model") / "snapshots"
    if not force:
        try:  # percept.json/config.json are fetched last, so a complete layout means a complete download
            return source_from_folder(folder / rev / sub, spec), []
        except ModelError:
            pass
    if not download:
        raise ModelNotCachedError(f"model '{spec}' is not cached: run `percept models pull {spec}`, or use --model tiny")
    commit, listing = _listing(repo, rev, spec)
    prefix = f"{sub}/" if sub else ""
    wanted = sorted((p for p in listing if p.startswith(prefix)),
                    key=lambda p: (p[len(prefix):] in ("percept.json", "config.json"), p))
    if not wanted:
        raise ModelError(f"'{sub or '/'}' holds no files in {repo}@{rev[:12]}: check the path in '{spec}'")
    files = [LockFile("file", p, repo, commit, *listing[p]) for p in wanted]
    fetched = _fetch(files, spec, download=True, progress=progress, force=force, probed=True)
    return source_from_folder(folder / rev / sub, spec), fetched


# ---------------------------------------------------------------------------------------------
# what `percept models ...` does: pull (and pin), verify, lock, cache state


class FileCheck(NamedTuple):
    """The outcome of re-hashing one lock file: status is ok | mismatch | missing | unpinned."""

    file: LockFile
    path: Path | None
    size: int | None
    sha256: str
    status: str


def pull_model(spec: str, *, force: bool = False, progress: bool = True, pin: bool = False,
               lock: Lock | None = None) -> list[Fetched]:
    """Download and verify a model's files; with `pin`, an unpinned entry is pinned into the user lock."""
    if spec.startswith("hf://"):
        return _resolve_hf(spec, download=True, progress=progress, force=force)[1]
    entry = (lock or load_lock()).entry(spec)
    if pin and not entry.builtin and not entry.pinned:
        return pin_model(entry, user_lock_path(), force=force, progress=progress)
    return _fetch_entry(entry, download=True, progress=progress, force=force, trust_cache=not force)


def pin_model(entry: LockEntry, target: Path, *, force: bool = False, progress: bool = True) -> list[Fetched]:
    """Download an entry's unpinned files at the commit `main` points to now, verify them and write every
    file's commit, size and sha256 into the lock file `target` (trust on first use)."""
    if hub_offline():
        raise _unreachable(entry.name)
    files = _probe(entry.files, entry.name)
    fetched = _fetch(files, entry.name, download=True, progress=progress, force=force, trust_cache=not force,
                     probed=True)
    write_lock_files(target, entry.name, [x.file for x in fetched], header=USER_LOCK_HEADER)
    return fetched


def verify_models(name: str | None = None, *, lock: Lock | None = None) -> dict[str, list[FileCheck]]:
    """Re-hash every cached file of one model (or all), ignoring the verified cache; no network."""
    lock = lock or load_lock()
    out: dict[str, list[FileCheck]] = {}
    for entry in [lock.entry(name)] if name else list(lock.models.values()):
        out[entry.name] = checks = []
        for f, path in cache_state(entry):
            if path is None:
                checks.append(FileCheck(f, None, None, "", "missing"))
                continue
            digest, size = file_sha256(path, trust_cache=False), os.stat(path).st_size
            ok = (not f.sha256 or digest == f.sha256) and (not f.size or size == f.size)
            checks.append(FileCheck(f, path, size, digest, "mismatch" if not ok else "ok" if f.pinned else "unpinned"))
    return out


def cache_state(entry: LockEntry) -> list[tuple[LockFile, Path | None]]:
    """Each file of an entry with its path on disk, or None (always None for a file without a commit)."""
    if entry.builtin:
        return [(f, p if (p := PACKAGE_DIR / f.path).is_file() else None) for f in entry.files]
    return [(f, cached_file(f)) for f in entry.files]


def lock_model(name: str, *, lock: Lock | None = None) -> list[LockFile]:
    """Pin NAME in the lock in use (not the user lock): builtin files re-hashed from the package, unpinned Hub
    files at `main` now. For maintainers; users run `percept models pull NAME --pin`."""
    lock = lock or load_lock()
    entry = lock.entry(name)
    if not entry.builtin:
        return [x.file for x in pin_model(entry, lock.path, progress=False)]
    folder = PACKAGE_DIR / entry.folder
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and not any(
        part.startswith(".") or part == "__pycache__" for part in p.relative_to(folder).parts))
    if not paths:
        raise ModelError(f"builtin model folder {folder} is empty or missing: put the trained '{name}' there first, "
                         f"then run `percept models lock {name}`")
    files = [LockFile(_role_of(p.relative_to(folder).as_posix()), p.relative_to(PACKAGE_DIR).as_posix(),
                      size=p.stat().st_size, sha256=file_sha256(p, trust_cache=False)) for p in paths]
    weights = [PACKAGE_DIR / f.path for f in files if f.role == "weights" and f.path.endswith(".safetensors")]
    write_lock_files(lock.path, name, files, parameters=_count_parameters(weights[0]) if len(weights) == 1 else None)
    return files


def _count_parameters(path: Path) -> int | None:
    """Elements of every tensor in a safetensors file (its header only), or None if it is not one."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            return int(sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys()))
    except (SafetensorError, OSError, ValueError):
        return None


def _role_of(rel: str) -> str:
    """The role of a file inside a percept-layout folder, from its relative path."""
    roles = {"config.json": "config", "percept.json": "percept_config", "scheduler/scheduler_config.json":
             "scheduler_config", "vae/config.json": "vae_config"}
    if rel in roles or not rel.endswith((".safetensors", ".bin")):
        return roles.get(rel, "file")
    return {"": "weights", "vae": "vae_weights"}.get(rel.rpartition("/")[0], "file")
