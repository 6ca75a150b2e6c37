"""Work on this machine's cores from one process: polars, pyarrow and numpy release the GIL in
their heavy calls, so threads working different parts run on different cores (measured at 1M
rows: bench/README.md, "1M and 10M rows"). The local engine's `engine.workers` sets how many."""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def map_in_order(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """fn(item) for each item, in the items' order, `workers` at a time in threads. Items are
    taken from `items` (on the caller's thread) only as results are taken, so a generator of
    frames holds at most `workers` + 1 of them: memory does not grow with the number of items.
    An exception raised by fn reaches the caller at that item, as in a plain loop; the items
    already started finish first. One worker is the plain loop, with no thread."""
    if workers <= 1:
        yield from map(fn, items)
        return
    pending: deque[Future] = deque()
    with ThreadPoolExecutor(workers) as pool:
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) > workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def at_once(calls: dict[str, Callable[[], R]], workers: int) -> dict[str, R]:
    """Run independent calls `workers` at a time, in the order given (longest first is best), and
    return {name: result}. The first exception, in that order, is raised once every call is done."""
    if workers <= 1:
        return {name: call() for name, call in calls.items()}
    with ThreadPoolExecutor(min(workers, len(calls))) as pool:
        futures = {name: pool.submit(call) for name, call in calls.items()}
        return {name: future.result() for name, future in futures.items()}
