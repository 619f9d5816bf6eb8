"""Hub downloads pinned by weights.lock (lock.py), sha256 checks, the cache and offline use.

Precedence (each read at call time, never at import): PERCEPT_WEIGHTS_LOCK > the packaged
weights.lock; PERCEPT_MODEL > the lock's `default`; HF_HUB_CACHE > HF_HOME/hub > ~/.cache/huggingface/hub;
PERCEPT_CACHE > XDG_CACHE_HOME/percept > ~/.cache/percept (verified.json, pulled.json).
huggingface_hub is imported lazily, so `percept --help` stays fast and offline.
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

from percept_cli.errors import ChecksumError, DownloadError, ModelError, ModelNotCachedError
from percept_cli.lock import (COMMIT_RE, PACKAGE_DIR, SHA256_RE, Lock, LockEntry, LockFile, atomic_write, load_lock,
                              write_lock_files)

if TYPE_CHECKING:
    from percept_cli.checkpoints import ModelSource

DEFAULT_ENDPOINT = "https://huggingface.co"
OFFICIAL_ROLES = ("weights", "vae_weights", "vae_config", "scheduler_config")
LARGE_DOWNLOAD = 1_000_000_000  # bytes; above this the download notice recommends a GPU
HF_SPEC_RE = re.compile(r"hf://(?P<repo>[\w.-]+/[\w.-]+)@(?P<rev>[^/\s]+)(?:/(?P<path>\S*))?")


# ---------------------------------------------------------------------------------------------
# environment, read at call time


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache: HF_HUB_CACHE > HF_HOME/hub > XDG_CACHE_HOME/huggingface/hub."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.path.expandvars(os.environ[var])).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.path.expandvars(os.environ["HF_HOME"])).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"


def percept_cache_dir() -> Path:
    """Where percept keeps verified.json and pulled.json: PERCEPT_CACHE > XDG_CACHE_HOME/percept."""
    if os.environ.get("PERCEPT_CACHE"):
        return Path(os.environ["PERCEPT_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "percept"


def hub_endpoint() -> str:
    """HF_ENDPOINT, or the public Hub."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as set now, falling back to what huggingface_hub read."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        value = os.environ.get(var)
        if value is not None and value.strip():
            return value.strip().upper() in {"1", "ON", "YES", "TRUE"}
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _token() -> str | None:
    """HF_TOKEN as set now; None lets huggingface_hub use its saved login."""
    return os.environ.get("HF_TOKEN") or None


# ---------------------------------------------------------------------------------------------
# hashing, with a cache of verified file identities


def sha256_file(path: str | Path) -> str:
    """The sha256 of a file's bytes, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: str | Path, *, trust_cache: bool = True) -> str:
    """sha256 of a file, reusing the digest recorded for the same (real path, size, mtime_ns, inode)."""
    real, ident = _identity(path)
    store_path = percept_cache_dir() / "verified.json"
    store = _read_json(store_path)
    rec = store.get(real)
    if trust_cache and isinstance(rec, dict) and all(rec.get(k) == v for k, v in ident.items()):
        if isinstance(rec.get("sha256"), str) and SHA256_RE.fullmatch(rec["sha256"]):
            return rec["sha256"]
    digest = sha256_file(real)
    if _identity(path)[1] == ident:  # unchanged while hashing: safe to remember
        store = {k: v for k, v in _read_json(store_path).items() if os.path.exists(k)}
        store[real] = {**ident, "sha256": digest}
        _write_json(store_path, store)
    return digest


def _forget(path: str | Path) -> None:
    """Drop a file from the verified cache (before deleting it)."""
    store_path = percept_cache_dir() / "verified.json"
    store = _read_json(store_path)
    if store.pop(os.path.realpath(path), None) is not None:
        _write_json(store_path, store)


def _identity(path: str | Path) -> tuple[str, dict[str, int]]:
    """(real path, {size, mtime_ns, inode}) of a file."""
    real = os.path.realpath(path)
    st = os.stat(real)
    return real, {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a small state file; missing or corrupt reads as {}."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write a small state file atomically; a read-only cache only costs re-hashing later."""
    try:
        atomic_write(path, json.dumps(data, indent=1, sort_keys=True) + "\n")
    except OSError:
        pass


