"""An OpenAI-compatible HTTP server that misbehaves on request, for testing and benchmarking clients.

Normal requests get a deterministic echo answer with `usage`. A request misbehaves when its prompt
(any chat message, or the raw prompt) contains a directive:

    FAULT:<KIND>[:key=value]...

    FAULT:429:after=2        429 with `Retry-After: 2` (seconds); also after_ms=500 (sends
                             `retry-after-ms`) and after_date=2 (an HTTP date 2 s ahead);
                             no after* option means no header
    FAULT:500:times=2        any status code works: 500, 503, 400, 408, ...
    FAULT:SLOW:secs=5        answer normally, but only after `secs`
    FAULT:TRUNC              200 with a complete HTTP body holding half a JSON document
    FAULT:CUT                Content-Length of the full body, half of it sent, connection closed
    FAULT:NONJSON            200 with an HTML page
    FAULT:NOCHOICES          200 with JSON that has no `choices`

Every fault applies to the first `times` requests carrying that prompt (default 1; `times=always`
for every one), then the prompt is answered normally. "Prompt" (the key used for counting) is the
last chat message's content, or the raw prompt.

Counts are exposed for assertions: GET /stats gives total / completed / in-flight counts, the
maximum seen in flight, the mean time from arrival to answer written, and per-prompt counts
(`?prompts=0` leaves those out); GET /log gives the last 10,000 requests with their arrival times
(time.monotonic, comparable across processes on Linux); POST /reset clears both. "Completed"
means a normal answer was handed in full to the socket: a client killed after that point had its
answer sent, one killed before had not.

Run it in-process (`fault_server()`, a thread with its own event loop) or as a subprocess
(`fault_server(subprocess=True)`, or `python -m tests.servers.fault_server --port 0 --delay 0.05`,
which prints `READY port=P base_url=...` once it listens). A subprocess keeps the server's CPU off
the client's GIL, which benchmarks need. `llama_server()` starts a real llama-cpp-python server on the
embedded model.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email.utils
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess as sp
import sys
import threading
import time
import urllib.request
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

HOST = "127.0.0.1"
_DIRECTIVE = re.compile(r"FAULT:([A-Z0-9_]+)((?::[a-z_]+=[^:\s]+)*)")
_MAX_SLOW = 120.0  # a fault never holds a handler longer than this
_LOG_SIZE = 10_000


def parse_fault(text: str) -> dict[str, str] | None:
    """The first FAULT directive in `text` as {"kind": ..., option: value}, or None."""
    m = _DIRECTIVE.search(text)
    if not m:
        return None
    spec = {"kind": m.group(1)}
    for opt in filter(None, m.group(2).split(":")):
        k, _, v = opt.partition("=")
        spec[k] = v
    return spec


class _State:
    """Counters. Touched only from the server's event loop, so no locking."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.total = 0
        self.completed = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.by_prompt: Counter[str] = Counter()
        self.completed_by_prompt: Counter[str] = Counter()
        self.service_seconds = 0.0  # summed over completed answers, arrival to last byte written
        self.log: deque[dict[str, Any]] = deque(maxlen=_LOG_SIZE)

    def stats(self, per_prompt: bool) -> dict[str, Any]:
        d: dict[str, Any] = {
            "total": self.total,
            "completed": self.completed,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "mean_service_s": self.service_seconds / self.completed if self.completed else None,
        }
        if per_prompt:
            d["by_prompt"] = dict(self.by_prompt)
            d["completed_by_prompt"] = dict(self.completed_by_prompt)
        return d


def _words(text: str) -> list[str]:
    return text.split()


def _answer(body: dict[str, Any], chat: bool, key: str) -> dict[str, Any]:
    """A deterministic OpenAI-shaped answer: echoes the prompt, cut to max_tokens words."""
    max_tokens = int(body.get("max_tokens") or 16)
    words = ["echo:"] + _words(key)
    finish = "stop"
    if len(words) > max_tokens:
        words, finish = words[:max_tokens], "length"
    text = " ".join(words)
    if (body.get("response_format") or {}).get("type") == "json_schema":
        text = json.dumps({"echo": key[:200]})
    prompt_text = body.get("prompt") if not chat else " ".join(m.get("content") or "" for m in body.get("messages", []))
    usage = {"prompt_tokens": len(_words(str(prompt_text))), "completion_tokens": len(words)}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "finish_reason": finish}
        obj = "text_completion"
    return {
        "id": "fault-1",
        "object": obj,
        "created": 0,
        "model": body.get("model", ""),
        "choices": [choice],
        "usage": usage,
    }


