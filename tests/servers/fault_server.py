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

Requests outside the OpenAI API's documented limits get HTTP 400, as the OpenAI API and vLLM's
server answer them (`openai_limit_error`): more than 4 `stop` sequences, `n` outside 1..128,
`top_logprobs` outside 0..20 (chat) or `logprobs` outside 0..5 (completions), a `seed` outside the
64-bit integer range, `temperature` outside 0..2, `top_p` outside 0..1. So a client that exceeds
one fails a fast test here, not only against a real server; so does a `response_format` OpenAI
refuses (`response_format_error`: a json_schema without a valid name, or strict with a schema its
strict mode does not take). A normal answer honours `stop`: the echo ends before the first stop
sequence found in it (finish reason "stop"). A request for JSON (`response_format`) whose prompt
starts with "{" is answered with the prompt itself, cut at max_tokens words: a test chooses the
JSON, valid or not; other JSON requests get {"echo": prompt}.

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
the client's GIL, which benchmarks need. `llama_server()` and `vllm_server()` start real
llama-cpp-python and vLLM servers on the embedded model.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email.utils
import json
import os
import re
import signal
import subprocess as sp
import sys
import time
from collections import Counter, deque
from collections.abc import Iterator
from typing import Any

from aiohttp import web

from tests.servers.processes import HOST, ServerHandle, app_in_thread, die_with_parent, start_app, stop_process
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


# The OpenAI API's documented request limits (API reference, chat/completions and completions;
# vLLM's server applies the same stop limit, VLLM_MAX_STOP_STRINGS = 4, and 64-bit seeds).
MAX_STOP = 4
MAX_N = 128
MAX_TOP_LOGPROBS = 20  # chat: top_logprobs
MAX_LOGPROBS = 5  # completions: logprobs
SEED_RANGE = (-(2**63), 2**63 - 1)


def openai_limit_error(body: dict[str, Any], chat: bool) -> str | None:
    """Why `body` breaks a documented OpenAI API limit (the message of the 400 answer), or None."""
    stop = body.get("stop")
    if isinstance(stop, list) and len(stop) > MAX_STOP:
        return f"'stop' has {len(stop)} sequences; at most {MAX_STOP} are allowed"
    n = body.get("n", 1)
    if not (isinstance(n, int) and 1 <= n <= MAX_N):
        return f"'n' must be an integer in 1..{MAX_N}, not {n!r}"
    if chat:
        top = body.get("top_logprobs")
        if top is not None and not (isinstance(top, int) and 0 <= top <= MAX_TOP_LOGPROBS):
            return f"'top_logprobs' must be an integer in 0..{MAX_TOP_LOGPROBS}, not {top!r}"
    else:
        lp = body.get("logprobs")
        if lp is not None and not (isinstance(lp, int) and 0 <= lp <= MAX_LOGPROBS):
            return f"'logprobs' must be an integer in 0..{MAX_LOGPROBS}, not {lp!r}"
    seed = body.get("seed")
    if seed is not None and not (isinstance(seed, int) and SEED_RANGE[0] <= seed <= SEED_RANGE[1]):
        return f"'seed' must be a 64-bit integer, not {seed!r}"
    for name, hi in (("temperature", 2), ("top_p", 1)):
        value = body.get(name)
        if value is not None and not (isinstance(value, (int, float)) and 0 <= value <= hi):
            return f"'{name}' must be in 0..{hi}, not {value!r}"
    return response_format_error(body.get("response_format"))


def response_format_error(fmt: Any) -> str | None:
    """Why OpenAI refuses a `response_format` (structured outputs guide): json_schema needs a name
    of 1-64 letters, digits, _ or -, and a schema; with strict true, every object in the schema must
    set additionalProperties false and list all its properties in required."""
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind not in ("text", "json_object", "json_schema"):
        return f"'response_format.type' must be 'text', 'json_object' or 'json_schema', not {kind!r}"
    if kind != "json_schema":
        return None
    spec = fmt.get("json_schema") or {}
    name = spec.get("name")
    if not (isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name)):
        return f"'response_format.json_schema.name' must be 1-64 letters, digits, _ or -, not {name!r}"
    if not isinstance(spec.get("schema"), dict):
        return "'response_format.json_schema.schema' must be a JSON schema object"
    if spec.get("strict"):
        todo = [((), spec["schema"])]
        while todo:
            path, node = todo.pop()
            if isinstance(node, list):
                todo += [((*path, str(i)), n) for i, n in enumerate(node)]
            elif isinstance(node, dict):
                if node.get("type") == "object" or "properties" in node:
                    if node.get("additionalProperties") is not False:
                        return (f"Invalid schema for response_format '{name}': In context={path}, "
                                "'additionalProperties' is required to be supplied and to be false.")
                    missing = [p for p in node.get("properties") or {} if p not in (node.get("required") or [])]
                    if missing:
                        return (f"Invalid schema for response_format '{name}': In context={path}, 'required' is "
                                f"required to be supplied and to be an array including every key in properties. "
                                f"Missing '{missing[0]}'.")
                todo += [((*path, k), v) for k, v in node.items() if isinstance(v, (dict, list))]
    return None