# ---------------------------------------------------------------------------------------------
# local folders: our layout and the official one


def source_from_folder(folder: str | Path, name: str, *, extra_config: dict[str, Any] | None = None) -> ModelSource:
    """A ModelSource for a folder in our layout or the official one; ModelError lists what is missing."""
    from percept_cli.checkpoints import ModelSource

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ModelError(f"model folder {folder} does not exist: check the path")
    config: dict[str, Any] = {}
    pjson = folder / "percept.json"
    if pjson.is_file():
        try:
            config = json.loads(pjson.read_text(encoding="utf-8"))
        except ValueError as e:
            raise ModelError(f"{pjson} is not valid JSON ({e}): fix or regenerate it") from None
        if not isinstance(config, dict):
            raise ModelError(f"{pjson} must hold a JSON object: fix or regenerate it")
    config = {**(extra_config or {}), **config}
    pts = sorted(folder.glob("*.pt"))
    if config.get("layout") == "official" or (pts and not (folder / "config.json").is_file()):
        missing = []
        if len(pts) != 1:
            missing.append("exactly one .pt state dict" + (f" (found {', '.join(p.name for p in pts)})" if pts else ""))
        missing += _missing_vae(folder / "vae", required=True)
        if not (folder / "scheduler" / "scheduler_config.json").is_file():
            missing.append("scheduler/scheduler_config.json")
        if config.get("layout") != "official" or not isinstance(config.get("num_heads"), int):
            missing.append('percept.json with {"layout": "official", "num_heads": N}')
        if missing:
            raise ModelError(f"model folder {folder} (official layout) lacks {'; '.join(missing)}: add them, "
                             "e.g. vae/ and scheduler/ from stabilityai/stable-diffusion-2")
        return ModelSource(name=name, layout="official", weights=pts[0], vae=folder / "vae",
                           scheduler=folder / "scheduler", config=config)
    missing = []
    if not (folder / "config.json").is_file():
        missing.append("config.json")
    if not any(folder.glob("*.safetensors")):
        missing.append("*.safetensors weights")
    if not pjson.is_file():
        missing.append("percept.json")
    if not (folder / "scheduler" / "scheduler_config.json").is_file():
        missing.append("scheduler/scheduler_config.json")
    missing += _missing_vae(folder / "vae", required=False)
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
    if not any(vae.glob("diffusion_pytorch_model.*")):
        missing.append("vae/diffusion_pytorch_model.safetensors")
    return missing


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
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(f.repo, f.path, revision=f.revision, cache_dir=str(hub_cache_dir()),
                                    local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError):
        return None


def _label(f: LockFile) -> str:
    """How messages name a Hub file."""
    at = f"@{f.revision[:12]}" if f.revision else ""
    return f"{f.path} of {f.repo}{at}"


