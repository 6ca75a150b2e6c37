"""A server of the OpenAI Batch API's files and batches endpoints, for testing the batch route.

    POST /v1/files                     multipart upload (purpose "batch") -> a file object
    GET  /v1/files/{id}                the file object; GET /v1/files/{id}/content its bytes
    POST /v1/batches                   {input_file_id, endpoint, completion_window: "24h", metadata}
    GET  /v1/batches/{id}              the batch object; GET /v1/batches?limit=&after= lists them, newest first
    POST /v1/batches/{id}/cancel       validating or in_progress -> cancelling -> cancelled

A batch goes through the states the API documents, in time, whether or not anyone polls it:
validating (each line is checked: JSON, a unique custom_id, POST to the batch's endpoint, one model
for the file, at most `max_requests` lines and `max_bytes` bytes; any error -> failed, with
`errors.data` naming code, message and line) -> in_progress (one request every `request_seconds`,
request_counts rising) -> finalizing -> completed, with an output file of the answers (status 200)
and an error file of the requests that failed. `expire_seconds` after its creation a batch that
has not finished expires: the answers so far go to its output file, each request not run to its
error file with code `batch_expired`. A cancelled batch does the same with `batch_cancelled`.
`DEFAULTS` lists the settings; POST /settings (`handle.configure(...)`) changes them as it runs.

Answers are the fault server's echo (`echo_answer`), with its FAULT directives (`FAULT:500`,
`FAULT:400:times=always`, ...) turned into error-file lines with that HTTP status, and requests
outside the API's limits answered HTTP 400 (`openai_limit_error`), as the online endpoints do.

GET /stats counts for assertions: files uploaded, batches created, lines submitted, and how often
each request was run (`runs`, keyed by prompt: the last chat message or the raw prompt), so a
test can check that nothing was answered twice.

Start it in-process with `batch_server()` (a thread with its own event loop); a run in a
subprocess, killed and rerun, talks to the one server throughout.
`answer_folder_batch` answers a batch input file the way vLLM's run_batch does (one output file,
errors inline): the fast tests' stand-in for it; the slow test runs vLLM itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.servers.fault_server import echo_answer, openai_limit_error, parse_fault
from tests.servers.processes import HOST, ServerHandle, app_in_thread

ENDPOINTS = ("/v1/chat/completions", "/v1/completions")
DEFAULTS = {
    "validate_seconds": 0.02,  # how long a batch validates
    "request_seconds": 0.0,  # how long each request of a batch takes
    "finalize_seconds": 0.02,
    "cancel_seconds": 0.02,  # cancelling -> cancelled
    "expire_seconds": None,  # a batch expires this long after creation (None: 24 hours)
    "max_requests": 50_000,  # lines per input file (the API's limit)
    "max_bytes": 200_000_000,  # bytes per input file
    "api_key": None,  # require this bearer token
}
EXPIRED = {"code": "batch_expired", "message": "This request could not be executed before the completion window expired."}
CANCELLED = {"code": "batch_cancelled", "message": "This request was not executed because the batch was cancelled."}


def _prompt(body: dict[str, Any], chat: bool) -> tuple[str, str]:
    """(the request's key for counting, the text scanned for FAULT directives)."""
    if chat:
        msgs = body.get("messages") or [{}]
        return msgs[-1].get("content") or "", " ".join(m.get("content") or "" for m in msgs)
    return str(body.get("prompt")), str(body.get("prompt"))


class _State:
    def __init__(self) -> None:
        self.files: dict[str, dict[str, Any]] = {}
        self.content: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}  # in creation order
        self.started: dict[str, float] = {}  # batch id -> time.time() of creation
        self.expiry: dict[str, float | None] = {}  # batch id -> its expire_seconds
        self.runs: Counter[str] = Counter()
        self.lines_submitted = 0
        self.tasks: set[asyncio.Task] = set()
        self.seq = 0

    def next_id(self, prefix: str) -> str:
        self.seq += 1
        return f"{prefix}{self.seq:06d}"

    def add_file(self, data: bytes, filename: str, purpose: str) -> dict[str, Any]:
        fid = self.next_id("file-")
        self.files[fid] = {"id": fid, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                           "filename": filename, "purpose": purpose, "status": "processed"}
        self.content[fid] = data
        return self.files[fid]

    def stats(self) -> dict[str, Any]:
        return {
            "files_uploaded": sum(f["purpose"] == "batch" for f in self.files.values()),
            "batches_created": len(self.batches),
            "lines_submitted": self.lines_submitted,
            "runs": dict(self.runs),
            "batches": [{"id": b["id"], "status": b["status"], "total": b["request_counts"]["total"],
                         "completed": b["request_counts"]["completed"], "failed": b["request_counts"]["failed"],
                         "endpoint": b["endpoint"]} for b in self.batches.values()],
        }