def make_app(delay: float = 0.0, api_key: str | None = None) -> web.Application:
    """The aiohttp application. `delay` is added before every answer (benchmarks model latency with it)."""
    state = _State()
    app = web.Application()

    async def completions(request: web.Request) -> web.StreamResponse:
        chat = request.path.endswith("/chat/completions")
        arrived = time.monotonic()
        state.total += 1
        state.in_flight += 1
        state.max_in_flight = max(state.max_in_flight, state.in_flight)
        key = ""
        try:
            try:
                body = await request.json()
                if chat:
                    msgs = body["messages"]
                    key, scan = (msgs[-1].get("content") or ""), " ".join(m.get("content") or "" for m in msgs)
                else:
                    key = scan = str(body["prompt"])
            except (ValueError, KeyError, TypeError, IndexError, AttributeError):
                return web.json_response({"error": {"message": "bad request body"}}, status=400)
            state.by_prompt[key] += 1
            seen = state.by_prompt[key]
            state.log.append({"t": arrived, "path": request.path, "prompt": key, "n": seen})

            if api_key is not None and request.headers.get("Authorization") != f"Bearer {api_key}":
                sent = request.headers.get("Authorization", "").removeprefix("Bearer ")
                # Echo the key the way real providers do, so clients are tested for redaction.
                msg = f"Incorrect API key provided: {sent}"
                return web.json_response({"error": {"message": msg, "code": "invalid_api_key"}}, status=401)

            spec = parse_fault(scan)
            if spec is not None:
                times = spec.get("times", "1")
                if times != "always" and seen > int(times):
                    spec = None
            if delay:
                await asyncio.sleep(delay)
            resp, answered = await _respond(request, body, chat, key, spec)
            if answered:
                state.completed += 1
                state.completed_by_prompt[key] += 1
                state.service_seconds += time.monotonic() - arrived
            return resp
        finally:
            state.in_flight -= 1

    async def _respond(request, body, chat, key, spec) -> tuple[web.StreamResponse, bool]:
        """The response, and whether it was a complete normal answer."""
        kind = spec["kind"] if spec else "OK"
        if kind == "SLOW":
            await asyncio.sleep(min(float(spec.get("secs", "5")), _MAX_SLOW))
            kind = "OK"
        if kind == "OK":
            payload = json.dumps(_answer(body, chat, key)).encode()
            resp = web.StreamResponse(headers={"Content-Type": "application/json"})
            resp.content_length = len(payload)
            await resp.prepare(request)
            await resp.write(payload)
            await resp.write_eof()  # counted as completed only once the whole body is written
            return resp, True
        if kind.isdigit():
            headers = {}
            if "after" in spec:
                headers["Retry-After"] = spec["after"]
            if "after_ms" in spec:
                headers["retry-after-ms"] = spec["after_ms"]
            if "after_date" in spec:
                headers["Retry-After"] = email.utils.formatdate(time.time() + float(spec["after_date"]), usegmt=True)
            err = {"error": {"message": f"injected HTTP {kind}", "type": "fault"}}
            return web.json_response(err, status=int(kind), headers=headers), False
        full = json.dumps(_answer(body, chat, key)).encode()
        if kind == "TRUNC":
            return web.Response(body=full[: len(full) // 2], content_type="application/json"), False
        if kind == "NONJSON":
            return web.Response(text="<html><body>502 Bad Gateway</body></html>", content_type="text/html"), False
        if kind == "NOCHOICES":
            return web.json_response({"object": "error", "message": "upstream model unavailable"}), False
        if kind == "CUT":
            resp = web.StreamResponse(headers={"Content-Type": "application/json"})
            resp.content_length = len(full)
            await resp.prepare(request)
            await resp.write(full[: len(full) // 2])
            request.transport.close()
            return resp, False
        return web.json_response({"error": {"message": f"unknown fault {kind}"}}, status=400), False

    async def models(request: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [{"id": "fault-model", "object": "model", "owned_by": "tests"}]}
        )

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(state.stats(per_prompt=request.query.get("prompts", "1") != "0"))

    async def log(request: web.Request) -> web.Response:
        return web.json_response(list(state.log))

    async def reset(request: web.Request) -> web.Response:
        state.reset()
        return web.json_response({"ok": True})

    app.router.add_post("/v1/chat/completions", completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/stats", stats)
    app.router.add_get("/log", log)
    app.router.add_post("/reset", reset)
    return app


async def _start(app: web.Application, port: int) -> tuple[web.AppRunner, int]:
    # handler_cancellation: a client that timed out stops its SLOW handler instead of leaving it asleep.
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, HOST, port, backlog=1024)
    await site.start()
    return runner, runner.addresses[0][1]


@dataclass
class ServerHandle:
    """A running server: its base URL (ending in /v1) and helpers to read its counters."""

    base_url: str
    root: str
    output: Callable[[], str] | None = None  # what the server process printed (llama_server only)

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(self.root + path, timeout=10) as r:
            return json.loads(r.read())

    def stats(self, per_prompt: bool = True) -> dict[str, Any]:
        return self._get("/stats" + ("" if per_prompt else "?prompts=0"))

    def log(self) -> list[dict[str, Any]]:
        return self._get("/log")

    def reset(self) -> None:
        urllib.request.urlopen(urllib.request.Request(self.root + "/reset", method="POST"), timeout=10).read()


def _die_with_parent() -> None:
    """preexec_fn: on Linux, have the kernel SIGTERM the child when its parent dies (no orphans).

    Strictly, when the parent *thread* that started it exits: start servers from a thread that
    outlives them (the main thread, in pytest)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _stop_process(proc: sp.Popen, grace: float = 5.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except sp.TimeoutExpired:
            proc.kill()
            proc.wait(grace)


@contextlib.contextmanager
def fault_server(delay: float = 0.0, api_key: str | None = None, subprocess: bool = False) -> Iterator[ServerHandle]:
    """Start the fault server on an ephemeral 127.0.0.1 port, yield its handle, stop it on exit."""
    if subprocess:
        cmd = [sys.executable, "-m", "tests.servers.fault_server", "--port", "0", "--delay", str(delay)]
        if api_key is not None:
            cmd += ["--api-key", api_key]
        root_dir = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root_dir, os.environ.get("PYTHONPATH")]))}
        proc = sp.Popen(cmd, stdout=sp.PIPE, text=True, env=env, preexec_fn=_die_with_parent)
        try:
            line = proc.stdout.readline()  # the server prints READY or dies (EOF)
            m = re.search(r"READY port=(\d+)", line)
            if not m:
                raise RuntimeError(f"fault server did not start (exit code {proc.poll()}): {line!r}")
            port = int(m.group(1))
            yield ServerHandle(f"http://{HOST}:{port}/v1", f"http://{HOST}:{port}")
        finally:
            _stop_process(proc)
            proc.stdout.close()
        return

    loop = asyncio.new_event_loop()
    started: dict[str, Any] = {}
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            started["runner"], started["port"] = loop.run_until_complete(_start(make_app(delay, api_key), 0))
        except BaseException as exc:  # surface startup errors in the caller's thread
            started["error"] = exc
            ready.set()
            return
        ready.set()
        loop.run_forever()
        loop.run_until_complete(started["runner"].cleanup())
        loop.close()

    thread = threading.Thread(target=run, name="fault-server", daemon=True)
    thread.start()
    ready.wait(30)
    if "error" in started or "port" not in started:
        raise RuntimeError(f"fault server did not start: {started.get('error')!r}")
    try:
        port = started["port"]
        yield ServerHandle(f"http://{HOST}:{port}/v1", f"http://{HOST}:{port}")
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)


def free_port() -> int:
    """An unused 127.0.0.1 port, for servers that cannot report the one they bound."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def llama_server(
    model_path: str | None = None, alias: str = "smollm2", n_ctx: int = 2048, startup_timeout: float = 120.0
) -> Iterator[ServerHandle]:
    """Run llama-cpp-python's server on the embedded model on 127.0.0.1, yield its handle, stop it.

    It is started as `python -m curate.llm.llama_server` (the same server, loading its model the
    way curate does: no AMX crash). Ready means GET /v1/models answers. Its output goes to a
    temporary log, shown if it fails to start and readable as `handle.output()`.
    ServerHandle.stats() is not available on this server.
    """
    import tempfile

    from curate.llm.embedded import embedded_model_path

    port = free_port()
    cmd = [
        sys.executable, "-m", "curate.llm.llama_server",
        "--model", model_path or str(embedded_model_path()),
        "--host", HOST, "--port", str(port),
        "--model_alias", alias, "--n_ctx", str(n_ctx),
    ]  # fmt: skip
    with tempfile.TemporaryFile("w+") as logf:
        proc = sp.Popen(cmd, stdout=logf, stderr=sp.STDOUT, preexec_fn=_die_with_parent)
        try:
            root = f"http://{HOST}:{port}"
            deadline = time.monotonic() + startup_timeout
            while True:
                if proc.poll() is not None or time.monotonic() > deadline:
                    logf.seek(0)
                    tail = logf.read()[-2000:]
                    raise RuntimeError(f"llama server did not become ready (exit code {proc.poll()}):\n{tail}")
                try:
                    with urllib.request.urlopen(root + "/v1/models", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    time.sleep(0.2)
            def output() -> str:
                logf.seek(0)
                return logf.read()

            yield ServerHandle(root + "/v1", root, output=output)
        finally:
            _stop_process(proc)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port (reported on the READY line)")
    ap.add_argument("--delay", type=float, default=0.0, help="seconds added before every answer")
    ap.add_argument("--api-key", default=None, help="require this bearer token")
    args = ap.parse_args(argv)

    async def serve() -> None:
        runner, port = await _start(make_app(args.delay, args.api_key), args.port)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        print(f"READY port={port} base_url=http://{HOST}:{port}/v1", flush=True)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
