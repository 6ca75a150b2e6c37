"""Work done once (issue 11 part 6): MinHashDedup.split of this working tree against another git
revision, loaded side by side in one process (bench/revisions.py), and what ids cost on read.

    python bench/bench_split_read.py [--base main] [--repeat 5]

- MinHashDedup(field="prompt").split on the 55k T0 prompts, scored afresh; and split with a
  stricter threshold on the same banding (0.9, 16x8) on rows scored at 0.8, which re-clusters the
  stored links. Counted: connected_components calls per split; timed: the split, both revisions
  alternating so that the machine's shared load falls on both alike; checked: same kept and
  rejected rows, same details. Also timed alone: what split does once the scores are there
  (base: decide, then explain on every row; working tree: decide_and_explain).
- read_records on the same rows (a 15.8 MB .jsonl.gz), both revisions, and the share of it that
  ids take: `content_id` per row against `content_ids`, which builds the same canonical JSON for
  the whole column with polars (the reader's since issue 12: at 1M rows the row loop took 6 s).
  Both must give the same ids on every /work/shared/data file the reader takes.
Printed: median and best wall times, the ratio of median process CPU times (the steadiest under
other processes' load), the counts and the checks.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import revisions  # noqa: E402
from curate.records import content_id, content_ids  # noqa: E402

DATA = Path("/work/shared/data")
T0 = DATA / "dedup_t0_templates/t0_train_50k_per_template.jsonl.gz"


def alternate(fns: dict, repeat: int) -> dict[str, dict[str, list[float]]]:
    """Wall and process CPU times of each function, run in alternation (neither always first)."""
    times = {name: {"wall": [], "cpu": []} for name in fns}
    for i in range(repeat):
        for name in (list(fns) if i % 2 == 0 else list(fns)[::-1]):
            gc.collect()
            t, c = time.perf_counter(), time.process_time()
            fns[name]()
            times[name]["wall"].append(time.perf_counter() - t)
            times[name]["cpu"].append(time.process_time() - c)
    return times


def show(what: str, times: dict) -> None:
    med = {k: float(np.median(v["wall"])) for k, v in times.items()}
    best = {k: min(v["wall"]) for k, v in times.items()}
    cpu = {k: float(np.median(v["cpu"])) for k, v in times.items()}
    print(f"{what}: base median {med['base']:.3f} s (best {best['base']:.3f}), working tree median {med['here']:.3f} s "
          f"(best {best['here']:.3f}); here/base: median {med['here'] / med['base']:.2f}, best "
          f"{best['here'] / best['base']:.2f}, median CPU {cpu['here'] / cpu['base']:.2f}")


def count_calls(module, name: str) -> list[int]:
    calls: list[int] = []
    real = getattr(module, name)
    setattr(module, name, lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="main", help="git revision to compare against")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs of each (median reported)")
    args = ap.parse_args()
    mods = {"base": revisions.load(args.base, "curate.io", "filters.dedup"),
            "here": revisions.load(None, "curate.io", "filters.dedup")}
    io = {k: m["curate.io"] for k, m in mods.items()}
    dedup = {k: m["filters.dedup"] for k, m in mods.items()}
    print(f"base {args.base} vs working tree; {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")

    # Ids: the vectorised builder gives the package's ids on every data file the reader takes.
    files = sorted(p for p in DATA.rglob("*") if p.suffix in (".jsonl", ".gz", ".json", ".csv") and "raw" not in p.parts)
    rows = 0
    for path in files:
        try:
            df = io["here"].read_records(path)
        except Exception as exc:  # a file not in a record shape (eval sets with nested turns, anchors)
            print(f"  skipped {path.relative_to(DATA)}: {str(exc).splitlines()[0][:90]}")
            continue
        assert [content_id(m) for m in df["messages"].to_list()] == df["id"].to_list(), f"ids differ on {path}"
        rows += len(df)
    print(f"vectorised ids identical to content_id on {rows:,} rows of {len(files)} files")

    read = alternate({k: (lambda k=k: io[k].read_records(T0)) for k in io}, args.repeat)
    show("read_records, 55k T0 rows", read)
    df = io["here"].read_records(T0)
    messages = df["messages"].to_list()  # the Python lists the reader hashes row by row
    ids = alternate({"base": lambda: [content_id(m) for m in messages],
                     "here": lambda: content_ids(df["messages"])}, args.repeat)
    show("ids of the 55k T0 rows ('base' = content_id per row, 'working tree' = content_ids)", ids)
    cpu = {k: float(np.median(v["cpu"])) for k, v in ids.items()}
    print(f"ids per row take {cpu['base'] / np.median(read['here']['cpu']):.0%} of read_records' CPU time; "
          f"vectorised, {cpu['here'] / np.median(read['here']['cpu']):.0%}")

    calls = {k: count_calls(dedup[k], "connected_components") for k in dedup}
    fresh = {k: dedup[k].MinHashDedup(field="prompt") for k in dedup}
    scored = fresh["here"].score(df)
    stricter = {k: dedup[k].MinHashDedup(field="prompt", threshold=0.9, bands=16, rows=8) for k in dedup}
    for label, filters, frame in (("split, scoring", fresh, df), ("split at 0.9 on stored scores", stricter, scored)):
        out = {}
        for k, f in filters.items():
            calls[k].clear()
            out[k] = f.split(frame)
            print(f"{label}: {k} calls connected_components {len(calls[k])} time(s), rejects {len(out[k][1]):,} rows")
        same = all(out["base"][i].drop("detail", strict=False).equals(out["here"][i].drop("detail", strict=False))
                   for i in (0, 1)) and out["base"][1]["detail"].equals(out["here"][1]["detail"])
        print(f"{label}: same kept and rejected rows, same details: {same}")
        show(f"{label}, {len(frame):,} T0 prompts", alternate({k: (lambda f=f: f.split(frame)) for k, f in filters.items()},
                                                              args.repeat))
    # What split does after scoring: decide, then explain on every row (base) against one
    # decide_and_explain reading the clusters scoring stored, details for rejected rows only.
    after = {"base": lambda: (fresh["base"].decide(scored), fresh["base"].explain(scored)),
             "here": lambda: fresh["here"].decide_and_explain(scored, just_scored=True)}
    show(f"split after scoring (decide + explain), {len(scored):,} T0 prompts", alternate(after, 5 * args.repeat))
    print(f"load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
