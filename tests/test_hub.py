"""weights.lock, pinned downloads through a stand-in Hub, sha256 refusal, caches and offline use."""

from __future__ import annotations

import os
import re
import time
import types
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import tomlkit

from percept_cli import hub as H
from percept_cli import lock as L
from percept_cli.errors import ChecksumError, DownloadError, ModelError, ModelNotCachedError
from tests.hub_server import SD2, WEIGHTS_REPO, HubStandIn, lock_text, official_files, sha

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Official:
    """A stand-in Hub holding the paper's repos, and a pinned lock naming them."""

    hub: HubStandIn
    lock: Path
    data: dict[str, bytes]  # path -> bytes
    commits: dict[str, str]  # repo -> commit
    files: list[dict]


@pytest.fixture
def official(hub_env: HubStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Official:
    """The paper's two repos in the stand-in (tiny bytes) and a pinned lock for them."""
    data = {"dit_moe_generalist.pt": bytes(range(256)) * 64,
            "vae/diffusion_pytorch_model.safetensors": b"\x07" * 5000,
            "vae/config.json": b'{"_class_name": "AutoencoderKL"}',
            "scheduler/scheduler_config.json": b'{"_class_name": "DDIMScheduler"}',
            "unet/diffusion_pytorch_model.safetensors": b"never fetched"}
    commits = {WEIGHTS_REPO: hub_env.add(WEIGHTS_REPO, {"dit_moe_generalist.pt": data["dit_moe_generalist.pt"]}),
               SD2: hub_env.add(SD2, {k: v for k, v in data.items() if k != "dit_moe_generalist.pt"})}
    files = official_files(data, commits)
    lock = tmp_path / "weights.lock"
    lock.write_text(lock_text("generalist", files))
    monkeypatch.setenv("PERCEPT_WEIGHTS_LOCK", str(lock))
    return Official(hub_env, lock, data, commits, files)


def no_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip huggingface_hub's 1 s pause between download retries (only in its file_download module)."""
    import huggingface_hub.file_download as fd

    monkeypatch.setattr(fd, "time", types.SimpleNamespace(sleep=lambda s: None))


# --- weights.lock ------------------------------------------------------------------------------


def test_repo_weights_lock_parses_and_is_packaged() -> None:
    lock = L.load_lock(REPO_ROOT / "weights.lock")
    assert lock.default == "tiny"
    gen, tiny = lock.entry("generalist"), lock.entry("tiny")
    assert gen.layout == "official" and gen.parameters == 2758511264 and gen.config["num_heads"] == 16
    assert not gen.pinned and gen.file("weights").revision == ""
    vae = gen.file("vae_weights")
    assert vae.sha256 == "a1d993488569e928462932c8c38a0760b874d166399b14414135bd9c42df5815"
    assert vae.size == 334643276 and vae.revision == ""
    assert tiny.builtin and tiny.pinned and tiny.folder == "assets/tiny" and tiny.parameters > 0
    assert {f.role for f in tiny.files} == {"config", "weights", "percept_config", "scheduler_config"}
    assert (REPO_ROOT / "percept_cli" / "weights.lock").resolve() == (REPO_ROOT / "weights.lock").resolve()


@pytest.mark.parametrize("field,value,needle", [
    ("revision", "5c29fe3", "40-hex"), ("revision", "main", "40-hex"), ("sha256", "ABC", "64 lowercase"),
    ("path", "../x.pt", "relative path"), ("role", "weird", "role")])
def test_load_lock_rejects_bad_fields(tmp_path: Path, field: str, value: str, needle: str) -> None:
    f = {"role": "weights", "repo": "a/b", "revision": "", "path": "w.pt", "size": 0, "sha256": ""} | {field: value}
    (tmp_path / "l.toml").write_text(lock_text("m", [f]))
    with pytest.raises(ModelError, match=needle):
        L.load_lock(tmp_path / "l.toml")


def test_a_developers_own_user_lock_never_reaches_the_tests(no_user_lock: Path) -> None:
    """conftest points PERCEPT_LOCK at a temporary path, so ~/.config/percept/weights.lock is never read here."""
    assert L.user_lock_path() == no_user_lock and not no_user_lock.exists() and L.load_lock().user is None


def test_default_model_name_env_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "l.toml").write_text(lock_text("m", []))
    monkeypatch.setenv("PERCEPT_WEIGHTS_LOCK", str(tmp_path / "l.toml"))
    monkeypatch.delenv("PERCEPT_MODEL", raising=False)
    assert L.default_model_name() == "m"
    monkeypatch.setenv("PERCEPT_MODEL", "hf://a/b@" + "0" * 40 + "/x")
    assert L.default_model_name() == "hf://a/b@" + "0" * 40 + "/x"