def _words(text: str) -> list[str]:
    return text.split()


def echo_answer(body: dict[str, Any], chat: bool, key: str) -> dict[str, Any]:
    """A deterministic OpenAI-shaped answer: echoes the prompt, cut to max_tokens words and before
    the first of the request's stop sequences. A request for JSON (`response_format`) is answered
    with the prompt itself when it starts with "{" (so a test chooses the JSON, valid or not, and
    cut where max_tokens cuts it), else with {"echo": prompt}."""
    max_tokens = int(body.get("max_tokens") or 16)
    wants_json = (body.get("response_format") or {}).get("type") in ("json_schema", "json_object")
    verbatim = wants_json and key.lstrip().startswith("{")
    words = _words(key) if verbatim else ["echo:"] + _words(key)
    finish = "stop"
    if len(words) > max_tokens:
        words, finish = words[:max_tokens], "length"
    text = key if verbatim and finish == "stop" else " ".join(words)
    stop = body.get("stop") or []
    cuts = [text.index(s) for s in ([stop] if isinstance(stop, str) else stop) if s and s in text]
    if cuts:
        text, finish = text[: min(cuts)], "stop"
        words = _words(text)
    if wants_json and not verbatim:
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


def make_app(delay: float = 0.0, api_key: str | None = None, max_model_len: int | None = None) -> web.Application:
    """The aiohttp application. `delay` is added before every answer (benchmarks model latency with
    it). `max_model_len` makes it behave like vLLM's server on a model of that context length: GET
    /v1/models says so, and a request whose max_tokens alone exceeds it gets HTTP 400."""
    state = _State()
    app = web.Application()
    routes = web.RouteTableDef()  # each handler's method and path stand above it

    @routes.post("/v1/chat/completions")
    @routes.post("/v1/completions")
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

            limit = openai_limit_error(body, chat)
            if limit is None and max_model_len is not None and int(body.get("max_tokens") or 0) > max_model_len:
                limit = f"max_tokens={body['max_tokens']} cannot be greater than max_model_len={max_model_len}"
            if limit is not None:
                err = {"error": {"message": limit, "type": "invalid_request_error", "code": None}}
                return web.json_response(err, status=400)

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
            payload = json.dumps(echo_answer(body, chat, key)).encode()
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
        full = json.dumps(echo_answer(body, chat, key)).encode()
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

    @routes.get("/v1/models")
    async def models(request: web.Request) -> web.Response:
        entry: dict[str, Any] = {"id": "fault-model", "object": "model", "owned_by": "tests"}
        if max_model_len is not None:
            entry["max_model_len"] = max_model_len
        return web.json_response({"object": "list", "data": [entry]})

    @routes.get("/stats")
    async def stats(request: web.Request) -> web.Response:
        return web.json_response(state.stats(per_prompt=request.query.get("prompts", "1") != "0"))

    @routes.get("/log")
    async def log(request: web.Request) -> web.Response:
        return web.json_response(list(state.log))

    @routes.post("/reset")
    async def reset(request: web.Request) -> web.Response:
        state.reset()
        return web.json_response({"ok": True})

    app.add_routes(routes)
    return app


@contextlib.contextmanager
def fault_server(
    delay: float = 0.0, api_key: str | None = None, subprocess: bool = False, max_model_len: int | None = None
) -> Iterator[ServerHandle]:
    """Start the fault server on an ephemeral 127.0.0.1 port, yield its handle, stop it on exit."""
    if subprocess:
        cmd = [sys.executable, "-m", "tests.servers.fault_server", "--port", "0", "--delay", str(delay)]
        if api_key is not None:
            cmd += ["--api-key", api_key]
        if max_model_len is not None:
            cmd += ["--max-model-len", str(max_model_len)]
        root_dir = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root_dir, os.environ.get("PYTHONPATH")]))}
        proc = sp.Popen(cmd, stdout=sp.PIPE, text=True, env=env, preexec_fn=die_with_parent)
        try:
            line = proc.stdout.readline()  # the server prints READY or dies (EOF)
            m = re.search(r"READY port=(\d+)", line)
            if not m:
                raise RuntimeError(f"fault server did not start (exit code {proc.poll()}): {line!r}")
            port = int(m.group(1))
            yield ServerHandle(f"http://{HOST}:{port}/v1", f"http://{HOST}:{port}")
        finally:
            stop_process(proc)
            proc.stdout.close()
        return

    with app_in_thread(make_app(delay, api_key, max_model_len), "fault server") as port:
        yield ServerHandle(f"http://{HOST}:{port}/v1", f"http://{HOST}:{port}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port (reported on the READY line)")
    ap.add_argument("--delay", type=float, default=0.0, help="seconds added before every answer")
    ap.add_argument("--api-key", default=None, help="require this bearer token")
    ap.add_argument("--max-model-len", type=int, default=None, help="advertise and enforce this context length")
    args = ap.parse_args(argv)

    async def serve() -> None:
        runner, port = await start_app(make_app(args.delay, args.api_key, args.max_model_len), args.port)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        print(f"READY port={port} base_url=http://{HOST}:{port}/v1", flush=True)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
