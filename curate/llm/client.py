"""`LLM`: the one call site generators and judges use.

`llm.generate(requests)` returns one Response per Request, in order. Cache look-up, a sliding
window of in-flight requests, per-response cache writes, usage and cost totals and the progress
bar are all handled here; rate limits, retries and timeouts belong to the backend. With a batch
route (`teacher.batch`, curate.llm.batch) the requests the cache lacks go through a provider's
batch API instead of the window, so every generator gets it without a change.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from curate.llm.base import Backend, Request, Response
from curate.llm.cache import ResponseCache

if TYPE_CHECKING:
    from curate.llm.batch import BatchRoute

log = logging.getLogger(__name__)


@dataclass
class Price:
    """USD per million tokens, and where the figures came from (a recipe's `teacher.price`, a price
    table, a local model): curate/pricing.py decides, the report shows `source`."""

    input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0
    source: str = "not priced"
    known: bool = True  # False: no price was found, so the cost counted (0) is not the real cost

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_mtok + completion_tokens * self.output_per_mtok) / 1e6

    def as_dict(self) -> dict:
        return {"input_per_mtok": self.input_per_mtok, "output_per_mtok": self.output_per_mtok,
                "source": self.source, "known": self.known}


@dataclass
class Usage:
    requests: int = 0  # requests asked for
    sent: int = 0  # requests that went to the backend (not served by the cache)
    cache_hits: int = 0
    failures: int = 0  # requests that failed for good in this run (the next run sends them again) ...
    permanent_failures: int = 0  # ... except these, which the server refused as bad requests (Response.permanent)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    seconds: float = 0.0
    batched: int = 0  # of `sent`, the requests that went through a batch route (curate.llm.batch)

    def add(self, other: "Usage") -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_dict(self) -> dict:
        return {k: round(v, 6) if isinstance(v, float) else v for k, v in self.__dict__.items()}


@dataclass
class LLM:
    backend: Backend
    cache: ResponseCache | None = None
    price: Price = field(default_factory=Price)
    show_progress: bool = True
    usage: Usage = field(default_factory=Usage)  # totals over this object's life
    batch: BatchRoute | None = None  # send what the cache lacks through a batch API (curate.llm.batch)

    @property
    def model(self) -> str:
        return self.backend.model

    def generate(self, requests: Iterable[Request], label: str = "generate") -> tuple[list[Response], Usage]:
        """Answer every request (from the cache where possible). Failures come back as `Response.error`."""
        requests = list(requests)
        started = time.perf_counter()
        keys = [r.cache_key(self.backend.name, self.backend.model) for r in requests]
        found = self.cache.get_many(list(set(keys))) if self.cache else {}
        # Identical requests (same key) are sent once and share the answer.
        todo: dict[str, Request] = {}
        for key, req in zip(keys, requests):
            if key not in found and key not in todo:
                todo[key] = req
        done = len(requests) - len(todo)
        if not todo:
            fresh = {}
        elif self.batch is not None:
            fresh = self.batch.run(todo, label, done=done, total=len(requests))
        else:
            self._warn_in_flight(todo, label)
            fresh = _run_async(self._send_all(todo, done, len(requests), label))
        responses = [found.get(k) or fresh[k] for k in keys]
        usage = Usage(requests=len(requests), sent=len(todo), cache_hits=done,
                      batched=len(todo) if self.batch is not None else 0)
        for r in responses:
            usage.failures += not r.ok
            usage.permanent_failures += r.permanent
            usage.prompt_tokens += r.prompt_tokens
            usage.completion_tokens += r.completion_tokens
        usage.cost = self.price.cost(usage.prompt_tokens, usage.completion_tokens)
        usage.seconds = time.perf_counter() - started
        self.usage.add(usage)
        return responses, usage

    def _warn_in_flight(self, todo: dict[str, Request], label: str) -> None:
        """Requests an earlier run sent in a batch that is still out are about to be paid for twice."""
        flying = self.cache.in_flight(list(todo)) if self.cache is not None else {}
        if flying:
            batches = sorted({f.batch_id or f.file_id for f in flying.values()})
            log.warning("%s: %d request(s) are also in batch(es) %s sent by an earlier run with teacher.batch; they are "
                        "sent again now and paid twice unless those batches are cancelled (or set teacher.batch to "
                        "wait for them)", label, len(flying), ", ".join(batches[:5]))

    async def _send_all(self, todo: dict[str, Request], done: int, total: int, label: str) -> dict[str, Response]:
        """Keep `max_concurrency` requests in flight: a worker takes the next request as soon as one finishes."""
        results: dict[str, Response] = {}
        pending = iter(todo.items())
        tokens = 0
        progress = _progress(disable=not self.show_progress)
        with progress:
            task = progress.add_task(label, total=total, completed=done, tokens=0, rate=0.0)
            started = time.perf_counter()

            async def worker():
                nonlocal tokens
                for key, req in pending:  # shared iterator: each item goes to exactly one worker
                    try:
                        resp = await self.backend.acomplete(req)
                    except Exception as exc:  # a backend bug must not take the run down: it becomes a reject
                        resp = Response(error=f"{type(exc).__name__}: {exc}")
                    if self.cache is not None:
                        self.cache.put(key, resp)
                    results[key] = resp
                    tokens += resp.prompt_tokens + resp.completion_tokens
                    rate = len(results) / max(time.perf_counter() - started, 1e-9)
                    progress.update(task, advance=1, tokens=tokens, rate=rate)

            workers = max(1, min(self.backend.max_concurrency, len(todo)))
            try:
                await asyncio.gather(*(worker() for _ in range(workers)))
            finally:
                await self.backend.aclose()
        return results

    def close(self) -> None:
        self.backend.close()
        if self.batch is not None:
            self.batch.close()
        if self.cache is not None:
            self.cache.close()


def _progress(disable: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:.1f} req/s"),
        TextColumn("[cyan]{task.fields[tokens]} tok"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        disable=disable,
        transient=False,
    )


def _run_async(coro):
    """Run a coroutine to completion, also from inside a running loop (a Jupyter notebook)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict = {}

    def target():
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]