def test_unknown_model_lists_the_choices(official: Official) -> None:
    with pytest.raises(ModelError, match=r"unknown model 'nope': use one of generalist, a local folder, or hf://"):
        H.resolve_model("nope")


# --- downloads through the stand-in ------------------------------------------------------------


def test_pinned_download_builds_official_source_from_the_cache(official: Official) -> None:
    src = H.resolve_model("generalist", progress=False)
    assert src.layout == "official" and src.name == "generalist"
    assert src.weights.read_bytes() == official.data["dit_moe_generalist.pt"]
    assert (src.vae / "config.json").is_file() and (src.vae / "diffusion_pytorch_model.safetensors").is_file()
    assert (src.scheduler / "scheduler_config.json").is_file()
    assert src.config == {"layout": "official", "num_heads": 2}
    assert str(src.weights).startswith(os.environ["HF_HUB_CACHE"])
    # Every file request names the pinned commit, never a branch.
    assert official.hub.count("GET", "/resolve/") == 4
    for _, path in official.hub.requests:
        repo = WEIGHTS_REPO if WEIGHTS_REPO in path else SD2
        assert f"/{official.commits[repo]}/" in path.split("?")[0] + "/" and "/main" not in path


def test_token_and_hf_home_are_read_at_call_time(official: Official, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_TOKEN", "hf_stand_in_token")
    src = H.resolve_model("generalist", progress=False)
    assert src.weights.is_relative_to(Path(os.environ["HF_HOME"]) / "hub")
    assert set(official.hub.tokens) == {"Bearer hf_stand_in_token"}


def test_refused_token_names_hf_token(official: Official) -> None:
    official.hub.faults["dit_moe_generalist.pt"] = "error401"
    with pytest.raises(DownloadError, match=r"HTTP 401.*set HF_TOKEN"):
        H.resolve_model("generalist", progress=False)


def test_percept_layout_entry_from_the_hub(hub_env: HubStandIn, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    data = {"ckpt/config.json": b"{}", "ckpt/diffusion_pytorch_model.safetensors": b"\x04" * 256,
            "ckpt/percept.json": b'{"tasks": ["flow"]}', "ckpt/scheduler/scheduler_config.json": b"{}"}
    commit = hub_env.add("me/percept-small", data)
    roles = ["config", "weights", "percept_config", "scheduler_config"]
    files = [{"role": r, "repo": "me/percept-small", "revision": commit, "path": p, "size": len(b), "sha256": sha(b)}
             for r, (p, b) in zip(roles, data.items())]
    (tmp_path / "l.toml").write_text(lock_text("small", files, layout="percept"))
    monkeypatch.setenv("PERCEPT_WEIGHTS_LOCK", str(tmp_path / "l.toml"))
    src = H.resolve_model("small", progress=False)
    assert src.layout == "percept" and src.root.name == "ckpt" and src.root.parent.name == commit
    assert src.config == {"num_heads": 2, "tasks": ["flow"]}  # percept.json over the lock's config


def test_second_resolve_makes_no_request(official: Official) -> None:
    H.resolve_model("generalist", progress=False)
    before = len(official.hub.requests)
    H.resolve_model("generalist", progress=False)
    assert len(official.hub.requests) == before


def test_download_notice_on_stderr(official: Official, capsys: pytest.CaptureFixture[str]) -> None:
    H.resolve_model("generalist", progress=True)
    assert "downloading generalist (~" in capsys.readouterr().err


def test_wrong_bytes_are_refused_and_deleted(official: Official) -> None:
    official.hub.faults["dit_moe_generalist.pt"] = "wrong_bytes"
    with pytest.raises(ChecksumError) as err:
        H.resolve_model("generalist", progress=False)
    msg = str(err.value)
    assert "dit_moe_generalist.pt" in msg and sha(official.data["dit_moe_generalist.pt"]) in msg
    assert "percept models pull generalist --force" in msg and "\n" not in msg
    snapshots = Path(os.environ["HF_HUB_CACHE"]) / "models--zeeshanp--scaling_diffusion_perception"
    assert not list(snapshots.rglob("dit_moe_generalist.pt"))  # no link left to a bad file
    assert not [p for p in (snapshots / "blobs").iterdir() if not p.name.endswith(".lock")]


def test_hub_hash_contradicting_lock_is_refused_before_download(official: Official, tmp_path: Path) -> None:
    files = [dict(f) for f in official.files]
    files[0]["sha256"] = "0" * 64
    official.lock.write_text(lock_text("generalist", files))
    with pytest.raises(ChecksumError, match="nothing was downloaded"):
        H.resolve_model("generalist", progress=False)
    assert official.hub.count("GET", "/resolve/") == 0


def test_file_missing_on_the_hub_is_refused_before_download(official: Official) -> None:
    files = [dict(f) for f in official.files]
    files[0]["path"] = "no_such.pt"
    official.lock.write_text(lock_text("generalist", files))
    with pytest.raises(DownloadError, match=r"no_such.pt of zeeshanp/\S+ was not found on .*\(HTTP 404\)"):
        H.resolve_model("generalist", progress=False)
    assert official.hub.count("GET", "/resolve/") == 0


def test_truncated_download_is_refused(official: Official, monkeypatch: pytest.MonkeyPatch) -> None:
    no_sleep(monkeypatch)
    official.hub.faults["vae/diffusion_pytorch_model.safetensors"] = "truncate"
    with pytest.raises(DownloadError, match=r"vae/diffusion_pytorch_model.safetensors of stabilityai"):
        H.resolve_model("generalist", progress=False)
    assert H.cached_file(L.load_lock().entry("generalist").file("vae_weights")) is None


def test_server_error_is_a_clear_download_error(official: Official) -> None:
    official.hub.faults["*"] = "error500"
    t0 = time.monotonic()
    with pytest.raises(DownloadError, match=rf"answered HTTP 500 for {WEIGHTS_REPO}@[0-9a-f]{{12}}: run `percept"):
        H.resolve_model("generalist", progress=False)
    assert time.monotonic() - t0 < 3
    assert official.hub.count("GET", "/resolve/") == 0  # probed, refused, nothing downloaded


def test_offline_with_empty_cache_fails_fast(official: Official, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.monotonic()
    with pytest.raises(ModelNotCachedError) as err:
        H.resolve_model("generalist")
    assert time.monotonic() - t0 < 3
    assert "`percept models pull generalist`" in str(err.value) and "--model tiny" in str(err.value)
    assert official.hub.requests == []


def test_unreachable_hub_with_empty_cache_fails_fast(official: Official, monkeypatch: pytest.MonkeyPatch) -> None:
    dead = HubStandIn()  # bound, never started, then closed: connections are refused
    dead._server.server_close()
    monkeypatch.setenv("HF_ENDPOINT", dead.url)
    t0 = time.monotonic()
    with pytest.raises(ModelNotCachedError, match="the Hub cannot be reached"):
        H.resolve_model("generalist")
    assert time.monotonic() - t0 < 3


def test_offline_with_cache_works_without_requests(official: Official, monkeypatch: pytest.MonkeyPatch) -> None:
    H.resolve_model("generalist", progress=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = len(official.hub.requests)
    assert H.resolve_model("generalist", download=False).layout == "official"
    assert len(official.hub.requests) == before


def test_not_cached_without_download(official: Official) -> None:
    with pytest.raises(ModelNotCachedError, match="is not cached: run `percept models pull generalist`"):
        H.resolve_model("generalist", download=False)


# --- unpinned entries, pull and lock ------------------------------------------------------------


def test_unpinned_entry_is_refused_for_loading(official: Official) -> None:
    official.lock.write_text(lock_text("generalist", official_files(official.data, official.commits, pinned=False)))
    with pytest.raises(ModelNotCachedError, match=r"'generalist' is not cached and unpinned.*`percept models pull "
                       r"generalist --pin`.*trust on first use.*--model tiny"):
        H.resolve_model("generalist")
    assert official.hub.requests == []


def test_offline_generalist_from_the_repo_lock_fails_fast(monkeypatch, tmp_path) -> None:
    """The shipped weights.lock, offline, empty cache: exit-1 error naming the model, within seconds."""
    import time

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("PERCEPT_LOCK", str(tmp_path / "no-user.lock"))
    monkeypatch.delenv("PERCEPT_WEIGHTS_LOCK", raising=False)
    start = time.monotonic()
    with pytest.raises(ModelNotCachedError, match=r"'generalist' is not cached.*percept models pull generalist.*--model tiny") as err:
        H.resolve_model("generalist")
    assert time.monotonic() - start < 3 and err.value.exit_code == 1


def test_lock_pins_main_into_the_repo_lock_format(official: Official, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # The repository's own weights.lock, with the VAE's known hash/size swapped for the stand-in's bytes.
    vae = official.data["vae/diffusion_pytorch_model.safetensors"]
    text = (REPO_ROOT / "weights.lock").read_text()
    text = text.replace("a1d993488569e928462932c8c38a0760b874d166399b14414135bd9c42df5815", sha(vae))
    text = text.replace("334643276", str(len(vae))).replace("size = 345\n", "size = 0\n")
    lock = tmp_path / "repo-weights.lock"
    lock.write_text(text)
    monkeypatch.setenv("PERCEPT_WEIGHTS_LOCK", str(lock))

    written = H.lock_model("generalist")  # maintainers: pin into the lock in use
    assert all(f.pinned for f in written) and {f.revision for f in written} == set(official.commits.values())
    assert official.hub.count(contains="/revision/main") == 2  # main resolved once per repo
    after = lock.read_text()
    assert after.split("[models.generalist]")[0] == text.split("[models.generalist]")[0]  # header, tiny kept
    assert "# What the .pt cannot say" in after and not Path(os.environ["PERCEPT_LOCK"]).exists()
    entry = L.load_lock(lock).entry("generalist")
    assert entry.pinned and entry.config["num_heads"] == 16
    assert entry.file("weights").sha256 == sha(official.data["dit_moe_generalist.pt"])
    assert entry.file("vae_config").revision == official.commits[SD2]
    before = len(official.hub.requests)
    assert H.resolve_model("generalist").layout == "official"
    assert len(official.hub.requests) == before
    assert not list(tmp_path.glob(".repo-weights.lock.*"))  # no temporary left behind


def test_pin_writes_the_user_lock_read_over_the_packaged_one(official: Official) -> None:
    unpinned = lock_text("generalist", official_files(official.data, official.commits, pinned=False))
    official.lock.write_text(unpinned)
    with pytest.raises(ModelNotCachedError, match="percept models pull generalist --pin"):
        H.pull_model("generalist", progress=False)  # without --pin: no branch is followed
    H.pull_model("generalist", progress=False, pin=True)
    user = Path(os.environ["PERCEPT_LOCK"])
    assert official.lock.read_text() == unpinned  # the packaged lock is never edited
    assert user.read_text().startswith("# percept's user lock") and "trust on first use" in user.read_text()
    entry = L.load_lock().entry("generalist")
    assert entry.pinned and entry.source == user and entry.config == {"num_heads": 2}
    assert L.load_lock().entry("generalist").file("weights").sha256 == sha(official.data["dit_moe_generalist.pt"])
    assert H.resolve_model("generalist", download=False).layout == "official"
    assert L.load_lock(official.lock).entry("generalist").pinned is False  # an explicit path: that file alone


def test_pin_refuses_a_main_that_contradicts_a_known_hash(official: Official) -> None:
    files = official_files(official.data, official.commits, pinned=False)
    files[1]["sha256"] = "1" * 64  # the VAE hash is known, the commit is not
    official.lock.write_text(lock_text("generalist", files))
    with pytest.raises(ChecksumError, match="vae/diffusion_pytorch_model.safetensors.*nothing was downloaded"):
        H.pull_model("generalist", progress=False, pin=True)
    assert not Path(os.environ["PERCEPT_LOCK"]).exists()


def test_pin_offline_fails_fast(official: Official, monkeypatch: pytest.MonkeyPatch) -> None:
    official.lock.write_text(lock_text("generalist", official_files(official.data, official.commits, pinned=False)))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotCachedError, match="the Hub cannot be reached"):
        H.pull_model("generalist", pin=True)
    assert official.hub.requests == []


def test_lock_follows_a_symlinked_lock(official: Official, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    official.lock.write_text(lock_text("generalist", official_files(official.data, official.commits, pinned=False)))
    link = tmp_path / "pkg" / "weights.lock"
    link.parent.mkdir()
    link.symlink_to(official.lock)
    monkeypatch.setenv("PERCEPT_WEIGHTS_LOCK", str(link))
    H.lock_model("generalist")
    assert link.is_symlink() and L.load_lock(link).entry("generalist").pinned


def test_write_lock_files_replaces_inline_files_and_keeps_the_rest(tmp_path: Path) -> None:
    text = ('# header\ndefault = "a"\n\n[models.a]\nlayout = "percept"  # ours\nfiles = [\n'
            '  { role = "config", repo = "o/r", revision = "", path = "x]/config.json", size = 0, sha256 = "" },\n'
            ']  # inline\ntasks = ["depth"]\n\n# b is next\n[models.b]\nlayout = "official"\n')
    (tmp_path / "l.toml").write_text(text)
    new = L.LockFile("config", "x]/config.json", "o/r", "a" * 40, 2, "b" * 64)
    L.write_lock_files(tmp_path / "l.toml", "a", [new])
    after = (tmp_path / "l.toml").read_text()
    assert L.load_lock(tmp_path / "l.toml").entry("a").files == (new,)
    assert 'layout = "percept"  # ours\ntasks = ["depth"]\n\n[[models.a.files]]' in after
    assert after.endswith('\n\n# b is next\n[models.b]\nlayout = "official"\n') and after.startswith("# header\n")


def test_write_lock_files_creates_and_extends_a_user_lock(tmp_path: Path) -> None:
    user = tmp_path / "config" / "percept" / "weights.lock"
    a = L.LockFile("weights", "w.pt", "o/r", "a" * 40, 2, "b" * 64)
    L.write_lock_files(user, "a", [a], header="my lock\nsecond line")
    L.write_lock_files(user, "b", [replace(a, path="v.pt")], header="my lock\nsecond line")
    L.write_lock_files(user, "a", [replace(a, size=3)], header="my lock\nsecond line")
    text = user.read_text()
    assert text.startswith("# my lock\n# second line\n") and text.count("# my lock") == 1
    data = tomlkit.parse(text).unwrap()
    assert [f["size"] for f in data["models"]["a"]["files"]] == [3] and data["models"]["b"]["files"][0]["path"] == "v.pt"
    with pytest.raises(ModelError, match=r"no \[models.c\] table"):
        L.write_lock_files(user, "c", [a])  # without a header (the packaged lock): never adds a model


# --- verified-identity cache --------------------------------------------------------------------


def test_verified_cache_avoids_rehashing(official: Official, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = H.sha256_file
    monkeypatch.setattr(H, "sha256_file", lambda p: calls.append(str(p)) or real(p))
    H.resolve_model("generalist", progress=False)
    assert len(calls) == 4
    H.resolve_model("generalist", progress=False)
    assert len(calls) == 4  # same (path, size, mtime_ns, inode): not hashed again
    weights = H.cached_file(L.load_lock().entry("generalist").file("weights"))
    st = os.stat(weights)
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    H.resolve_model("generalist", progress=False)
    assert len(calls) == 5  # touched: hashed again
    assert H.verify_models("generalist")["generalist"][0]["status"] == "ok"
    assert len(calls) == 9  # verify ignores the cache


def test_file_changed_in_place_is_caught(official: Official) -> None:
    src = H.resolve_model("generalist", progress=False)
    blob = Path(os.path.realpath(src.weights))
    blob.write_bytes(b"x" * len(official.data["dit_moe_generalist.pt"]))
    with pytest.raises(ChecksumError, match="pull generalist --force"):
        H.resolve_model("generalist", progress=False)
    assert not blob.exists()


# --- builtin entries ----------------------------------------------------------------------------


def make_percept_folder(folder: Path) -> None:
    (folder / "scheduler").mkdir(parents=True)
    (folder / "config.json").write_text('{"_class_name": "PerceptDiT"}')
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00" * 64)
    (folder / "percept.json").write_text('{"tasks": ["depth"]}')
    (folder / "scheduler" / "scheduler_config.json").write_text("{}")


def test_builtin_lock_and_resolve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(H, "PACKAGE_DIR", tmp_path / "pkg")
    monkeypatch.setenv("PERCEPT_CACHE", str(tmp_path / "pc"))
    lock = tmp_path / "weights.lock"  # a copy of the repository's lock with tiny's files taken out
    text = re.sub(r"\[\[models\.tiny\.files\]\]\n(?:\w[^\n]*\n)*\n?", "", (REPO_ROOT / "weights.lock").read_text())
    assert "[[models.tiny.files]]" not in text
    lock.write_text(text)
    monkeypatch.setenv("PERCEPT_WEIGHTS_LOCK", str(lock))
    with pytest.raises(ModelError, match="lists no files.*`percept models lock tiny`"):
        H.resolve_model("tiny")
    make_percept_folder(tmp_path / "pkg" / "assets" / "tiny")
    files = H.lock_model("tiny")
    assert {f.role for f in files} == {"config", "weights", "percept_config", "scheduler_config"}
    after = lock.read_text()
    assert after.startswith(text.split("# The paper's generalist")[0].rstrip("\n") + "\n\n[[models.tiny.files]]")
    assert after.split("# The paper's generalist")[1] == text.split("# The paper's generalist")[1]
    src = H.resolve_model("tiny")
    assert src.layout == "percept" and src.root == tmp_path / "pkg" / "assets" / "tiny" and src.vae is None
    assert src.config == {"tasks": ["depth"]}
    (src.root / "diffusion_pytorch_model.safetensors").write_bytes(b"\x01" * 64)
    with pytest.raises(ChecksumError, match=r"builtin file .*reinstall percept"):
        H.resolve_model("tiny")
    H.lock_model("tiny")  # re-lock after retraining on purpose
    assert H.resolve_model("tiny").root == src.root


def test_shipped_tiny_verifies(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The repository's lock pins the packaged tiny model: its files hash to what the lock says."""
    monkeypatch.delenv("PERCEPT_WEIGHTS_LOCK", raising=False)
    monkeypatch.setenv("PERCEPT_CACHE", str(tmp_path / "pc"))
    src = H.resolve_model("tiny")
    assert src.layout == "percept" and (src.root / "diffusion_pytorch_model.safetensors").is_file()
    assert all(c["status"] == "ok" for c in H.verify_models("tiny")["tiny"])


# --- local folders and hf:// ---------------------------------------------------------------------


def make_official_folder(folder: Path) -> None:
    (folder / "vae").mkdir(parents=True)
    (folder / "scheduler").mkdir()
    (folder / "model.pt").write_bytes(b"pt")
    (folder / "vae" / "config.json").write_text("{}")
    (folder / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"v")
    (folder / "scheduler" / "scheduler_config.json").write_text("{}")
    (folder / "percept.json").write_text('{"layout": "official", "num_heads": 16}')


def test_local_official_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERCEPT_WEIGHTS_LOCK", str(REPO_ROOT / "weights.lock"))
    make_official_folder(tmp_path / "ckpt")
    src = H.resolve_model(str(tmp_path / "ckpt"))
    assert (src.layout, src.weights.name, src.vae.name, src.scheduler.name) == ("official", "model.pt", "vae",
                                                                                 "scheduler")
    assert src.config["num_heads"] == 16
    (tmp_path / "ckpt" / "percept.json").write_text('{"layout": "official"}')
    (tmp_path / "ckpt" / "vae" / "config.json").unlink()
    (tmp_path / "ckpt" / "extra.pt").write_bytes(b"")
    with pytest.raises(ModelError) as err:
        H.resolve_model(str(tmp_path / "ckpt"))
    msg = str(err.value)
    assert "exactly one .pt" in msg and "extra.pt" in msg and "vae/config.json" in msg and "num_heads" in msg


def test_local_percept_folder_and_missing_pieces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERCEPT_WEIGHTS_LOCK", str(REPO_ROOT / "weights.lock"))
    make_percept_folder(tmp_path / "m")
    assert H.resolve_model(str(tmp_path / "m")).root == tmp_path / "m"
    (tmp_path / "m" / "percept.json").unlink()
    (tmp_path / "m" / "vae").mkdir()
    with pytest.raises(ModelError, match="lacks percept.json, vae/config.json, vae/diffusion_pytorch_model"):
        H.resolve_model(str(tmp_path / "m"))
    with pytest.raises(ModelError, match="is a file"):
        H.resolve_model(str(tmp_path / "m" / "config.json"))


def test_hf_spec_downloads_a_folder_at_a_commit(hub_env: HubStandIn) -> None:
    commit = hub_env.add("me/percept-models", {
        "small/config.json": b"{}", "small/diffusion_pytorch_model.safetensors": b"\x02" * 100,
        "small/percept.json": b'{"tasks": ["depth"]}', "small/scheduler/scheduler_config.json": b"{}",
        "other/config.json": b"{}"})
    spec = f"hf://me/percept-models@{commit}/small"
    src = H.resolve_model(spec, progress=False)
    assert src.layout == "percept" and src.root.name == "small" and src.config == {"tasks": ["depth"]}
    assert hub_env.count(contains="other/") == 0
    file_gets = [p for m, p in hub_env.requests if m == "GET" and "/resolve/" in p]
    assert file_gets[-1].endswith("small/percept.json") or file_gets[-1].endswith("small/config.json")
    before = len(hub_env.requests)
    H.resolve_model(spec)
    assert len(hub_env.requests) == before
    with pytest.raises(ModelError, match="full 40-hex commit"):
        H.resolve_model("hf://me/percept-models@main/small")


def test_hf_spec_checks_lfs_hashes(hub_env: HubStandIn) -> None:
    commit = hub_env.add("me/m", {"config.json": b"{}", "diffusion_pytorch_model.safetensors": b"\x03" * 100,
                                  "percept.json": b"{}", "scheduler/scheduler_config.json": b"{}"})
    hub_env.faults["diffusion_pytorch_model.safetensors"] = "wrong_bytes"
    with pytest.raises(ChecksumError, match="diffusion_pytorch_model.safetensors of me/m"):
        H.resolve_model(f"hf://me/m@{commit}", progress=False)


def test_lock_counts_the_builtin_parameters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`percept models lock` writes the weights' element count into the entry's `parameters`."""
    import numpy as np
    from safetensors.numpy import save_file

    monkeypatch.setattr(H, "PACKAGE_DIR", tmp_path / "pkg")
    lock = tmp_path / "weights.lock"
    lock.write_text((REPO_ROOT / "weights.lock").read_text())
    monkeypatch.setenv("PERCEPT_WEIGHTS_LOCK", str(lock))
    folder = tmp_path / "pkg" / "assets" / "tiny"
    make_percept_folder(folder)
    save_file({"a": np.zeros((3, 4), np.float16), "b": np.zeros(5, np.float16)},
              str(folder / "diffusion_pytorch_model.safetensors"))
    before = lock.read_text()
    H.lock_model("tiny")
    assert L.load_lock().entry("tiny").parameters == 17
    after = lock.read_text()
    assert after.count("parameters = 17") == 1
    assert after.split("# The paper's generalist")[1] == before.split("# The paper's generalist")[1]
