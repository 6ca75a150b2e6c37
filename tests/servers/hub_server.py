"""A stand-in for the Hugging Face Hub on 127.0.0.1, for `HF_ENDPOINT`: dataset repositories kept
in a folder, served over HTTP through the endpoints huggingface_hub and datasets call (found by
running them against this server with every unknown route logged; see `unknown`).

Reading (HfApi.dataset_info, list_repo_tree, get_paths_info, hf_hub_download, HfFileSystem, so
datasets.load_dataset, streaming or not):
    GET  /api/datasets/{repo}[/revision/{rev}]          repo info: sha, siblings, cardData
    GET  /api/datasets/{repo}/tree/{rev}[/{path}]       entries under a folder (?recursive=true)
    POST /api/datasets/{repo}/paths-info/{rev}          entries of the paths asked for
    GET  /api/datasets/{repo}/refs                      branches (main)
    HEAD|GET /datasets/{repo}/resolve/{rev}/{path}      a file, with X-Repo-Commit, ETag, Range

Writing (HfApi.create_repo, upload_folder: `curate publish`):
    POST /api/repos/create                              {type, name, organization, visibility}; 409 if it exists
    POST /api/datasets/{repo}/preupload/{rev}           each file "regular" (inline) or "lfs"
    POST /datasets/{repo}.git/info/lfs/objects/batch    LFS batch API, "basic" transfer
    PUT  /lfs/{oid}                                     an LFS object's bytes (checked against its oid)
    POST /api/datasets/{repo}/commit/{rev}              NDJSON header / file / lfsFile / deletedFile

A revision is `main` or a commit sha (40 hex digits); every commit is a new snapshot, so an old
sha still serves the old files. Files ending in .parquet, .arrow or larger than 10 MB go through
LFS, as the Hub's default .gitattributes sends binary data. huggingface_hub uploads LFS files with
the Xet protocol when hf_xet is installed, which this server does not speak: clients set
HF_HUB_DISABLE_XET=1 (`hub_env`), and the LFS basic transfer is used, as it is without hf_xet.

Errors carry the Hub's X-Error-Code header (RepoNotFound, RevisionNotFound, EntryNotFound), which
huggingface_hub turns into its typed errors. GET /_log lists every request; `unknown` the ones
no route matched (404).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.servers.processes import HOST, app_in_thread

LFS_SUFFIXES = (".parquet", ".arrow")
LFS_SIZE = 10 * 1024 * 1024
REPO = r"{owner:[^/]+}/{name:[^/]+}"


def git_blob_sha(data: bytes) -> str:
    """The git object id of a file's content, as the Hub reports it for regular files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_lfs(path: str, size: int) -> bool:
    return path.endswith(LFS_SUFFIXES) or size > LFS_SIZE


