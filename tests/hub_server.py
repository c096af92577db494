"""A small local stand-in for the Hugging Face Hub HTTP API, for tests that push and download models.

It implements the part of the Hub API that huggingface_hub 2.x (and transformers on top of it) uses to
create a model repo, commit files to it (regular files inline, large/binary files through Git LFS) and
download them, so tests exercise huggingface_hub's real HTTP client end to end:

==========================================================  =============================================
``POST /api/repos/create``                                  create a model repo (409 + ``url`` if it exists)
``POST /api/validate-yaml``                                 check a README's YAML front matter
``GET  /api/whoami-v2``                                     the token's user
``GET  /api/agent-harnesses``                               an empty AI-agent registry (user-agent telemetry)
``GET  /api/models/{repo}[/revision/{rev}]``                model info: ``sha``, ``siblings``, ``cardData``
``GET  /api/models/{repo}/tree/{rev}[/{path}]``             list files (``recursive``), 404 if no such path
``POST /api/models/{repo}/preupload/{rev}``                 upload mode (``regular``/``lfs``) + remote oid
``POST /api/models/{repo}/commit/{rev}``                    NDJSON commit: header, file, lfsFile, deleted*
``POST /{repo}.git/info/lfs/objects/batch``                 LFS batch API: ``basic`` upload + verify hrefs
``PUT  /lfs-storage/{sha256}``                              the upload href: stores the object (sha checked)
``POST /lfs-verify/{repo}``                                 the verify href
``GET|HEAD /{repo}/resolve/{rev}/{path}``                   download, with ``ETag``, ``X-Repo-Commit``,
                                                            ``Content-Length`` and, for LFS files,
                                                            ``X-Linked-Etag`` / ``X-Linked-Size``
==========================================================  =============================================

Errors carry the ``X-Error-Code`` header huggingface_hub maps to its exceptions (``RepoNotFound``,
``RevisionNotFound``, ``EntryNotFound``). Writes need ``Authorization: Bearer <token>`` with a token the
server knows; private repos need it for reads too. Repos are ``namespace/name`` model repos on branch
``main`` (commits can also be read by their 40-hex oid); pull requests, Xet storage, multipart LFS and
range requests are not implemented. Everything lives in memory.

Use::

    with LocalHub() as hub:           # serves on 127.0.0.1, a random free port, in a daemon thread
        hub.url, hub.token            # point huggingface_hub at hub.url (see below)
        hub.files("user/repo")        # {path: bytes} at the head of main

huggingface_hub reads ``HF_ENDPOINT`` when it is imported: set it in the environment of a subprocess
before Python starts. In the test process patch ``huggingface_hub.constants.ENDPOINT`` and
``HUGGINGFACE_CO_URL_TEMPLATE`` (or pass ``HfApi(endpoint=hub.url)``). huggingface_hub uploads through
Xet when ``hf_xet`` is installed: set ``HF_HUB_DISABLE_XET=1`` (or patch
``constants.HF_HUB_DISABLE_XET``) so it uses the LFS protocol implemented here.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import itertools
import json
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

__all__ = ["LocalHub"]

#: Patterns stored through Git LFS (a subset of the Hub's default .gitattributes).
LFS_PATTERNS = (
    "*.safetensors",
    "*.bin",
    "*.pt",
    "*.pth",
    "*.ckpt",
    "*.h5",
    "*.onnx",
    "*.msgpack",
    "*.npy",
    "*.npz",
    "*.pkl",
    "*.pickle",
    "*.zip",
    "*.gz",
    "*.tar",
    "*.7z",
    "*.model",
    "*tfevents*",
)
GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in LFS_PATTERNS).encode()
#: Files at least this large are stored through LFS whatever their name (the Hub's limit is 10 MB).
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024

_REPO = r"(?P<repo>[^/]+/[^/]+?)"


def _git_oid(data: bytes) -> str:
    """The git blob id of ``data`` (what the Hub reports as a regular file's oid and ETag)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


@dataclass(frozen=True)
class Entry:
    """A file in a commit: inline ``data`` for a regular file, or the sha256 ``lfs_oid`` of an LFS object."""

    size: int
    data: bytes | None = None
    lfs_oid: str | None = None

    @property
    def pointer(self) -> bytes:
        return f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.lfs_oid}\nsize {self.size}\n".encode()

    @property
    def git_oid(self) -> str:
        return _git_oid(self.pointer if self.lfs_oid else self.data)

    @property
    def etag(self) -> str:
        return self.lfs_oid or self.git_oid


