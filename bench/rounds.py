"""What the side-by-side benches share (bench_llama.py, bench_scorers.py): rounds in which every
side runs once, a different side first each round, so that none always meets the machine first (a
neighbour's burst, a cold cache); and a line a round with the load average, since on a shared
machine a figure means little without it."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any


def load_avg() -> str:
    return "load average " + " / ".join(f"{x:.2f}" for x in os.getloadavg())


def in_turns(rounds: int, sides: dict[str, Callable[[int], Any]], figures: Callable[[str, Any], str],
             then: dict[str, Callable[[int], Any]] | None = None) -> dict[str, list]:
    """Run every side once a round, side r mod n first in round r, each called with the round
    number; then the `then` sides, in their order. After each round, print `figures(side, result)`
    for every side and the load average. Returns each side's results in round order."""
    every = {**sides, **(then or {})}
    results: dict[str, list] = {name: [] for name in every}
    names = list(sides)
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k] + list(then or {}):
            results[name].append(every[name](r))
        print(f"  round {r + 1}: " + ", ".join(figures(n, v[-1]) for n, v in results.items())
              + f"  ({load_avg()})", flush=True)
    return results