def _unreachable(model: str) -> ModelNotCachedError:
    """The one message for a model that is needed but cannot be fetched."""
    return ModelNotCachedError(f"model '{model}' is not cached and the Hub cannot be reached: run "
                               f"`percept models pull {model}` on a networked machine, or use --model tiny")


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Connection-level exception types of whichever HTTP stack huggingface_hub uses."""
    from huggingface_hub.errors import OfflineModeIsEnabled

    types: list[type[BaseException]] = [OfflineModeIsEnabled]
    for mod, names in (("httpx2", ("TransportError",)), ("httpx", ("TransportError",)),
                       ("requests", ("ConnectionError", "Timeout"))):
        if mod in sys.modules:
            types += [getattr(sys.modules[mod], n) for n in names if hasattr(sys.modules[mod], n)]
    return tuple(types)


def _hub_error(e: BaseException, what: str, model: str, *, probing: bool) -> Exception:
    """Map a huggingface_hub/HTTP exception to a percept error naming the file and the fix."""
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    endpoint = hub_endpoint()
    if isinstance(e, HfHubHTTPError) and getattr(e, "response", None) is not None:
        status = e.response.status_code
        if status in (401, 403):
            return DownloadError(f"{endpoint} refused {what} (HTTP {status}): set HF_TOKEN to a token that can read it")
        if status == 404:
            return DownloadError(f"{what} was not found on {endpoint} (HTTP 404): check repo, commit and path "
                                 "in weights.lock (or the hf:// spec)")
        return DownloadError(f"{endpoint} answered HTTP {status} for {what}: try `percept models pull {model}` "
                             "again later, or check HF_ENDPOINT")
    if isinstance(e, _transport_errors()) or (probing and isinstance(e, LocalEntryNotFoundError)):
        if probing:
            return _unreachable(model)
        return DownloadError(f"download of {what} from {endpoint} broke off ({type(e).__name__}): "
                             f"run `percept models pull {model}` again")
    if isinstance(e, OSError):
        return DownloadError(f"download of {what} from {endpoint} failed ({str(e).splitlines()[0]}): "
                             f"run `percept models pull {model}` again")
    return e if isinstance(e, Exception) else DownloadError(str(e))


def _probe(f: LockFile, model: str) -> int | None:
    """HEAD the file at its commit (no retries) and refuse a size/sha256 the lock contradicts; its size."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(f.repo, f.path, revision=f.revision, endpoint=hub_endpoint())
    timeout = float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or 10)
    try:
        meta = get_hf_file_metadata(url, token=_token(), timeout=timeout)
    except Exception as e:
        raise _hub_error(e, _label(f), model, probing=True) from None
    if meta.commit_hash is None:
        raise DownloadError(f"{hub_endpoint()} did not answer like a Hugging Face Hub for {_label(f)} "
                            "(no X-Repo-Commit header): check HF_ENDPOINT")
    if f.size and meta.size is not None and meta.size != f.size:
        raise ChecksumError(f"{_label(f)} (model '{model}') is {meta.size} bytes on the Hub, weights.lock expects "
                            f"{f.size}: nothing was downloaded; check the commit and size in weights.lock")
    etag = (meta.etag or "").strip('"')
    if f.sha256 and SHA256_RE.fullmatch(etag) and etag != f.sha256:
        raise ChecksumError(f"{_label(f)} (model '{model}') has sha256 {etag} on the Hub, weights.lock expects "
                            f"{f.sha256}: nothing was downloaded; check the commit and sha256 in weights.lock")
    return meta.size


def _download(f: LockFile, model: str, *, force: bool, progress: bool) -> Path:
    """Download one file at its commit into the HF cache (huggingface_hub's own progress bar)."""
    from huggingface_hub import hf_hub_download

    tqdm_class = None
    if not progress:
        from huggingface_hub.utils import tqdm as hf_tqdm

        class _Silent(hf_tqdm):  # type: ignore[misc, valid-type]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                kwargs["disable"] = True
                super().__init__(*args, **kwargs)

        tqdm_class = _Silent
    try:
        return Path(hf_hub_download(f.repo, f.path, revision=f.revision, cache_dir=str(hub_cache_dir()),
                                    endpoint=hub_endpoint(), token=_token(), force_download=force,
                                    tqdm_class=tqdm_class))
    except Exception as e:
        raise _hub_error(e, _label(f), model, probing=False) from None


def _discard(path: Path) -> None:
    """Delete a bad cached file: the snapshot link and the blob behind it."""
    blob = Path(os.path.realpath(path))
    _forget(blob)
    for p in {path, blob}:
        try:
            p.unlink(missing_ok=True)
        except OSError:
            pass


def _check(f: LockFile, path: Path, model: str, *, trust_cache: bool, fix: str) -> LockFile:
    """Compare a file on disk with its expected size/sha256; the lock fields as found, or ChecksumError."""
    size = os.stat(path).st_size
    where = _label(f) if f.repo else f"builtin file {PACKAGE_DIR / f.path}"
    source = "the Hub's file listing" if model.startswith("hf://") else "weights.lock"
    if f.size and size != f.size:
        if f.repo:
            _discard(path)
        raise ChecksumError(f"{where} (model '{model}') is {size} bytes, {source} expects {f.size}: {fix}")
    digest = file_sha256(path, trust_cache=trust_cache)
    if f.sha256 and digest != f.sha256:
        if f.repo:
            _discard(path)
        raise ChecksumError(f"{where} (model '{model}') has sha256 {digest}, {source} expects {f.sha256}: {fix}")
    return replace(f, size=size, sha256=digest)


