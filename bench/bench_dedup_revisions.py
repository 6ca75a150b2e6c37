"""MinHash dedup speed of this working tree against another git revision, in one process.

    python bench/bench_dedup_revisions.py [--base main] [--limit N] [--repeat 7] [--truncate 10-40]

Loads `filters.dedup` (and what it imports from `curate`) twice: once from `git archive <base>`
unpacked in a temporary folder, once from this working tree. Both then cluster the same T0
prompts (`dedup.cluster`, text in -> cluster labels out, the default settings) in alternation,
so the machine's shared load falls on both alike. Printed: the median and best wall time of each
and their ratios, the ratio of median process CPU times (the steadiest under other processes'
load), and whether the two give the same clusters.
A refactor should print ratios near 1.00.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))

import revisions  # noqa: E402

DATA = Path("/work/shared/data/dedup_t0_templates/t0_train_50k_per_template.jsonl.gz")


def truncate(texts: pl.Series, lo: int, hi: int, seed: int = 0) -> pl.Series:
    """Each text cut to its first k words, k uniform in [lo, hi] (seeded)."""
    rng = np.random.default_rng(seed)
    ks = rng.integers(lo, hi + 1, len(texts))
    return pl.Series("text", [" ".join(t.split()[:k]) for t, k in zip(texts.to_list(), ks)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="main", help="git revision to compare against")
    ap.add_argument("--limit", type=int, default=None, help="use the first N prompts")
    ap.add_argument("--repeat", type=int, default=7, help="timed runs of each (median reported)")
    ap.add_argument("--truncate", default=None, help="LO-HI: cut each prompt to LO..HI words")
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--threads", type=int, default=None, help="n_jobs of cluster() (default: one per core)")
    args = ap.parse_args()

    texts = pl.read_ndjson(DATA)["prompt"]
    if args.limit:
        texts = texts.head(args.limit)
    if args.truncate:
        lo, hi = map(int, args.truncate.split("-"))
        texts = truncate(texts, lo, hi)
    base = revisions.load(args.base, "filters.dedup")["filters.dedup"]
    here = revisions.load(None, "filters.dedup")["filters.dedup"]
    print(f"{len(texts)} texts, {texts.str.len_bytes().sum() / 1e6:.1f} MB; base {args.base} vs working tree; "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")

    runs = {"base": (base, []), "here": (here, [])}
    cpu = {"base": [], "here": []}
    labels = {}
    for name, (mod, _) in runs.items():  # warm-up, and the result to compare
        labels[name] = mod.cluster(texts, threshold=args.threshold, n_jobs=args.threads)
    for i in range(args.repeat):
        for name in (["base", "here"] if i % 2 == 0 else ["here", "base"]):  # neither always goes first
            mod, times = runs[name]
            gc.collect()
            t, c = time.perf_counter(), time.process_time()
            mod.cluster(texts, threshold=args.threshold, n_jobs=args.threads)
            times.append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
    med = {name: float(np.median(times)) for name, (_, times) in runs.items()}
    best = {name: min(times) for name, (_, times) in runs.items()}
    for name in runs:
        print(f"{name:5} median {med[name]:.3f} s, best {best[name]:.3f} s ({len(texts) / best[name]:,.0f} texts/s)")
    print(f"working tree / base time: median {med['here'] / med['base']:.3f}, best {best['here'] / best['base']:.3f}")
    cpu_med = {name: float(np.median(v)) for name, v in cpu.items()}
    print(f"working tree / base CPU time (process, all threads): median {cpu_med['here'] / cpu_med['base']:.3f} "
          f"({cpu_med['base']:.3f} s, {cpu_med['here']:.3f} s)")
    same = np.array_equal(labels["base"], labels["here"])
    kept = {k: int((v == np.arange(len(v))).sum()) for k, v in labels.items()}
    print(f"same clusters: {same} (rows kept: base {kept['base']:,}, working tree {kept['here']:,}); "
          f"load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
