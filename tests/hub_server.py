"""A test-only stand-in for the Hugging Face Hub, enough for huggingface_hub's real hf_hub_download.

It serves in-memory repos on 127.0.0.1 (a free port) and answers, like the Hub does:
  HEAD/GET /{repo}/resolve/{revision}/{path}   X-Repo-Commit, ETag (git blob sha1; LFS files: sha256,
                                               also as X-Linked-Etag with X-Linked-Size), Content-Length,
                                               Range requests (206)
  GET /api/models/{repo}/revision/{revision}   {"id", "sha", "siblings": [{"rfilename", "size", "blobId", "lfs"}]}
Faults, per file path (or "*" for every file and the API route; "api" for the API route alone):
  wrong_bytes  same size, other bytes, while the headers still claim the right sha256
  truncate     Content-Length says the full size, the body stops half-way and the connection closes;
               the client's resume (a Range request) is answered 416, so it fails fast
  error500     HTTP 500
  error401     HTTP 401 (a private or gated repo without a valid token)
The Authorization header of every request is logged in `tokens`.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".pt", ".bin", ".ckpt")
_RESOLVE = re.compile(r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)")
_API = re.compile(r"/api/models/(?P<repo>[^/]+/[^/]+)/revision/(?P<rev>[^/]+)")


class HubStandIn:
    """In-memory repos served over HTTP on 127.0.0.1, with a request log and injectable faults."""

    def __init__(self) -> None:
        self.commits: dict[str, dict[str, dict[str, bytes]]] = {}  # repo -> commit -> path -> bytes
        self.branches: dict[str, dict[str, str]] = {}  # repo -> branch -> commit
        self.faults: dict[str, str] = {}
        self.requests: list[tuple[str, str]] = []
        self.tokens: list[str | None] = []  # the Authorization header of each request
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def add(self, repo: str, files: dict[str, bytes], branch: str = "main") -> str:
        """Commit files (the whole tree) to a repo; the branch moves to the new commit, which is returned."""
        n = sum(len(c) for c in self.commits.values())
        digest = hashlib.sha1(repo.encode() + str(n).encode())
        for path in sorted(files):
            digest.update(path.encode() + hashlib.sha256(files[path]).digest())
        commit = digest.hexdigest()
        self.commits.setdefault(repo, {})[commit] = dict(files)
        self.branches.setdefault(repo, {})[branch] = commit
        return commit

    def count(self, method: str | None = None, contains: str = "") -> int:
        """How many requests (of a method, with a substring in the path) were served."""
        with self._lock:
            return sum(1 for m, p in self.requests if (method is None or m == method) and contains in p)

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def resolve(self, repo: str, rev: str) -> str | None:
        """A branch or commit of a repo, as a commit (None if unknown)."""
        if rev in self.branches.get(repo, {}):
            return self.branches[repo][rev]
        return rev if rev in self.commits.get(repo, {}) else None


def lfs(path: str) -> bool:
    """Whether the stand-in serves this file like a Git LFS file (ETag = sha256)."""
    return path.endswith(LFS_SUFFIXES)


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob (the Hub's ETag for non-LFS files)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _make_handler(hub: HubStandIn) -> type[BaseHTTPRequestHandler]:
    """The request handler class bound to one stand-in."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - silence the default log
            pass

        def do_HEAD(self) -> None:
            self._route(head=True)

        def do_GET(self) -> None:
            self._route(head=False)

        def _send(self, status: int, headers: dict[str, str], body: bytes = b"", head: bool = False) -> None:
            self.send_response(status)
            for k, v in {"Content-Length": str(len(body)), **headers}.items():
                self.send_header(k, v)
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _error(self, status: int, code: str, extra: dict[str, str] | None = None, head: bool = False) -> None:
            body = json.dumps({"error": code}).encode()
            self._send(status, {"X-Error-Code": code, "Content-Type": "application/json", **(extra or {})}, body, head)

        def _route(self, head: bool) -> None:
            path = urlsplit(self.path).path
            with hub._lock:
                hub.requests.append(("HEAD" if head else "GET", self.path))
                hub.tokens.append(self.headers.get("Authorization"))
            if m := _API.fullmatch(path):
                return self._api(unquote(m["repo"]), unquote(m["rev"]), head)
            if m := _RESOLVE.fullmatch(path):
                return self._file(unquote(m["repo"]), unquote(m["rev"]), unquote(m["path"]), head)
            self._error(404, "NotFound", head=head)

        def _api(self, repo: str, rev: str, head: bool) -> None:
            if "error500" in (hub.faults.get("api"), hub.faults.get("*")):
                return self._error(500, "InternalError", head=head)
            if repo not in hub.commits:
                return self._error(404, "RepoNotFound", head=head)
            commit = hub.resolve(repo, rev)
            if commit is None:
                return self._error(404, "RevisionNotFound", head=head)
            siblings = []
            for name, data in sorted(hub.commits[repo][commit].items()):
                sib = {"rfilename": name, "size": len(data), "blobId": git_blob_sha1(data)}
                if lfs(name):
                    sib["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
                siblings.append(sib)
            body = json.dumps({"id": repo, "modelId": repo, "sha": commit, "private": False,
                               "siblings": siblings}).encode()
            self._send(200, {"Content-Type": "application/json"}, body, head)

        def _file(self, repo: str, rev: str, name: str, head: bool) -> None:
            if repo not in hub.commits:
                return self._error(404, "RepoNotFound", head=head)
            commit = hub.resolve(repo, rev)
            if commit is None:
                return self._error(404, "RevisionNotFound", head=head)
            files = hub.commits[repo][commit]
            if name not in files:
                return self._error(404, "EntryNotFound", {"X-Repo-Commit": commit}, head)
            fault = hub.faults.get(name) or hub.faults.get("*")
            if fault in ("error500", "error401"):
                return self._error(int(fault[-3:]), "InternalError" if fault == "error500" else "Unauthorized",
                                   head=head)
            data = files[name]
            headers = {"X-Repo-Commit": commit, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
            if lfs(name):
                sha = hashlib.sha256(data).hexdigest()
                headers.update({"ETag": f'"{sha}"', "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(data))})
            else:
                headers["ETag"] = f'"{git_blob_sha1(data)}"'
            if fault == "wrong_bytes":
                data = bytes(b ^ 0xFF for b in data)
            rng = self.headers.get("Range")
            if rng and fault == "truncate":
                return self._error(416, "RangeNotSatisfiable", head=head)
            if rng and (m := re.fullmatch(r"bytes=(\d+)-", rng.strip())) and not head:
                start = int(m[1])
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                return self._send(206, headers, data[start:])
            if fault == "truncate" and not head:
                self.send_response(200)
                for k, v in {**headers, "Content-Length": str(len(data))}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
                return None
            self._send(200, headers, data, head)
            return None

    return Handler


# --- weights.lock helpers for tests -------------------------------------------------------------

WEIGHTS_REPO = "zeeshanp/scaling_diffusion_perception"
SD2 = "stabilityai/stable-diffusion-2"


def sha(data: bytes) -> str:
    """The sha256 hex digest of bytes."""
    return hashlib.sha256(data).hexdigest()


def lock_text(name: str, files: list[dict], *, layout: str = "official", extra: str = "") -> str:
    """A small weights.lock with one model and the given [[models.NAME.files]] rows."""
    blocks = "".join(f"\n[[models.{name}.files]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in f.items())
                     for f in files)
    return (f'# test lock\ndefault = "{name}"\n\n[models.{name}]\ndescription = "test model"\n'
            f'tasks = ["depth", "flow"]\nparameters = 123\nlayout = "{layout}"\nconfig = {{ num_heads = 2 }}\n'
            f"{extra}{blocks}")


def official_files(data: dict[str, bytes], commits: dict[str, str], *, pinned: bool = True) -> list[dict]:
    """Lock rows for the paper's layout (weights repo + SD2's VAE and scheduler), pinned or not."""
    rows = [("weights", WEIGHTS_REPO, "dit_moe_generalist.pt"),
            ("vae_weights", SD2, "vae/diffusion_pytorch_model.safetensors"),
            ("vae_config", SD2, "vae/config.json"), ("scheduler_config", SD2, "scheduler/scheduler_config.json")]
    return [{"role": role, "repo": repo, "revision": commits[repo] if pinned else "", "path": path,
             "size": len(data[path]) if pinned else 0, "sha256": sha(data[path]) if pinned else ""}
            for role, repo, path in rows]