def _fetch(files: Sequence[LockFile], model: str, *, download: bool, progress: bool, force: bool = False,
           trust_cache: bool = True) -> list[Fetched]:
    """Make Hub files (each at a commit) present and verified: cache first, then probe all, then download."""
    paths = {f: (None if force else cached_file(f)) for f in files}
    missing = [f for f in files if paths[f] is None]
    if missing:
        if not download:
            raise ModelNotCachedError(f"model '{model}' is not cached: run `percept models pull {model}`, "
                                      "or use --model tiny")
        if hub_offline():
            raise _unreachable(model)
        sizes = [_probe(f, model) for f in missing]  # fail fast, before any byte is downloaded
        total = sum(s or 0 for s in sizes)
        if progress or total >= LARGE_DOWNLOAD:
            gpu = "; a GPU is recommended" if total >= LARGE_DOWNLOAD else ""
            size = f" (~{human_size(total)}{gpu})" if total else ""
            print(f"downloading {model}{size}", file=sys.stderr, flush=True)
        for f in missing:
            paths[f] = _download(f, model, force=force, progress=progress)
    fix = f"the cached file was deleted; run `percept models pull {model} --force`"
    return [Fetched(_check(f, paths[f], model, trust_cache=trust_cache, fix=fix), paths[f])  # type: ignore[arg-type]
            for f in files]


def _builtin(entry: LockEntry, *, trust_cache: bool = True) -> list[Fetched]:
    """Verify the files a builtin entry ships inside the package."""
    out = []
    for f in entry.files:
        p = PACKAGE_DIR / f.path
        if not p.is_file():
            raise ModelError(f"builtin file {p} of model '{entry.name}' is missing: reinstall percept "
                             "(pip install --force-reinstall percept-cli)")
        fix = (f"reinstall percept; if you retrained '{entry.name}' on purpose, run "
               f"`percept models lock {entry.name}`")
        out.append(Fetched(_check(f, p, entry.name, trust_cache=trust_cache, fix=fix), p))
    return out


def human_size(n: int | None) -> str:
    """Bytes as a short decimal size ("11 GB", "335 MB"); "?" when unknown."""
    if not n:
        return "?"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"


# ---------------------------------------------------------------------------------------------
# resolve: spec -> verified ModelSource


def resolve_model(spec: str, *, download: bool = True, progress: bool = True, lock: Lock | None = None) -> ModelSource:
    """Turn a lock name, a local folder or hf://REPO@COMMIT/PATH into verified files on disk."""
    spec = spec.strip()
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
                 follow_main: bool = False, trust_cache: bool = True) -> list[Fetched]:
    """Fetch and verify a lock entry's files; only `follow_main` (pull) may resolve an unpinned file to main."""
    if not entry.files:
        raise ModelError(f"model '{entry.name}' lists no files in weights.lock yet: add its files"
                         + (f" under percept_cli/{entry.folder} and run `percept models lock {entry.name}`"
                            if entry.builtin else f", then `percept models pull {entry.name}`"))
    if entry.builtin:
        return _builtin(entry, trust_cache=trust_cache)
    if not follow_main and not entry.pinned:
        loose = ", ".join(f.path for f in entry.files if not f.pinned)
        # Say "not cached" first when nothing is here: that is what a user without network must fix.
        cached = any(f.revision and cached_file(f) for f in entry.files)
        status = "is not cached and" if not cached else "is"
        raise ModelNotCachedError(
            f"model '{entry.name}' {status} unpinned in weights.lock ({loose}: no commit, size or sha256): "
            f"run `percept models pull {entry.name}` then `percept models lock {entry.name}` on a networked "
            "machine, or use --model tiny")
    files = list(entry.files)
    if follow_main and not all(f.revision for f in files):
        files = _follow_main(entry, files, progress=progress)
    return _fetch(files, entry.name, download=download, progress=progress, force=force, trust_cache=trust_cache)


