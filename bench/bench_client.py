"""Client throughput against a server with a fixed latency: how close do we get to the ideal c/d?

    python bench/bench_client.py [--concurrency 64 --delay 0.05 --requests 2000]
                                 [--clients sleep,curate,openai,httpx] [--window workers|semaphore] [--repeat 3]

The fault server runs as a subprocess (its CPU does not share our GIL) and answers every request
after `delay` seconds, so with `c` requests in flight the ideal rate is c/delay. Each client sends
the same N chat requests through a plain asyncio sliding window; `c` requests are sent first and
not timed, so the connection pool is open.

Clients:
  sleep    no HTTP: asyncio.sleep(delay) per request. The ceiling of the window and event loop
           themselves (the last, partial round of N/c and timer lateness cost a few percent).
  curate   OpenAIBackend (aiohttp, JSON built and parsed by hand, our retry logic)
  openai   the official AsyncOpenAI client with max_retries=0 (what OpenAIBackend would cost if
           it wrapped that client)
  llm      curate.llm.LLM.generate over OpenAIBackend: what recipes use (its own window, the
           SQLite response cache written per response, usage totals; progress bar off)
  httpx    bare httpx.AsyncClient posts, to separate httpx's cost from the openai SDK's

Columns: ratio = req/s over c/d; CPU/req = this process's CPU per request (the server's excluded);
server time = the server's mean from a request's arrival to its answer written (d plus the
server's own lateness); vs server = req/s over c/(server time), i.e. what the client and transport
lose. Target: curate >= 0.95 of c/d at c=64, d=50 ms, 2000 requests on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from curate.llm.base import Request  # noqa: E402
from curate.llm.openai_backend import OpenAIBackend  # noqa: E402
from tests.servers.fault_server import fault_server  # noqa: E402

MODEL = "bench-model"


def make_requests(n: int, tag: str) -> list[Request]:
    return [
        Request.chat([{"role": "user", "content": f"{tag} request number {i}: say hi"}], max_tokens=16)
        for i in range(n)
    ]


async def window(
    send: Callable[[Request], Awaitable[bool]], requests: list[Request], concurrency: int
) -> tuple[float, int]:
    """Run `send` over `requests` with at most `concurrency` in flight; return (seconds, failures).

    A sliding window built as `concurrency` workers pulling from one iterator: a worker starts the
    next request the moment its last one finishes. (`--window semaphore`: one task per request
    behind a semaphore, which costs an extra event-loop hop per hand-over.)
    """
    failures = 0
    t0 = time.perf_counter()
    if WINDOW == "semaphore":
        sem = asyncio.Semaphore(concurrency)

        async def one(r: Request) -> None:
            nonlocal failures
            async with sem:
                failures += not await send(r)

        await asyncio.gather(*(one(r) for r in requests))
    else:
        todo = iter(requests)

        async def worker() -> None:
            nonlocal failures
            for r in todo:
                failures += not await send(r)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - t0, failures


WINDOW = "workers"


async def warm_then_time(send: Callable[[Request], Awaitable[bool]], args, tag: str) -> tuple[float, int]:
    """`concurrency` requests first, not timed (so the client's connection pool is open), then the
    timed `requests`: (seconds, failures) of those."""
    await window(send, make_requests(args.concurrency, "warmup"), args.concurrency)
    return await window(send, make_requests(args.requests, tag), args.concurrency)


async def bench_sleep(base_url: str, args) -> tuple[float, int]:
    """No HTTP at all: asyncio.sleep(d) in place of a request. The most this window and event loop can reach."""

    async def send(r: Request) -> bool:
        await asyncio.sleep(args.delay)
        return True

    return await window(send, make_requests(args.requests, "sleep"), args.concurrency)


async def bench_curate(base_url: str, args) -> tuple[float, int]:
    backend = OpenAIBackend(MODEL, base_url=base_url, api_key="bench", max_concurrency=args.concurrency, timeout=30)

    async def send(r: Request) -> bool:
        resp = await backend.acomplete(r)
        return resp.ok and bool(resp.text)

    try:
        return await warm_then_time(send, args, "curate")
    finally:
        await backend.aclose()


async def bench_openai(base_url: str, args) -> tuple[float, int]:
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0, timeout=30)

    async def send(r: Request) -> bool:
        try:
            out = await client.chat.completions.create(
                model=MODEL,
                messages=r.message_dicts(),
                max_tokens=r.max_tokens,
                temperature=r.temperature,
                top_p=r.top_p,
            )
        except openai.OpenAIError:
            return False
        return bool(out.choices[0].message.content)

    try:
        return await warm_then_time(send, args, "openai")
    finally:
        await client.close()


async def bench_httpx(base_url: str, args) -> tuple[float, int]:
    import httpx

    limits = httpx.Limits(max_connections=args.concurrency + 4, max_keepalive_connections=args.concurrency + 4)
    client = httpx.AsyncClient(limits=limits, timeout=30, headers={"Authorization": "Bearer bench"})

    async def send(r: Request) -> bool:
        body = {"model": MODEL, "messages": r.message_dicts(), "max_tokens": r.max_tokens}
        try:
            resp = await client.post(base_url + "/chat/completions", json=body)
        except httpx.HTTPError:
            return False
        return resp.status_code == 200 and bool(json.loads(resp.content)["choices"][0]["message"]["content"])

    try:
        return await warm_then_time(send, args, "httpx")
    finally:
        await client.aclose()


async def bench_llm(base_url: str, args) -> tuple[float, int]:
    """The real call site: LLM.generate (its own worker window, a response cache in a fresh SQLite
    file written per response, usage totals), with the progress bar off."""
    import tempfile

    from curate.llm import LLM, ResponseCache

    backend = OpenAIBackend(MODEL, base_url=base_url, api_key="bench", max_concurrency=args.concurrency, timeout=30)
    with tempfile.TemporaryDirectory() as tmp:
        llm = LLM(backend, cache=ResponseCache(os.path.join(tmp, "cache.sqlite")), show_progress=False)
        await asyncio.to_thread(llm.generate, make_requests(args.concurrency, "warmup-llm"))
        started = time.perf_counter()
        responses, usage = await asyncio.to_thread(llm.generate, make_requests(args.requests, "llm"))
        seconds = time.perf_counter() - started
        llm.close()
    return seconds, usage.failures


CLIENTS = {"curate": bench_curate, "llm": bench_llm, "openai": bench_openai, "httpx": bench_httpx, "sleep": bench_sleep}


def main() -> None:
    global WINDOW
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--delay", type=float, default=0.05)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--clients", default="sleep,curate,llm,openai", help=f"comma-separated, from {','.join(CLIENTS)}")
    ap.add_argument("--window", choices=["workers", "semaphore"], default="workers")
    ap.add_argument("--repeat", type=int, default=3, help="runs per client; the median run is shown")
    args = ap.parse_args()
    WINDOW = args.window

    c, d, n = args.concurrency, args.delay, args.requests
    ideal = c / d if d > 0 else float("inf")  # d=0 measures raw per-request overhead
    print(f"c={c} d={d * 1000:g}ms N={n} window={WINDOW}  ideal c/d = {ideal:.0f} req/s  (cpus: {os.cpu_count()})")
    print("median of", args.repeat, "runs; 'range' is the ratio's min-max over them")
    head = (
        ("req/s", 7),
        ("ratio", 6),
        ("range", 12),
        ("failed", 6),
        ("CPU/req", 9),
        ("server time", 11),
        ("vs server", 9),
    )
    print(f"{'client':8} " + " ".join(f"{h:>{w}}" for h, w in head))
    medians = {}
    with fault_server(delay=d, subprocess=True) as server:
        for name in args.clients.split(","):
            runs = []
            for _ in range(args.repeat):
                server.reset()
                cpu0 = time.process_time()
                seconds, failed = asyncio.run(CLIENTS[name](server.base_url, args))
                sent = n + (0 if name == "sleep" else c)  # the warm-up requests cost CPU too
                cpu_per_req = (time.process_time() - cpu0) / sent
                served = server.stats(per_prompt=False)["mean_service_s"]
                runs.append((n / seconds, failed, cpu_per_req, served))
            runs.sort(key=lambda r: r[0])
            rate, failed, cpu_per_req, served = runs[len(runs) // 2]
            medians[name] = rate / ideal
            span = f"{runs[0][0] / ideal:.3f}-{runs[-1][0] / ideal:.3f}"
            # Server time: its mean from a request's arrival to the last byte of the answer, so
            # "vs server" = rate / (c / server time) leaves out the server answering later than d.
            srv = f"{served * 1e3:9.2f}ms" if served else f"{'-':>11}"
            vs = f"{rate / (c / served):9.3f}" if served else f"{'-':>9}"
            print(
                f"{name:8} {rate:7.0f} {rate / ideal:6.3f} {span:>12} {failed:6d} {cpu_per_req * 1e3:7.3f}ms {srv} {vs}"
            )
    if "curate" in medians and d > 0:
        verdict = "met" if medians["curate"] >= 0.95 else "NOT met"
        print(f"goal: curate ratio >= 0.95 of c/d: {verdict} ({medians['curate']:.3f})")
        if "sleep" in medians:
            print(f"curate / no-HTTP ceiling of this window and event loop: {medians['curate'] / medians['sleep']:.3f}")


if __name__ == "__main__":
    main()