@dataclass
class Repo:
    repo_id: str
    private: bool
    created: str = field(default_factory=_now)
    commits: dict[str, dict[str, Entry]] = field(default_factory=dict)  # oid -> tree (path -> Entry)
    log: list[dict] = field(default_factory=list)  # header + oid of each commit, oldest first
    main: str = ""


class HubError(Exception):
    """An HTTP error answer: status, message and the ``X-Error-Code`` huggingface_hub understands."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


class LocalHub:
    """The in-memory Hub and its HTTP server (see the module docstring)."""

    def __init__(self, token: str = "hf_local_test_token", user: str = "lighttoken-tester") -> None:
        self.token, self.user = token, user
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.announced: set[str] = set()  # LFS oids handed out by the batch API, not uploaded yet
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, in order
        self.unhandled: list[tuple[str, str]] = []  # requests no route matched
        self.lock = threading.RLock()
        self._ids = itertools.count(1)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.hub = self
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread: threading.Thread | None = None

    # -------------------------------------------------------------------------------- lifecycle
    def start(self) -> LocalHub:
        self._thread = threading.Thread(target=self._server.serve_forever, name="local-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -------------------------------------------------------------------------------- inspection
    def tree(self, repo_id: str, revision: str = "main") -> dict[str, Entry]:
        with self.lock:
            repo = self.repos[repo_id]
            return dict(repo.commits[self._resolve(repo, revision)])

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """``{path: content}`` of every file at ``revision`` (LFS objects resolved)."""
        with self.lock:
            return {
                path: entry.data if entry.lfs_oid is None else self.lfs[entry.lfs_oid]
                for path, entry in self.tree(repo_id, revision).items()
            }

    def commits(self, repo_id: str) -> list[dict]:
        with self.lock:
            return list(self.repos[repo_id].log)

    # -------------------------------------------------------------------------------- state helpers
    def _resolve(self, repo: Repo, revision: str) -> str:
        if revision == "main":
            return repo.main
        if revision in repo.commits:
            return revision
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def _repo(self, repo_id: str, user: str | None) -> Repo:
        repo = self.repos.get(repo_id)
        if repo is None or (repo.private and user is None):
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def _commit(self, repo: Repo, tree: dict[str, Entry], header: dict) -> str:
        seed = f"{repo.repo_id}\n{repo.main}\n{next(self._ids)}\n{json.dumps(header, sort_keys=True)}"
        oid = hashlib.sha1(seed.encode()).hexdigest()
        repo.commits[oid] = tree
        repo.main = oid
        repo.log.append({"oid": oid, **header})
        return oid


# ------------------------------------------------------------------------------------------ HTTP layer
class _Handler(BaseHTTPRequestHandler):
    server_version = "LocalHub/1.0"

    @property
    def hub(self) -> LocalHub:
        return self.server.hub

    # HTTP/1.0 (the default) closes the connection after every answer: nothing can be left half-read.
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._dispatch()

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch()

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch()

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet: requests are recorded instead
        pass

    # ---------------------------------------------------------------------------- plumbing
    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _json_body(self) -> Any:
        try:
            return json.loads(self._body() or b"{}")
        except ValueError:
            raise HubError(400, "request body is not JSON") from None

    def _send(
        self, status: int, body: bytes = b"", headers: dict | None = None, ctype: str = "application/json"
    ):
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj: Any, status: int = 200, headers: dict | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def _user(self, required: bool = False) -> str | None:
        auth = self.headers.get("Authorization", "")
        if not auth:
            if required:
                raise HubError(401, "You must be authenticated to do this (no token sent)")
            return None
        if auth != f"Bearer {self.hub.token}":
            raise HubError(401, "Invalid credentials in Authorization header")
        return self.hub.user

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        self.hub.requests.append((self.command, url.path))
        methods = ("GET", "HEAD") if self.command == "HEAD" else (self.command,)
        try:
            for method, pattern, handler in _ROUTES:
                match = re.fullmatch(pattern, url.path)
                if method in methods and match:
                    args = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                    with self.hub.lock:
                        handler(self, **args)
                    return
            self.hub.unhandled.append((self.command, self.path))
            raise HubError(404, f"no route for {self.command} {url.path}")
        except HubError as err:
            headers = dict(err.headers)
            if err.code:
                headers["X-Error-Code"] = err.code
            headers["X-Error-Message"] = err.message
            self._json({"error": err.message}, err.status, headers)

    # ---------------------------------------------------------------------------- repos
    def create_repo(self) -> None:
        user = self._user(required=True)
        payload = self._json_body()
        if payload.get("type", "model") != "model":
            raise HubError(400, "only model repos are supported")
        repo_id = f"{payload.get('organization') or user}/{payload['name']}"
        url = f"{self.hub.url}/{repo_id}"
        if repo_id in self.hub.repos:
            self._json({"error": "You already created this model repo", "url": url}, 409)
            return
        repo = Repo(repo_id, private=payload.get("visibility") == "private" or payload.get("private") is True)
        self.hub.repos[repo_id] = repo
        entry = Entry(len(GITATTRIBUTES), data=GITATTRIBUTES)
        self.hub._commit(repo, {".gitattributes": entry}, {"summary": "initial commit", "description": ""})
        self._json({"url": url, "name": repo_id, "id": repo_id})

    def whoami(self) -> None:
        self._json({"type": "user", "name": self._user(required=True), "auth": {"type": "access_token"}})

    def agent_harnesses(self) -> None:
        self._json({"standardEnvVars": [], "harnesses": {}})

    def validate_yaml(self) -> None:
        content = self._json_body().get("content", "")
        match = re.match(r"^\s*---\r?\n(.*?)\r?\n---(\r?\n|$)", content, re.S)
        try:
            data = yaml.safe_load(match.group(1)) if match else {}
            if data is not None and not isinstance(data, dict):
                raise ValueError("metadata must be a mapping")
        except (yaml.YAMLError, ValueError) as err:
            self._json({"errors": [{"message": f"invalid YAML: {err}"}], "warnings": []}, 400)
            return
        self._json({"errors": [], "warnings": []})

    def model_info(self, repo: str, rev: str = "main") -> None:
        record = self.hub._repo(repo, self._user())
        sha = self.hub._resolve(record, rev)
        tree = record.commits[sha]
        siblings = []
        for path, entry in sorted(tree.items()):
            sibling: dict[str, Any] = {"rfilename": path}
            if self.query.get("blobs") in ("True", "true", "1"):
                sibling.update(size=entry.size, blobId=entry.git_oid)
                if entry.lfs_oid:
                    sibling["lfs"] = {
                        "size": entry.size,
                        "sha256": entry.lfs_oid,
                        "pointerSize": len(entry.pointer),
                    }
            siblings.append(sibling)
        card = _card_data(tree.get("README.md"))
        info = {
            "_id": hashlib.sha1(repo.encode()).hexdigest()[:24],
            "id": repo,
            "modelId": repo,
            "author": repo.split("/")[0],
            "sha": sha,
            "private": record.private,
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
            "tags": list(card.get("tags") or []),
            "createdAt": record.created,
            "lastModified": _now(),
            "siblings": siblings,
        }
        if card:
            info["cardData"] = card
            if card.get("library_name"):
                info["library_name"] = card["library_name"]
        self._json(info)

    def tree(self, repo: str, rev: str, path: str = "") -> None:
        record = self.hub._repo(repo, self._user())
        sha = self.hub._resolve(record, rev)
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        below = {p: e for p, e in record.commits[sha].items() if p.startswith(prefix)}
        if prefix and not below:
            raise HubError(404, f"{path} does not exist on {rev}", "EntryNotFound", {"X-Repo-Commit": sha})
        recursive = self.query.get("recursive") in ("True", "true", "1")
        out, folders = [], set()
        for p, entry in sorted(below.items()):
            parts = p[len(prefix) :].split("/")
            if len(parts) > 1:
                if not recursive:
                    folders.add(prefix + parts[0])
                    continue
                folders.update(prefix + "/".join(parts[:depth]) for depth in range(1, len(parts)))
            item = {"type": "file", "oid": entry.git_oid, "size": entry.size, "path": p}
            if entry.lfs_oid:
                item["lfs"] = {"oid": entry.lfs_oid, "size": entry.size, "pointerSize": len(entry.pointer)}
            out.append(item)
        out += [
            {"type": "directory", "oid": hashlib.sha1(f.encode()).hexdigest(), "size": 0, "path": f}
            for f in sorted(folders)
        ]
        self._json(out)

    # ---------------------------------------------------------------------------- uploads
    def preupload(self, repo: str, rev: str) -> None:
        record = self.hub._repo(repo, self._user(required=True))
        tree = record.commits[self.hub._resolve(record, rev)]
        patterns = _lfs_patterns(tree)
        answer = []
        for item in self._json_body().get("files", []):
            sample = base64.b64decode(item.get("sample", ""))
            path, size = item["path"], int(item["size"])
            name = path.rsplit("/", 1)[-1]
            lfs = (
                size >= LFS_SIZE_THRESHOLD
                or b"\0" in sample
                or any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(path, p) for p in patterns)
            )
            existing = tree.get(path)
            answer.append(
                {
                    "path": path,
                    "uploadMode": "lfs" if lfs else "regular",
                    "shouldIgnore": False,
                    "oid": existing.etag if existing else None,  # sha256 for LFS, git blob id otherwise
                }
            )
        self._json({"files": answer, "commitOid": record.main})

    def commit(self, repo: str, rev: str) -> None:
        record = self.hub._repo(repo, self._user(required=True))
        if self.query.get("create_pr"):
            raise HubError(400, "pull requests are not supported by the local hub")
        if rev != "main":
            raise HubError(400, "the local hub commits to main only")
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "the first NDJSON line must be the commit header")
        header = lines[0]["value"]
        parent = header.get("parentCommit")
        if parent and not record.main.startswith(parent):
            raise HubError(412, f"parent commit {parent} is not the head of main ({record.main})")
        tree = dict(record.commits[record.main])
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value") or {}
            path = value.get("path", "")
            if key == "file":
                if value.get("encoding") != "base64":
                    raise HubError(400, f"unsupported file encoding {value.get('encoding')!r}")
                data = base64.b64decode(value["content"])
                tree[path] = Entry(len(data), data=data)
            elif key == "lfsFile":
                oid = value.get("oid")
                if value.get("algo", "sha256") != "sha256" or oid not in self.hub.lfs:
                    raise HubError(422, f"LFS object {oid} of {path} was not uploaded")
                tree[path] = Entry(len(self.hub.lfs[oid]), lfs_oid=oid)
            elif key == "deletedFile":
                if tree.pop(path, None) is None:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
            elif key == "deletedFolder":
                prefix = path.rstrip("/") + "/"
                for p in [p for p in tree if p.startswith(prefix)]:
                    del tree[p]
            else:
                raise HubError(400, f"unsupported commit operation {key!r}")
        oid = self.hub._commit(
            record, tree, {"summary": header.get("summary", ""), "description": header.get("description", "")}
        )
        self._json(
            {
                "success": True,
                "commitOid": oid,
                "commitUrl": f"{self.hub.url}/{repo}/commit/{oid}",
                "hookOutput": "",
                "pullRequestUrl": None,
            }
        )

    def lfs_batch(self, repo: str) -> None:
        self.hub._repo(repo, self._user(required=True))
        payload = self._json_body()
        if payload.get("operation") != "upload" or "basic" not in payload.get("transfers", ["basic"]):
            raise HubError(400, "the local hub supports basic LFS uploads only")
        objects = []
        for obj in payload.get("objects", []):
            oid, size = obj["oid"], int(obj["size"])
            item: dict[str, Any] = {"oid": oid, "size": size}
            if oid not in self.hub.lfs:  # already stored: no actions, the client skips the upload
                self.hub.announced.add(oid)
                item["authenticated"] = True
                item["actions"] = {
                    "upload": {"href": f"{self.hub.url}/lfs-storage/{oid}", "expires_in": 3600},
                    "verify": {"href": f"{self.hub.url}/lfs-verify/{repo}", "header": {}},
                }
            objects.append(item)
        self._send(
            200,
            json.dumps({"transfer": "basic", "objects": objects, "hash_algo": "sha256"}).encode(),
            ctype="application/vnd.git-lfs+json",
        )

    def lfs_store(self, oid: str) -> None:
        data = self._body()  # the upload href is pre-authorised (like a signed storage URL): no token
        if oid not in self.hub.announced and oid not in self.hub.lfs:
            raise HubError(403, f"LFS object {oid} was not announced through the batch API")
        if hashlib.sha256(data).hexdigest() != oid:
            raise HubError(400, f"content does not match its sha256 {oid}")
        self.hub.lfs[oid] = data
        self.hub.announced.discard(oid)
        self._send(200, b"", ctype="text/plain")

    def lfs_verify(self, repo: str) -> None:
        self.hub._repo(repo, self._user(required=True))
        payload = self._json_body()
        data = self.hub.lfs.get(payload.get("oid"))
        if data is None or len(data) != payload.get("size"):
            raise HubError(404, f"LFS object {payload.get('oid')} is missing or has the wrong size")
        self._json({"ok": True})

    # ---------------------------------------------------------------------------- downloads
    def resolve(self, repo: str, rev: str, path: str) -> None:
        record = self.hub._repo(repo, self._user())
        sha = self.hub._resolve(record, rev)
        entry = record.commits[sha].get(path)
        if entry is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": sha})
        headers = {"X-Repo-Commit": sha, "ETag": f'"{entry.etag}"'}
        if entry.lfs_oid:
            headers.update({"X-Linked-Etag": f'"{entry.lfs_oid}"', "X-Linked-Size": str(entry.size)})
            data = self.hub.lfs[entry.lfs_oid]
        else:
            data = entry.data
        self._send(200, data, headers, ctype="application/octet-stream")


def _lfs_patterns(tree: dict[str, Entry]) -> list[str]:
    """The ``filter=lfs`` patterns of the repo's ``.gitattributes``."""
    entry = tree.get(".gitattributes")
    text = entry.data.decode("utf-8", "replace") if entry is not None and entry.data is not None else ""
    return [line.split()[0] for line in text.splitlines() if "filter=lfs" in line and line.split()]