def _follow_main(entry: LockEntry, files: list[LockFile], *, progress: bool) -> list[LockFile]:
    """Give unpinned files the commit `main` points to now (offline: the commit of the last pull)."""
    if hub_offline():
        pulled = {(r.role, r.repo, r.path): r for r in _pulled(entry.name)}
        got = [replace(f, revision=f.revision or getattr(pulled.get((f.role, f.repo, f.path)), "revision", ""))
               for f in files]
        if not all(f.revision for f in got):
            raise _unreachable(entry.name)
        return got
    heads: dict[str, tuple[str, dict[str, tuple[int | None, str]]]] = {}
    out = []
    for f in files:
        if f.revision:
            out.append(f)
            continue
        if f.repo not in heads:
            heads[f.repo] = _repo_listing(f.repo, "main", entry.name)
            if progress:
                print(f"{entry.name}: {f.repo} main is commit {heads[f.repo][0]}", file=sys.stderr)
        commit, listing = heads[f.repo]
        if f.path not in listing:
            raise DownloadError(f"{f.path} is not in {f.repo}@{commit[:12]} (main): fix the path in weights.lock")
        size, sha = listing[f.path]
        out.append(replace(f, revision=commit, size=f.size or (size or 0), sha256=f.sha256 or sha))
    return out


def _repo_listing(repo: str, revision: str, model: str) -> tuple[str, dict[str, tuple[int | None, str]]]:
    """(commit, {path: (size, LFS sha256 or "")}) of a repo at a revision, in one request, no retries."""
    from huggingface_hub import HfApi

    timeout = float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or 10)
    try:
        info = HfApi(endpoint=hub_endpoint(), token=_token()).model_info(
            repo, revision=revision, files_metadata=True, timeout=timeout)
    except Exception as e:
        raise _hub_error(e, f"{repo}@{revision}", model, probing=True) from None
    listing = {s.rfilename: (s.lfs.size if s.lfs else s.size, s.lfs.sha256 if s.lfs else "")
               for s in (info.siblings or [])}
    if not info.sha or not COMMIT_RE.fullmatch(info.sha):
        raise DownloadError(f"{hub_endpoint()} gave no commit for {repo}@{revision}: check HF_ENDPOINT")
    return info.sha, listing


def _source_for_entry(entry: LockEntry, fetched: list[Fetched]) -> ModelSource:
    """Build the ModelSource of a lock entry from its verified files."""
    from percept_cli.checkpoints import ModelSource

    by_role = {x.file.role: x.path for x in fetched}
    if entry.layout == "percept":
        if "config" not in by_role:
            raise ModelError(f"model '{entry.name}' has no file with role \"config\" in weights.lock: "
                             f"run `percept models lock {entry.name}` or add it")
        root = PACKAGE_DIR / entry.folder if entry.builtin else by_role["config"].parent
        outside = [str(x.path) for x in fetched if not x.path.is_relative_to(root)]
        if outside:
            raise ModelError(f"model '{entry.name}': files of a percept-layout model must share one folder, "
                             f"commit and repo ({', '.join(outside)}): fix weights.lock")
        return source_from_folder(root, entry.name, extra_config=entry.config)
    missing = [r for r in OFFICIAL_ROLES if r not in by_role]
    if missing:
        raise ModelError(f"model '{entry.name}' (official layout) lacks files with role {', '.join(missing)} "
                         "in weights.lock: add them")
    vae = by_role["vae_weights"].parent
    if by_role["vae_config"].parent != vae:
        raise ModelError(f"model '{entry.name}': vae_config and vae_weights must come from the same repo, commit "
                         "and folder: fix weights.lock")
    return ModelSource(name=entry.name, layout="official", weights=by_role["weights"], vae=vae,
                       scheduler=by_role["scheduler_config"].parent, config={"layout": "official", **entry.config})


