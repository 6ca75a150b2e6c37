"""The hot paths of a curation run, vectorised (issue 12 part 4) against the row-by-row code they
replaced, loaded from its git revision and run in the same process on the same rows.

    python bench/bench_hotpaths.py [--rows 200000] [--base REV] [--repeat 1] [--memory] [--compare]

Rows: Alpaca-style (instruction / input / output) from ../shared/data/nuggets_alpaca_gpt4, drawn
with replacement and shuffled (seed 0) to --rows, written once as JSON Lines. Half the rows get a
`reasoning` (to time the inline wrapper) and ranked `candidates` (the preference format).

Stages, each timed old then new, best of --repeat: reading the file into records
(`read_records`: the reader and `to_records`, with the ids, which stay a Python loop here and are
timed on their own), `split_invalid`, the heuristics' scores (`Heuristics.compute_scores`), and
`convert` to each format. Printed: seconds of each, old / new, and whether the outputs are
identical (frames equal; the heuristics' scores column by column; `convert` through the parquet
and jsonl writers, byte for byte).
--memory: each stage of each revision in a fresh process; its peak RSS above the RSS it had
with its input ready (what the stage itself adds).
--compare: the heuristics of both revisions on every public JSON Lines set of ../shared/data:
rows whose scores or decision changed, with the rows whose decision changed.
The data are non-commercial (Alpaca-GPT4): used here only, never copied into the package.
"""

from __future__ import annotations

import argparse
import gc
import glob
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))

import revisions  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CURATE_SHARED_DATA") or ROOT.parent / "shared" / "data")
SOURCE = SHARED / "nuggets_alpaca_gpt4" / "alpaca_gpt4_bad_scored.jsonl"
# The last commit before the hot paths were vectorised.
BASE = "45cd29632b217618ecf6266c46c5d441898e0196"
MODULES = ("curate.io", "curate.records", "curate.formats", "filters.heuristics")
FORMATS = ("messages", "alpaca", "sharegpt", "prompt_completion", "preference")
STAGES = ("read", "split_invalid", "heuristics", *(f"convert:{f}" for f in FORMATS))


def make_rows(n: int, path: Path) -> None:
    """n Alpaca-style rows drawn from the NUGGETS Alpaca-GPT4 rows, as JSON Lines."""
    src = [json.loads(line) for line in SOURCE.open(encoding="utf-8")]
    rng = random.Random(0)
    with path.open("w", encoding="utf-8") as fh:
        for _ in range(n):
            r = src[rng.randrange(len(src))]
            fh.write(json.dumps({"instruction": r["instruction"], "input": r["input"], "output": r["output"]}) + "\n")


def with_extras(records: pl.DataFrame) -> pl.DataFrame:
    """Half the rows with reasoning, every row with three ranked candidates (other rows' answers)."""
    answers = records["messages"].list.last().struct.field("content")
    n = records.height
    cands = pl.DataFrame({
        "a": answers, "b": answers.shift(1).fill_null("b"), "c": answers.shift(2).fill_null("c"),
        "i": pl.int_range(n, eager=True),
    }).select(pl.concat_list(
        pl.struct(content=pl.col("a"), score=(pl.col("i") % 7).cast(pl.Float64)),
        pl.struct(content=pl.col("b"), score=(pl.col("i") % 5).cast(pl.Float64)),
        pl.struct(content=pl.col("c"), score=pl.lit(None, dtype=pl.Float64)),
    ).alias("candidates"))
    reasoning = pl.when(pl.int_range(n) % 2 == 0).then(pl.lit("First, read the task. Then answer it.")).otherwise(None)
    return records.with_columns(reasoning.alias("reasoning"), cands["candidates"])


def stage_fn(mods: dict, stage: str, path: Path, records: pl.DataFrame):
    """A function running `stage` with one revision's modules."""
    if stage == "read":
        return lambda: mods["curate.io"].read_records(path, source="bench")
    if stage == "split_invalid":
        return lambda: mods["curate.records"].split_invalid(records, str(path))
    if stage == "heuristics":
        return lambda: mods["filters.heuristics"].Heuristics().compute_scores(records)
    fmt = stage.split(":")[1]
    return lambda: mods["curate.formats"].convert(records, fmt)