def make_app(**settings: Any) -> web.Application:
    """The aiohttp application. `settings` (DEFAULTS' keys) set how long each state lasts and the
    limits; POST /settings changes them while it runs (a batch already made keeps its expiry)."""
    unknown = set(settings) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown batch server settings: {sorted(unknown)}")
    conf = {**DEFAULTS, **settings}
    state = _State()
    app = web.Application(client_max_size=512 * 1024 * 1024)
    routes = web.RouteTableDef()  # each handler's method and path stand above it

    @web.middleware
    async def auth(request: web.Request, handler):
        api_key = conf["api_key"]
        if api_key is not None and request.path.startswith("/v1/") and \
                request.headers.get("Authorization") != f"Bearer {api_key}":
            sent = request.headers.get("Authorization", "").removeprefix("Bearer ")
            # Echo the key as real providers do, so clients are tested for redaction.
            return _error(401, f"Incorrect API key provided: {sent}", "invalid_api_key")
        return await handler(request)

    app.middlewares.append(auth)

    @routes.post("/v1/files")
    async def upload(request: web.Request) -> web.Response:
        data, filename, purpose = None, "upload", None
        async for part in await request.multipart():
            if part.name == "file":
                filename = part.filename or filename
                data = await part.read(decode=False)
            elif part.name == "purpose":
                purpose = await part.text()
        if data is None or purpose is None:
            return _error(400, "a 'file' and a 'purpose' are required")
        if purpose != "batch":
            return _error(400, f"this server takes purpose 'batch' only, not {purpose!r}")
        return web.json_response(state.add_file(bytes(data), filename, purpose))

    def file_or_404(request: web.Request) -> dict[str, Any] | None:
        return state.files.get(request.match_info["file_id"])

    @routes.get("/v1/files/{file_id}")
    async def get_file(request: web.Request) -> web.Response:
        f = file_or_404(request)
        return web.json_response(f) if f else _error(404, "No such File object", "not_found")

    @routes.get("/v1/files/{file_id}/content")
    async def file_content(request: web.Request) -> web.Response:
        f = file_or_404(request)
        if f is None:
            return _error(404, "No such File object", "not_found")
        return web.Response(body=state.content[f["id"]], content_type="application/octet-stream")

    @routes.post("/v1/batches")
    async def create_batch(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "invalid JSON body")
        if body.get("completion_window") != "24h":
            return _error(400, f"completion_window must be '24h', not {body.get('completion_window')!r}")
        if body.get("endpoint") not in ENDPOINTS:
            return _error(400, f"endpoint {body.get('endpoint')!r} is not supported here")
        if body.get("input_file_id") not in state.files:
            return _error(404, f"No such File object: {body.get('input_file_id')}", "not_found")
        now = int(time.time())
        bid = state.next_id("batch_")
        batch = {
            "id": bid, "object": "batch", "endpoint": body["endpoint"], "errors": None,
            "input_file_id": body["input_file_id"], "completion_window": "24h", "status": "validating",
            "output_file_id": None, "error_file_id": None, "created_at": now, "in_progress_at": None,
            "expires_at": now + 86400, "finalizing_at": None, "completed_at": None, "failed_at": None,
            "expired_at": None, "cancelling_at": None, "cancelled_at": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0}, "metadata": body.get("metadata"),
        }
        state.batches[bid] = batch
        state.started[bid] = time.time()
        state.expiry[bid] = conf["expire_seconds"]
        task = asyncio.get_running_loop().create_task(run_batch(batch))
        state.tasks.add(task)
        task.add_done_callback(state.tasks.discard)
        return web.json_response(batch)

    @routes.get("/v1/batches/{batch_id}")
    async def get_batch(request: web.Request) -> web.Response:
        b = state.batches.get(request.match_info["batch_id"])
        return web.json_response(b) if b else _error(404, "No such Batch object", "not_found")

    @routes.get("/v1/batches")
    async def list_batches(request: web.Request) -> web.Response:
        newest = list(reversed(state.batches.values()))
        after = request.query.get("after")
        if after:
            ids = [b["id"] for b in newest]
            newest = newest[ids.index(after) + 1:] if after in ids else []
        limit = int(request.query.get("limit", 20))
        page = newest[:limit]
        return web.json_response({"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                                  "last_id": page[-1]["id"] if page else None, "has_more": len(newest) > limit})

    @routes.post("/v1/batches/{batch_id}/cancel")
    async def cancel_batch(request: web.Request) -> web.Response:
        b = state.batches.get(request.match_info["batch_id"])
        if b is None:
            return _error(404, "No such Batch object", "not_found")
        if b["status"] not in ("validating", "in_progress"):
            return _error(400, f"Cannot cancel a batch with status '{b['status']}'.")
        b["status"], b["cancelling_at"] = "cancelling", int(time.time())
        return web.json_response(b)

    @routes.get("/stats")
    async def stats(request: web.Request) -> web.Response:
        return web.json_response(state.stats())

    @routes.post("/settings")
    async def change_settings(request: web.Request) -> web.Response:
        changes = await request.json()
        unknown = set(changes) - set(DEFAULTS)
        if unknown:
            return _error(400, f"unknown settings {sorted(unknown)}")
        conf.update(changes)
        return web.json_response(conf)

    # -- the life of a batch ----------------------------------------------------------------------

    def expired(batch: dict[str, Any]) -> bool:
        limit = state.expiry[batch["id"]]
        return limit is not None and time.time() >= state.started[batch["id"]] + limit

    def validate(batch: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(the requests, the validation errors) of a batch's input file."""
        data = state.content[batch["input_file_id"]]
        errors, requests, ids, model = [], [], set(), None
        max_bytes, max_requests = conf["max_bytes"], conf["max_requests"]
        if len(data) > max_bytes:
            errors.append({"code": "file_too_large", "message": f"the input file has {len(data)} bytes; at most "
                                                                  f"{max_bytes} are allowed", "line": None})
        lines = [line for line in data.decode("utf-8", "replace").splitlines() if line.strip()]
        if len(lines) > max_requests:
            errors.append({"code": "too_many_requests", "message": f"the input file has {len(lines)} requests; at "
                                                                     f"most {max_requests} are allowed", "line": None})
        for n, line in enumerate(lines, 1):
            try:
                req = json.loads(line)
                cid, body = req["custom_id"], req["body"]
            except (ValueError, KeyError, TypeError):
                errors.append({"code": "invalid_json_line", "message": "not a JSON request line", "line": n})
                continue
            if cid in ids:
                errors.append({"code": "duplicate_custom_id", "message": f"custom_id {cid!r} is not unique", "line": n})
            if req.get("method") != "POST" or req.get("url") != batch["endpoint"]:
                errors.append({"code": "mismatched_endpoint", "message": f"url {req.get('url')!r} is not the batch's "
                                                                         f"endpoint {batch['endpoint']}", "line": n})
            model = body.get("model") if model is None else model
            if body.get("model") != model:
                errors.append({"code": "mismatched_model", "message": "every request of a file must use one model",
                               "line": n})
            ids.add(cid)
            requests.append(req)
        return requests, errors[:100]

    def run_one(req: dict[str, Any], chat: bool) -> tuple[dict[str, Any], bool]:
        """(the output or error line of one request, whether it is an answer)."""
        body = req["body"]
        key, scan = _prompt(body, chat)
        state.runs[key] += 1
        rid = f"batch_req_{state.next_id('')}"
        status, message = 200, None
        limit = openai_limit_error(body, chat)
        spec = parse_fault(scan)
        if limit is not None:
            status, message = 400, limit
        elif spec is not None and spec["kind"].isdigit():
            times = spec.get("times", "1")
            if times == "always" or state.runs[key] <= int(times):
                status, message = int(spec["kind"]), f"injected HTTP {spec['kind']}"
        if status == 200:
            resp = {"status_code": 200, "request_id": rid, "body": echo_answer(body, chat, key)}
        else:
            resp = {"status_code": status, "request_id": rid,
                    "body": {"error": {"message": message, "type": "invalid_request_error" if status < 500 else "server_error"}}}
        return {"id": rid, "custom_id": req["custom_id"], "response": resp, "error": None}, status == 200

    def write_results(batch: dict[str, Any], answers: list, errors: list) -> None:
        if answers:
            data = "".join(json.dumps(a) + "\n" for a in answers).encode()
            batch["output_file_id"] = state.add_file(data, f"{batch['id']}_output.jsonl", "batch_output")["id"]
        if errors:
            data = "".join(json.dumps(e) + "\n" for e in errors).encode()
            batch["error_file_id"] = state.add_file(data, f"{batch['id']}_error.jsonl", "batch_output")["id"]

    async def run_batch(batch: dict[str, Any]) -> None:
        await asyncio.sleep(conf["validate_seconds"])
        requests, errors = validate(batch)
        if errors:
            batch.update(status="failed", failed_at=int(time.time()), errors={"object": "list", "data": errors})
            return
        state.lines_submitted += len(requests)
        chat = batch["endpoint"] == "/v1/chat/completions"
        counts = batch["request_counts"]
        counts["total"] = len(requests)
        if batch["status"] == "validating":
            batch.update(status="in_progress", in_progress_at=int(time.time()))
        answers, failures, n = [], [], 0
        for n, req in enumerate(requests):
            if batch["status"] == "cancelling" or expired(batch):
                break
            await asyncio.sleep(conf["request_seconds"])
            if batch["status"] == "cancelling" or expired(batch):
                break
            line, ok = run_one(req, chat)
            (answers if ok else failures).append(line)
            counts["completed" if ok else "failed"] += 1
        else:
            n = len(requests)
        if batch["status"] == "cancelling" or expired(batch):
            why, end = (CANCELLED, "cancelled") if batch["status"] == "cancelling" else (EXPIRED, "expired")
            if end == "cancelled":
                await asyncio.sleep(conf["cancel_seconds"])
            for req in requests[n:]:
                failures.append({"id": f"batch_req_{state.next_id('')}", "custom_id": req["custom_id"],
                                 "response": None, "error": dict(why)})
            counts["failed"] += len(requests) - n
            write_results(batch, answers, failures)
            batch.update(status=end, **{f"{end}_at": int(time.time())})
            return
        batch.update(status="finalizing", finalizing_at=int(time.time()))
        await asyncio.sleep(conf["finalize_seconds"])
        write_results(batch, answers, failures)
        batch.update(status="completed", completed_at=int(time.time()))

    app.add_routes(routes)
    return app


def _error(status: int, message: str, code: str | None = None) -> web.Response:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return web.json_response({"error": {"message": message, "type": kind, "param": None, "code": code}}, status=status)


class BatchServerHandle(ServerHandle):
    def configure(self, **settings: Any) -> dict[str, Any]:
        """Change the server's settings (DEFAULTS' keys) while it runs."""
        req = urllib.request.Request(self.root + "/settings", data=json.dumps(settings).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())


@contextlib.contextmanager
def batch_server(**settings: Any) -> Iterator[BatchServerHandle]:
    """Start the batch server (DEFAULTS' settings) on an ephemeral 127.0.0.1 port, in a thread."""
    with app_in_thread(make_app(**settings), "batch server") as port:
        yield BatchServerHandle(f"http://{HOST}:{port}/v1", f"http://{HOST}:{port}")


def answer_folder_batch(input_file: Path, output_file: Path) -> Counter:
    """Answer a batch input file as vLLM's run_batch does: one output file holding a line per
    request (answers with status 200, errors inline), written at the end. Like run_batch (0.32), a
    line that is not a chat request stops it before it answers anything. Returns how often each
    prompt was run."""
    runs: Counter[str] = Counter()
    requests = [json.loads(line) for line in Path(input_file).read_text(encoding="utf-8").splitlines() if line.strip()]
    if any(req["url"] != "/v1/chat/completions" for req in requests):
        raise ValueError(f"{input_file}: run_batch serves chat requests only")
    out = []
    for n, req in enumerate(requests):
        key, _ = _prompt(req["body"], True)
        runs[key] += 1
        limit = openai_limit_error(req["body"], True)
        if limit is None:
            resp = {"status_code": 200, "request_id": f"vllm-batch-{n}", "body": echo_answer(req["body"], True, key)}
        else:
            resp = {"status_code": 400, "request_id": f"vllm-batch-{n}", "body": None}
        out.append({"id": f"vllm-{n}", "custom_id": req["custom_id"], "response": resp, "error": limit})
    Path(output_file).write_text("".join(json.dumps(o) + "\n" for o in out), encoding="utf-8")
    return runs