def _resolve_hf(spec: str, *, download: bool, progress: bool, force: bool = False) -> tuple[ModelSource, list[Fetched]]:
    """hf://REPO@COMMIT/PATH: a model folder inside a Hub repo, fetched at that exact commit."""
    from huggingface_hub.file_download import repo_folder_name

    m = HF_SPEC_RE.fullmatch(spec)
    if not m:
        raise ModelError(f"model '{spec}' is not of the form hf://OWNER/REPO@COMMIT/PATH: fix the spec")
    repo, rev, sub = m["repo"], m["rev"], (m["path"] or "").strip("/")
    if not COMMIT_RE.fullmatch(rev):
        raise ModelError(f"model '{spec}' names revision '{rev}': hf:// needs the full 40-hex commit (loading never "
                         "follows a branch); copy it from the repo's history on the Hub")
    folder = hub_cache_dir() / repo_folder_name(repo_id=repo, repo_type="model") / "snapshots" / rev / sub
    if not force:
        try:  # percept.json/config.json are fetched last, so a complete layout means a complete download
            return source_from_folder(folder, spec), []
        except ModelError:
            pass
    if not download:
        raise ModelNotCachedError(f"model '{spec}' is not cached: run `percept models pull {spec}`, "
                                  "or use --model tiny")
    if hub_offline():
        raise _unreachable(spec)
    commit, listing = _repo_listing(repo, rev, spec)
    prefix = f"{sub}/" if sub else ""
    wanted = sorted((p for p in listing if p.startswith(prefix)),
                    key=lambda p: (p[len(prefix):] in ("percept.json", "config.json"), p))
    if not wanted:
        raise ModelError(f"'{sub or '/'}' holds no files in {repo}@{rev[:12]}: check the path in '{spec}'")
    files = [LockFile("file", p, repo, commit, listing[p][0] or 0, listing[p][1]) for p in wanted]
    fetched = _fetch(files, spec, download=True, progress=progress, force=force)
    return source_from_folder(folder, spec), fetched


# ---------------------------------------------------------------------------------------------
# what `percept models ...` does: pull, verify, lock, cache state


class FileCheck(NamedTuple):
    """The outcome of re-hashing one lock file: status is ok | mismatch | missing | unpinned."""

    file: LockFile
    path: Path | None
    size: int | None
    sha256: str
    status: str


def pull_model(spec: str, *, force: bool = False, progress: bool = True, lock: Lock | None = None) -> list[Fetched]:
    """Download and verify a model's files (an unpinned lock entry follows `main`) and record what was got."""
    if spec.startswith("hf://"):
        return _resolve_hf(spec, download=True, progress=progress, force=force)[1]
    lock = lock or load_lock()
    entry = lock.entry(spec)
    fetched = _fetch_entry(entry, download=True, progress=progress, force=force, follow_main=True,
                           trust_cache=not force)
    if not entry.builtin:
        records = _read_json(percept_cache_dir() / "pulled.json")
        records[entry.name] = [x.file.as_dict() for x in fetched]
        _write_json(percept_cache_dir() / "pulled.json", records)
    return fetched


def verify_models(name: str | None = None, *, lock: Lock | None = None) -> dict[str, list[FileCheck]]:
    """Re-hash every cached file of one model (or all), ignoring the verified cache; no network."""
    lock = lock or load_lock()
    entries = [lock.entry(name)] if name else list(lock.models.values())
    out: dict[str, list[FileCheck]] = {}
    for entry in entries:
        checks = []
        for f, path in cache_state(entry):
            if path is None:
                checks.append(FileCheck(f, None, None, "", "missing"))
                continue
            digest = file_sha256(path, trust_cache=False)
            size = os.stat(path).st_size
            ok = (not f.sha256 or digest == f.sha256) and (not f.size or size == f.size)
            status = "mismatch" if not ok else ("ok" if f.pinned else "unpinned")
            checks.append(FileCheck(f, path, size, digest, status))
        out[entry.name] = checks
    return out