def best_of(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def file_bytes(df: pl.DataFrame, tmp: Path, io_mod) -> tuple[bytes, bytes]:
    io_mod.write_parquet(df, tmp / "x.parquet")
    io_mod.write_jsonl(df, tmp / "x.jsonl")
    return (tmp / "x.parquet").read_bytes(), (tmp / "x.jsonl").read_bytes()


def same(stage: str, old, new, tmp: Path, io_mod) -> str:
    if stage == "split_invalid":
        return "identical" if all(a.equals(b) for a, b in zip(old, new)) else "DIFFERENT"
    if stage == "heuristics":
        cols = [c for c in old.columns if c.startswith("score_")]
        changed = {c: int((old[c] != new[c]).sum()) for c in cols}
        return "identical" if not any(changed.values()) else "rows changed: " + ", ".join(
            f"{c.removeprefix('score_heuristics_')} {k}" for c, k in changed.items())
    if stage.startswith("convert"):
        return "identical files" if file_bytes(old, tmp, io_mod) == file_bytes(new, tmp, io_mod) else "DIFFERENT"
    return "identical" if old.equals(new) else "DIFFERENT"


def status_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (the peak since the last reset) of this process, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def child(args) -> None:
    """One stage of one revision in this fresh process; prints the peak RSS it added."""
    mods = revisions.load(None if args.impl == "new" else args.base, *MODULES)
    path = Path(args.path)
    records = None if args.stage == "read" else with_extras(mods["curate.io"].read_records(path, source="bench"))
    fn = stage_fn(mods, args.stage, path, records)
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # the peak RSS starts again from the RSS now (Linux)
    before = status_mb("VmRSS")
    fn()
    print(json.dumps({"added_mb": max(status_mb("VmHWM") - before, 0.0), "before_mb": before}))


def memory(args, path: Path) -> None:
    print("\npeak RSS a stage adds (MB; each in a fresh process, its input already in memory):")
    print(f"  {'stage':24s} {'old':>8s} {'new':>8s}")
    for stage in STAGES:
        got = {}
        for impl in ("old", "new"):
            cmd = [sys.executable, __file__, "--child", "--stage", stage, "--impl", impl, "--path", str(path),
                   "--base", args.base]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            got[impl] = json.loads(out)["added_mb"]
        print(f"  {stage:24s} {got['old']:8.0f} {got['new']:8.0f}")


def compare_shared(old: dict, new: dict) -> None:
    """Heuristics of both revisions on every public JSON Lines set that reads as records."""
    old_h, new_h = old["filters.heuristics"], new["filters.heuristics"]
    read_records, message_text = new["curate.io"].read_records, new["curate.records"].message_text
    print("\nheuristics, old vs new, on ../shared/data (rows whose score / decision changed):")
    flips = []
    for f in sorted(glob.glob(str(SHARED / "**" / "*.jsonl*"), recursive=True)):
        try:
            df = read_records(f)
        except new["curate.io"].CurateError:
            continue  # no text column to map (named ones are read with prompt=...)
        a, b = old_h.Heuristics().compute_scores(df), new_h.Heuristics().compute_scores(df)
        cols = old_h.Heuristics().score_columns()
        changed = {c: int((a[c] != b[c]).sum()) for c in cols}
        keep_a, reason_a = old_h.Heuristics().decide(a)
        keep_b, reason_b = new_h.Heuristics().decide(b)
        flipped = (keep_a != keep_b).arg_true().to_list()
        name = str(Path(f).relative_to(SHARED))
        print(f"  {name}: {df.height} rows; " + ", ".join(f"{c.split('_', 2)[2]} {k}" for c, k in changed.items())
              + f"; decision {len(flipped)}")
        for i in flipped:
            flips.append((name, reason_a[i], reason_b[i], a[cols[1]][i], b[cols[1]][i],
                          message_text(df[i], "prompt")[0], message_text(df[i], "response")[0]))
    for name, ra, rb, ca, cb, prompt, response in flips:
        print(f"  decision changed, {name}: {ra or 'kept'} -> {rb or 'kept'} (prompt copy {ca:.2f} -> {cb:.2f})\n"
              f"    prompt:   {prompt[:110]!r}\n    response: {response[:110]!r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--base", default=BASE, help="git revision of the row-by-row code")
    ap.add_argument("--repeat", type=int, default=1, help="timed runs of each (best reported)")
    ap.add_argument("--memory", action="store_true", help="also peak RSS per stage, in fresh processes")
    ap.add_argument("--compare", action="store_true", help="also the heuristics on every ../shared/data set")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--stage", help=argparse.SUPPRESS)
    ap.add_argument("--impl", help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    old = revisions.load(args.base, *MODULES)
    new = revisions.load(None, *MODULES)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        path = tmp / "alpaca.jsonl"
        make_rows(args.rows, path)
        print(f"{args.rows} Alpaca-style rows ({path.stat().st_size / 1e6:.0f} MB of JSON Lines); old = {args.base[:10]}, "
              f"new = this working tree; {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start")
        print(f"  {'stage':24s} {'old s':>8s} {'new s':>8s} {'old/new':>8s}  outputs")
        records = None
        for stage in STAGES:
            t_old, out_old = best_of(stage_fn(old, stage, path, records), args.repeat)
            t_new, out_new = best_of(stage_fn(new, stage, path, records), args.repeat)
            print(f"  {stage:24s} {t_old:8.2f} {t_new:8.2f} {t_old / t_new:8.1f}  "
                  f"{same(stage, out_old, out_new, tmp, new['curate.io'])}", flush=True)
            if stage == "read":
                records = with_extras(out_new)
                msgs = records["messages"].to_list()
                content_id = new["curate.records"].content_id
                t = time.perf_counter()
                [content_id(m) for m in msgs]
                print(f"    (ids in `read`, content_id per row in both: {time.perf_counter() - t:.2f} s of it)")
        print(f"load average {os.getloadavg()[0]:.1f} at the end")
        if args.memory:
            memory(args, path)
    if args.compare:
        compare_shared(old, new)


if __name__ == "__main__":
    main()