class HubStore:
    """Repositories in `root`: root/<owner>/<name>/commits/<sha>/<files>, refs in refs.json (branch ->
    sha, newest commit last in `history`), LFS objects in root/_lfs/<oid>."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()

    # repositories -----------------------------------------------------------------------------
    def repo_dir(self, repo: str) -> Path:
        return self.root / repo

    def exists(self, repo: str) -> bool:
        return (self.repo_dir(repo) / "refs.json").exists()

    def refs(self, repo: str) -> dict[str, Any]:
        return json.loads((self.repo_dir(repo) / "refs.json").read_text())

    def create(self, repo: str, private: bool = False) -> bool:
        """Create an empty repository with one commit (the Hub's initial .gitattributes); False if it exists."""
        with self.lock:
            if self.exists(repo):
                return False
            self.repo_dir(repo).mkdir(parents=True)
            (self.repo_dir(repo) / "refs.json").write_text(json.dumps({"branches": {}, "history": [], "private": private}))
        self.commit(repo, {".gitattributes": b"*.parquet filter=lfs diff=lfs merge=lfs -text\n"}, [], "initial commit")
        return True

    def resolve(self, repo: str, revision: str) -> str | None:
        """The commit sha a branch name or sha names, or None."""
        refs = self.refs(repo)
        if revision in refs["branches"]:
            return refs["branches"][revision]
        return revision if revision in refs["history"] else None

    def snapshot(self, repo: str, sha: str) -> Path:
        return self.repo_dir(repo) / "commits" / sha

    def commit(self, repo: str, files: dict[str, bytes | Path], deleted: list[str], message: str,
               branch: str = "main") -> str:
        """A new commit on `branch`: the previous snapshot with `files` written and `deleted` removed."""
        with self.lock:
            refs = self.refs(repo)
            parent = refs["branches"].get(branch)
            sha = hashlib.sha1(f"{repo}\0{parent}\0{message}\0{time.time_ns()}".encode()).hexdigest()
            target = self.snapshot(repo, sha)
            if parent:
                shutil.copytree(self.snapshot(repo, parent), target, copy_function=os.link)
            else:
                target.mkdir(parents=True)
            for path in deleted:
                p = target / path
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.exists():
                    p.unlink()
            for path, content in files.items():
                p = target / path
                p.parent.mkdir(parents=True, exist_ok=True)
                if p.exists():
                    p.unlink()  # a hard link shared with the parent snapshot: do not write through it
                if isinstance(content, Path):
                    shutil.copyfile(content, p)
                else:
                    p.write_bytes(content)
            refs["branches"][branch] = sha
            refs["history"].append(sha)
            (self.repo_dir(repo) / "refs.json").write_text(json.dumps(refs))
            return sha

    # files ------------------------------------------------------------------------------------
    def entry(self, base: Path, path: Path, expand: bool = False) -> dict[str, Any]:
        rel = path.relative_to(base).as_posix()
        if path.is_dir():
            return {"type": "directory", "oid": hashlib.sha1(rel.encode()).hexdigest(), "size": 0, "path": rel}
        data = path.read_bytes()
        out: dict[str, Any] = {"type": "file", "oid": git_blob_sha(data), "size": len(data), "path": rel}
        if is_lfs(rel, len(data)):
            out["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        if expand:
            out["lastCommit"] = None
            out["securityFileStatus"] = None
        return out

    def lfs_path(self, oid: str) -> Path:
        return self.root / "_lfs" / oid


@dataclass
class HubHandle:
    """A running stand-in: its URL (what HF_ENDPOINT is set to), its store and its request log."""

    url: str
    store: HubStore
    requests: list[dict[str, Any]]

    @property
    def unknown(self) -> list[str]:
        """The requests no route served: endpoints a client called that the stand-in lacks."""
        return [f"{r['method']} {r['path']}" for r in self.requests if r["route"] is None]

    def calls(self, method: str, pattern: str) -> int:
        """How many requests `method` made to a path matching the regex `pattern`."""
        return sum(1 for r in self.requests if r["method"] == method and re.search(pattern, r["path"]))

    def add_dataset(self, repo: str, files: dict[str, bytes | str | Path], message: str = "add files") -> str:
        """Create `repo` if needed and commit `files` (path in repo -> content or a local file); the sha."""
        self.store.create(repo)
        return self.store.commit(repo, {p: c.encode() if isinstance(c, str) else c for p, c in files.items()}, [], message)


def _error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status,
                             headers={"X-Error-Code": code, "X-Error-Message": message})


class _Refused(Exception):
    """Raised by a handler to answer with `response` (a Hub error)."""

    def __init__(self, response: web.Response):
        self.response = response


def make_app(store: HubStore, log: list[dict[str, Any]], base: dict[str, str]) -> web.Application:
    @web.middleware
    async def record(request: web.Request, handler):
        entry = {"method": request.method, "path": request.path_qs, "route": None}
        log.append(entry)
        try:
            response = await handler(request)
        except web.HTTPNotFound:
            return _error(404, "EntryNotFound", f"no route for {request.method} {request.path}")
        except _Refused as refused:
            response = refused.response
        entry["route"] = request.match_info.route.resource.canonical if request.match_info.route.resource else None
        entry["status"] = response.status
        return response

    app = web.Application(middlewares=[record], client_max_size=1 << 30)
    routes = web.RouteTableDef()  # each handler's method and path stand above it
    api = f"/api/datasets/{REPO}"

    def repo_of(request: web.Request) -> str:
        return f"{request.match_info['owner']}/{request.match_info['name']}"

    def revision_of(request: web.Request) -> tuple[str, str]:
        """(repo, commit sha) a request names; the Hub's 404 if there is none."""
        repo = repo_of(request)
        if not store.exists(repo):
            raise _Refused(_error(404, "RepoNotFound", f"Repository Not Found for url: {request.url}"))
        rev = request.match_info.get("rev", "main")
        sha = store.resolve(repo, rev)
        if sha is None:
            raise _Refused(_error(404, "RevisionNotFound", f"Invalid rev id: {rev}"))
        return repo, sha

    @routes.get(api)
    @routes.get(api + "/revision/{rev}")
    async def info(request: web.Request) -> web.Response:
        repo, sha = revision_of(request)
        snap = store.snapshot(repo, sha)
        files = sorted(p.relative_to(snap).as_posix() for p in snap.rglob("*") if p.is_file())
        card = {}
        if (snap / "README.md").exists():
            text = (snap / "README.md").read_text(encoding="utf-8", errors="replace")
            if text.startswith("---"):
                import yaml

                with contextlib.suppress(Exception):
                    card = yaml.safe_load(text.split("---", 2)[1]) or {}
        owner = request.match_info["owner"]
        return web.json_response({
            "_id": hashlib.sha1(repo.encode()).hexdigest()[:24], "id": repo, "author": owner, "sha": sha,
            "private": store.refs(repo).get("private", False), "gated": False, "disabled": False, "downloads": 0,
            "likes": 0, "tags": [], "cardData": card, "lastModified": "2026-11-30T00:00:00.000Z",
            "createdAt": "2026-11-30T00:00:00.000Z", "siblings": [{"rfilename": f} for f in files],
        })

    @routes.get(api + "/tree/{rev}")
    @routes.get(api + "/tree/{rev}/{path:.+}")
    async def tree(request: web.Request) -> web.Response:
        repo, sha = revision_of(request)
        snap = store.snapshot(repo, sha)
        folder = snap / request.match_info.get("path", "")
        if not folder.is_dir():
            return _error(404, "EntryNotFound", f"{request.match_info.get('path')} does not exist on {sha}")
        recursive = request.query.get("recursive", "false").lower() == "true"
        found = sorted(folder.rglob("*") if recursive else folder.iterdir())
        expand = request.query.get("expand", "false").lower() == "true"
        return web.json_response([store.entry(snap, p, expand) for p in found])

    @routes.post(api + "/paths-info/{rev}")
    async def paths_info(request: web.Request) -> web.Response:
        repo, sha = revision_of(request)
        if request.content_type == "application/json":
            body = await request.json()
            paths, expand = body.get("paths", []), body.get("expand", False)
        else:
            form = await request.post()
            paths, expand = form.getall("paths", []), str(form.get("expand", "false")).lower() == "true"
        snap = store.snapshot(repo, sha)
        return web.json_response([store.entry(snap, snap / p, bool(expand)) for p in paths if (snap / p).exists()])

    @routes.get(api + "/refs")
    async def refs(request: web.Request) -> web.Response:
        repo = repo_of(request)
        if not store.exists(repo):
            return _error(404, "RepoNotFound", "Repository Not Found")
        branches = [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": s} for b, s in store.refs(repo)["branches"].items()]
        return web.json_response({"branches": branches, "converts": [], "tags": []})

    @routes.route("HEAD", f"/datasets/{REPO}/resolve/{{rev}}/{{path:.+}}")
    @routes.get(f"/datasets/{REPO}/resolve/{{rev}}/{{path:.+}}", allow_head=False)
    async def resolve_file(request: web.Request) -> web.StreamResponse:
        repo, sha = revision_of(request)
        path = store.snapshot(repo, sha) / request.match_info["path"]
        if not path.is_file():
            return _error(404, "EntryNotFound", f"{request.match_info['path']} does not exist on {sha}")
        data = path.read_bytes()
        lfs = is_lfs(request.match_info["path"], len(data))
        etag = hashlib.sha256(data).hexdigest() if lfs else git_blob_sha(data)
        headers = {"X-Repo-Commit": sha, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
        if lfs:
            headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(len(data))})
        status, body = 200, data
        rng = request.headers.get("Range")
        if rng and (m := re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())):
            start, end = m.group(1), m.group(2)
            if start == "":  # the last N bytes
                first, last = max(len(data) - int(end), 0), len(data) - 1
            else:
                first, last = int(start), min(int(end), len(data) - 1) if end else len(data) - 1
            if first >= len(data):
                return web.Response(status=416, headers={"Content-Range": f"bytes */{len(data)}"})
            status, body = 206, data[first:last + 1]
            headers["Content-Range"] = f"bytes {first}-{last}/{len(data)}"
        headers["Content-Length"] = str(len(body))
        if request.method == "HEAD":
            return web.Response(status=status, headers=headers)
        return web.Response(status=status, body=body, headers=headers)

    @routes.post("/api/repos/create")
    async def create_repo(request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("type", "model") != "dataset":
            return _error(400, "BadRequest", "this stand-in keeps dataset repositories only")
        repo = f"{body.get('organization') or 'user'}/{body['name']}"
        private = body.get("visibility", "private" if body.get("private") else "public") != "public"
        if not store.create(repo, private=private):
            # the Hub names the existing repository's URL, which create_repo(exist_ok=True) returns
            return _error(409, "RepoExists", "You already created this dataset repo", url=f"{base['url']}/datasets/{repo}")
        return web.json_response({"url": f"{base['url']}/datasets/{repo}", "name": repo, "id": repo})

    @routes.post(api + "/preupload/{rev}")
    async def preupload(request: web.Request) -> web.Response:
        repo, sha = revision_of(request)
        body = await request.json()
        files = [{"path": f["path"], "uploadMode": "lfs" if is_lfs(f["path"], f["size"]) else "regular",
                  "shouldIgnore": False, "oid": None} for f in body.get("files", [])]
        return web.json_response({"files": files, "commitOid": sha})

    @routes.post("/datasets/{owner}/{name}.git/info/lfs/objects/batch")
    async def lfs_batch(request: web.Request) -> web.Response:
        body = await request.json()
        objects = []
        for obj in body.get("objects", []):
            out = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if not store.lfs_path(obj["oid"]).exists():
                out["actions"] = {"upload": {"href": f"{base['url']}/lfs/{obj['oid']}", "header": {}}}
            objects.append(out)
        return web.json_response({"transfer": "basic", "objects": objects}, content_type="application/vnd.git-lfs+json")

    @routes.put("/lfs/{oid}")
    async def lfs_put(request: web.Request) -> web.Response:
        oid = request.match_info["oid"]
        data = await request.read()
        if hashlib.sha256(data).hexdigest() != oid:
            return _error(400, "BadRequest", "the content does not match its oid")
        store.lfs_path(oid).parent.mkdir(parents=True, exist_ok=True)
        store.lfs_path(oid).write_bytes(data)
        return web.Response(status=200)

    @routes.post(api + "/commit/{rev}")
    async def commit(request: web.Request) -> web.Response:
        repo, sha = revision_of(request)
        files: dict[str, bytes | Path] = {}
        deleted: list[str] = []
        summary = "commit"
        for line in (await request.read()).decode().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                summary = value.get("summary") or summary
            elif key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "lfsFile":
                blob = store.lfs_path(value["oid"])
                if not blob.exists():
                    return _error(400, "BadRequest", f"LFS object {value['oid']} was never uploaded")
                files[value["path"]] = blob
            elif key in ("deletedFile", "deletedFolder"):
                deleted.append(value["path"])
            else:
                return _error(400, "BadRequest", f"unknown commit operation {key!r}")
        new = store.commit(repo, files, deleted, summary, branch=request.match_info.get("rev", "main"))
        return web.json_response({"commitUrl": f"{base['url']}/datasets/{repo}/commit/{new}", "commitOid": new,
                                  "pullRequestUrl": None, "success": True})

    @routes.post("/api/validate-yaml")
    async def validate_yaml(request: web.Request) -> web.Response:
        """The card's YAML header: it must parse and be a mapping (the Hub checks more, e.g. known
        license ids; this is what a stand-in can check without the Hub's schema)."""
        import yaml

        text = (await request.json()).get("content", "")
        if not text.startswith("---"):
            return web.json_response({"errors": [], "warnings": [{"message": "empty or missing yaml metadata"}]})
        try:
            meta = yaml.safe_load(text.split("---", 2)[1])
        except yaml.YAMLError as exc:
            return web.json_response({"errors": [{"message": f"invalid YAML: {exc}"}]}, status=400)
        if not isinstance(meta, dict):
            return web.json_response({"errors": [{"message": "the metadata must be a mapping"}]}, status=400)
        return web.json_response({"errors": [], "warnings": []})

    @routes.get("/_log")
    async def show_log(request: web.Request) -> web.Response:
        return web.json_response(log)

    app.add_routes(routes)
    return app


@contextlib.contextmanager
def hub_server(root: Path) -> Iterator[HubHandle]:
    """The stand-in, in a thread of this process, keeping its repositories in `root`."""
    log: list[dict[str, Any]] = []
    store = HubStore(root)
    base: dict[str, str] = {}
    with app_in_thread(make_app(store, log, base), "hub-server") as port:
        base["url"] = f"http://{HOST}:{port}"
        yield HubHandle(base["url"], store, log)


def hub_env(url: str, home: Path) -> dict[str, str]:
    """The environment a client process needs to use the stand-in: its URL, caches in `home` (so a
    test never reads or fills the user's), online, and LFS uploads without Xet (see the module doc)."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT=url, HF_HOME=str(home), HF_DATASETS_CACHE=str(home / "datasets"),
               HF_HUB_CACHE=str(home / "hub"), HF_HUB_DISABLE_XET="1", HF_TOKEN="hf_stand_in_token",
               HF_HUB_DISABLE_TELEMETRY="1")
    return env


def use_in_process(monkeypatch, url: str, home: Path) -> None:
    """Point this process's huggingface_hub and datasets at the stand-in: the environment of
    `hub_env`, and the module constants both libraries read from it at import time."""
    import datasets.config
    import huggingface_hub.constants as hf

    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in hub_env(url, home).items():
        if key.startswith("HF_"):
            monkeypatch.setenv(key, value)
    monkeypatch.setattr(hf, "ENDPOINT", url)
    monkeypatch.setattr(hf, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(hf, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", url)
    monkeypatch.setattr(datasets.config, "HUB_DATASETS_URL", url + "/datasets/{repo_id}/resolve/{revision}/{path}")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", home / "datasets")
    monkeypatch.setattr(datasets.config, "HF_MODULES_CACHE", home / "modules")
    monkeypatch.setattr(datasets.config, "DOWNLOADED_DATASETS_PATH", home / "datasets" / "downloads")
    monkeypatch.setattr(datasets.config, "EXTRACTED_DATASETS_PATH", home / "datasets" / "downloads" / "extracted")
    from huggingface_hub import HfFileSystem

    HfFileSystem.clear_instance_cache()  # fsspec keeps one per set of arguments, with the old endpoint