def cache_state(entry: LockEntry) -> list[tuple[LockFile, Path | None]]:
    """Each file of an entry with its path on disk, or None; unpinned files use the last pull's commit."""
    if entry.builtin:
        return [(f, p if (p := PACKAGE_DIR / f.path).is_file() else None) for f in entry.files]
    pulled = {(r.role, r.repo, r.path): r for r in _pulled(entry.name)}
    out = []
    for f in entry.files:
        rev = f.revision or getattr(pulled.get((f.role, f.repo, f.path)), "revision", "")
        out.append((f, cached_file(replace(f, revision=rev)) if rev else None))
    return out


def lock_model(name: str, *, lock: Lock | None = None) -> list[LockFile]:
    """Write the pinned files of NAME into weights.lock: builtin from the package, Hub ones from the last pull."""
    lock = lock or load_lock()
    entry = lock.entry(name)
    parameters = None
    if entry.builtin:
        files = _builtin_files(entry)
        weights = [PACKAGE_DIR / f.path for f in files if f.role == "weights" and f.path.endswith(".safetensors")]
        parameters = _count_parameters(weights[0]) if len(weights) == 1 else None
    else:
        pulled = {(r.role, r.repo, r.path): r for r in _pulled(name)}
        files = []
        for f in entry.files:
            if f.pinned:
                files.append(f)
                continue
            got = pulled.get((f.role, f.repo, f.path))
            if got is None or not got.pinned:
                raise ModelError(f"no pull of {f.path} for model '{name}' is recorded: run `percept models pull "
                                 f"{name}` first")
            if any(mine and mine != theirs for mine, theirs in
                   ((f.revision, got.revision), (f.sha256, got.sha256), (f.size, got.size))):
                raise ChecksumError(f"the last pull of {_label(f)} (model '{name}') got {got.revision[:12]} sha256 "
                                    f"{got.sha256}, which weights.lock contradicts: run `percept models pull {name} "
                                    "--force` or fix weights.lock")
            path = cached_file(got)
            if path is None:
                raise ModelNotCachedError(f"{_label(got)} is no longer cached: run `percept models pull {name}` "
                                          f"again, then `percept models lock {name}`")
            fix = f"run `percept models pull {name} --force`, then `percept models lock {name}`"
            files.append(_check(got, path, name, trust_cache=True, fix=fix))
    write_lock_files(lock.path, name, files, parameters=parameters)
    return files


def _count_parameters(path: Path) -> int | None:
    """Elements of every tensor in a safetensors file (its header only), or None if it is not one."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            return int(sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys()))
    except (SafetensorError, OSError, ValueError):
        return None


def _builtin_files(entry: LockEntry) -> list[LockFile]:
    """Hash every file of a builtin model's folder in the package, with roles from their names."""
    folder = PACKAGE_DIR / entry.folder
    if not folder.is_dir():
        raise ModelError(f"builtin model folder {folder} does not exist: put the trained '{entry.name}' there "
                         f"first, then run `percept models lock {entry.name}`")
    files = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if not p.is_file() or any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
            continue
        files.append(LockFile(role=_role_of(rel.as_posix()), path=p.relative_to(PACKAGE_DIR).as_posix(),
                              size=p.stat().st_size, sha256=file_sha256(p, trust_cache=False)))
    if not files:
        raise ModelError(f"builtin model folder {folder} is empty: put the trained '{entry.name}' there first")
    return files


def _role_of(rel: str) -> str:
    """The role of a file inside a percept-layout folder, from its relative path."""
    roles = {"config.json": "config", "percept.json": "percept_config", "scheduler/scheduler_config.json":
             "scheduler_config", "vae/config.json": "vae_config"}
    if rel in roles:
        return roles[rel]
    if rel.endswith((".safetensors", ".bin")):
        return {"": "weights", "vae": "vae_weights"}.get(rel.rpartition("/")[0], "file")
    return "file"


def _pulled(name: str) -> list[LockFile]:
    """The files the last `percept models pull NAME` got, from pulled.json."""
    rows = _read_json(percept_cache_dir() / "pulled.json").get(name, [])
    out = []
    for r in rows if isinstance(rows, list) else []:
        try:
            out.append(LockFile(**{k: r[k] for k in ("role", "repo", "revision", "path", "size", "sha256")}))
        except (KeyError, TypeError):
            continue
    return out