def _card_data(entry: Entry | None) -> dict:
    """The YAML front matter of README.md, as the Hub returns it in ``cardData``."""
    if entry is None or entry.data is None:
        return {}
    match = re.match(r"^\s*---\r?\n(.*?)\r?\n---(\r?\n|$)", entry.data.decode("utf-8", "replace"), re.S)
    try:
        data = yaml.safe_load(match.group(1)) if match else None
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


_ROUTES = (
    ("POST", r"/api/repos/create", _Handler.create_repo),
    ("GET", r"/api/whoami-v2", _Handler.whoami),
    ("GET", r"/api/agent-harnesses", _Handler.agent_harnesses),
    ("POST", r"/api/validate-yaml", _Handler.validate_yaml),
    ("GET", rf"/api/models/{_REPO}", _Handler.model_info),
    ("GET", rf"/api/models/{_REPO}/revision/(?P<rev>[^/]+)", _Handler.model_info),
    ("GET", rf"/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?", _Handler.tree),
    ("POST", rf"/api/models/{_REPO}/preupload/(?P<rev>[^/]+)", _Handler.preupload),
    ("POST", rf"/api/models/{_REPO}/commit/(?P<rev>[^/]+)", _Handler.commit),
    ("POST", rf"/{_REPO}\.git/info/lfs/objects/batch", _Handler.lfs_batch),
    ("PUT", r"/lfs-storage/(?P<oid>[0-9a-f]{64})", _Handler.lfs_store),
    ("POST", rf"/lfs-verify/{_REPO}", _Handler.lfs_verify),
    ("GET", rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", _Handler.resolve),
)
