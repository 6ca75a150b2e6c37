"""The local engine at scale: the filter-only recipe on 200k, 1M and 10M Alpaca-style rows.

    python bench/bench_scale.py [--rows 200000 1000000 10000000] [--part-rows 100000]
                                [--work DIR] [--resume 1000000] [--baseline REV] [--ray 2]
                                [--workers N] [--compare-workers W] [--part-compression zstd]

Builds (once, cached in --work) a deterministic N-row Alpaca-style Parquet file from the texts in
../shared/data: each row's instruction is a real instruction with a sentence of another appended,
its input (a third of the rows) a real sentence, its answer 2-7 real answer sentences, so that
rows are distinct and unrelated; planted among them, against earlier rows: 2% exact copies (half
of them upper-cased: the same words), 3% near copies (a word or a sentence added to the answer),
0.2% instructions copied from the eval prompt sets (AlpacaEval, Vicuna, MT-Bench, LIMA, WizardLM,
Self-Instruct user-oriented), 0.5% empty answers, 0.5% refusals, 0.5% one-word answers.

Then runs recipes/curate-existing.yaml (exact dedup, heuristics, MinHash at 0.7 on word 3-grams,
13-gram decontamination against those eval sets, messages output with a 10% validation split) on
each size through the CLI in a fresh process, and prints wall time and peak RSS (the child's
largest stage peak; ru_maxrss from wait4 without a profile), the load average around it, each stage's time and peak memory (the
engine's CURATE_PROFILE) and the dedup stages' memory per row. --resume N kills a run of N rows
with SIGKILL in the middle of its MinHash step, reruns it, counts the parts each step redid and
checks the output against the uninterrupted run's, byte for byte. --baseline REV runs the same
sizes (those that fit) with git revision REV's code, for a same-machine ratio. --ray CPUS runs each
size again on the Ray engine (a local cluster of CPUS CPUs, started once) and prints the ratio of
wall times and whether the output is byte-identical; its peak RSS is the driver's alone.
--workers N --compare-workers W runs each size with N and then W parts worked at once
(engine.workers) and prints the ratios of wall and CPU time and memory, and whether the output is the same.
--part-compression sets engine.part_compression (default uncompressed: a 10M run's parts take
~45 GB of disk, ~20 GB with zstd).
The machine's other jobs change the times: rerun on an idle machine for the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CURATE_SHARED_DATA") or ROOT.parent / "shared" / "data")
EVALS = ["alpaca_eval_805.jsonl", "vicuna_bench_question_80.jsonl", "mt_bench_question_80.jsonl",
         "lima_test_300.jsonl", "wizardlm_testset_218.jsonl", "selfinstruct_user_oriented_252.jsonl"]
CHUNK = 500_000  # rows generated at a time
SENTENCE = re.compile(r"(?<=[.!?])\s+")


# The data -------------------------------------------------------------------------------------
def pools() -> tuple[pl.Series, pl.Series, pl.Series]:
    """(instructions, answer sentences, eval prompts), distinct texts from ../shared/data."""
    from curate.io import read_table

    instructions, answers = [], []
    for path, ins, out in [("quality_cherry_alpaca_ifd/cherry_alpaca_5_percent.jsonl", "instruction", "output"),
                           ("nuggets_alpaca_gpt4/alpaca_gpt4_bad_scored.jsonl", "instruction", "output"),
                           ("gsm8k_train/train.jsonl", "question", "answer"),
                           ("math_test4500/math_test_minus_math500.jsonl", "problem", "solution")]:
        df = read_table(DATA / path)
        if ins:
            instructions += df[ins].cast(pl.String).drop_nulls().to_list()
        answers += [s for text in df[out].cast(pl.String).drop_nulls().to_list() for s in SENTENCE.split(text) if len(s) > 20]
    evals = []
    for name in EVALS:
        df = read_table(DATA / "eval_prompts" / name)
        col = next(c for c in ("instruction", "prompt", "turns", "text", "conversations", "Instruction") if c in df.columns)
        values = df[col].to_list()
        evals += [v[0] if isinstance(v, list) else v for v in values if v]
    uniq = lambda xs: pl.Series(sorted(set(x.strip() for x in xs if isinstance(x, str) and x.strip())))  # noqa: E731
    return uniq(instructions), uniq(answers), uniq(evals)


def build(rows: int, path: Path, seed: int = 0) -> dict:
    """Write the N-row set (see the module docstring); returns what was planted."""
    import pyarrow.parquet as pq

    ins, ans, evals = pools()
    planted = {"exact": 0, "near": 0, "eval": 0, "empty": 0, "refusal": 0, "short": 0}
    writer = None
    tmp = path.with_suffix(".tmp")
    for c, lo in enumerate(range(0, rows, CHUNK)):
        n = min(CHUNK, rows - lo)
        rng = np.random.default_rng([seed, c])
        k = rng.integers(2, 8, n)
        cols = {f"r{j}": ans.gather(rng.integers(0, len(ans), n)) for j in range(7)}
        df = pl.DataFrame({"a": ins.gather(rng.integers(0, len(ins), n)), "b": ans.gather(rng.integers(0, len(ans), n)),
                           "i": ans.gather(rng.integers(0, len(ans), n)), "k": k, "has_input": rng.random(n) < 1 / 3, **cols})
        df = df.select(
            pl.concat_str("a", "b", separator=" ").alias("instruction"),
            pl.when("has_input").then(pl.col("i")).otherwise(pl.lit("")).alias("input"),
            pl.concat_str([pl.when(pl.col("k") > j).then(pl.col(f"r{j}")) for j in range(7)], separator=" ",
                          ignore_nulls=True).alias("output"))
        kind = rng.choice(7, n, p=[0.02, 0.03, 0.002, 0.005, 0.005, 0.005, 1 - 0.067])
        kind[0] = 6
        src = (rng.random(n) * np.arange(n)).astype(np.int64)  # an earlier row of the chunk
        inst, inp, out = (df[c].to_list() for c in ("instruction", "input", "output"))
        extra = ans.gather(rng.integers(0, len(ans), n)).to_list()
        ev = evals.gather(rng.integers(0, len(evals), n)).to_list()
        for i in np.flatnonzero(kind < 6).tolist():
            j = int(src[i])
            if kind[i] == 0:  # exact copy, half of them upper-cased
                inst[i], inp[i], out[i] = inst[j], inp[j], (out[j].upper() if i % 2 else out[j])
                planted["exact"] += 1
            elif kind[i] == 1:  # near copy: a word or a sentence more in the answer
                inst[i], inp[i], out[i] = inst[j], inp[j], out[j] + (" Indeed." if i % 2 else " " + extra[i])
                planted["near"] += 1
            elif kind[i] == 2:
                inst[i], inp[i] = ev[i], ""
                planted["eval"] += 1
            elif kind[i] == 3:
                out[i] = ""
                planted["empty"] += 1
            elif kind[i] == 4:
                out[i] = "I'm sorry, but I cannot help with that request."
                planted["refusal"] += 1
            else:
                out[i] = "Yes."
                planted["short"] += 1
        table = pl.DataFrame({"instruction": inst, "input": inp, "output": out}).to_arrow()
        writer = writer or pq.ParquetWriter(tmp, table.schema, compression="zstd")
        writer.write_table(table, row_group_size=100_000)
    writer.close()
    tmp.rename(path)
    return planted


# Runs -----------------------------------------------------------------------------------------
def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def run(data: Path, out: Path, part_rows: int, code: Path = ROOT, kill_when=None, extra: tuple[str, ...] = (),
        workers: int | None = None) -> dict:
    """The CLI on the filter-only recipe, in a fresh process: wall time, peak RSS, load, stages.
    `extra`: more CLI options (--engine ray --address ...)."""
    profile = out.with_suffix(".profile.json")
    profile.unlink(missing_ok=True)
    evals = "[" + ", ".join(str(DATA / "eval_prompts" / e) for e in EVALS) + "]"
    cmd = [sys.executable, "-m", "curate.cli", "run", str(code / "recipes" / "curate-existing.yaml"), "--out", str(out),
           "--quiet", "-o", f"inputs.0.path={data}", "-o", "inputs.0.source=bench", "-o", f"steps.decontaminate.eval_sets={evals}"]
    if code == ROOT:  # a revision before parts has no engine settings
        cmd += ["-o", f"engine.part_rows={part_rows}"] + (["-o", f"engine.workers={workers}"] if workers else [])
    cmd += list(extra)
    env = {**os.environ, "PYTHONPATH": str(code), "CURATE_PROFILE": str(profile)}
    before, t0 = load(), time.time()
    proc = subprocess.Popen(cmd, cwd=code, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    killed = False
    if kill_when is not None:
        while proc.poll() is None:
            if kill_when(out):
                proc.send_signal(signal.SIGKILL)
                killed = True
                break
            time.sleep(0.005)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.time() - t0
    stdout, stderr = proc.stdout.read().decode(), proc.stderr.read().decode()
    proc.stdout.close(), proc.stderr.close()
    if not killed and os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"run failed:\n{stdout}\n{stderr}")
    stages = json.loads(profile.read_text())["stages"] if profile.exists() else []
    # the profile resets the kernel's high-water mark at each stage, which ru_maxrss reads: the
    # run's peak is the largest of the stages' peaks (and ru_maxrss, for a run without them)
    peak = max([usage.ru_maxrss / 1024, *(s["rss_peak_mb"] for s in stages)])
    return {"seconds": seconds, "rss_mb": peak, "load": f"{before} -> {load()}", "stages": stages,
            "cpu": usage.ru_utime + usage.ru_stime,
            "killed": killed, "stdout": stdout}


def stage_table(stages: list[dict]) -> list[tuple[str, float, float, float]]:
    """Stages by name (a STATE step's per-part states summed), in order: (name, seconds, CPU seconds, peak MB)."""
    out: dict[str, list[float]] = {}
    for s in stages:
        got = out.setdefault(s["stage"], [0.0, 0.0, 0.0])
        got[0] += s["seconds"]
        got[1] += s.get("cpu_seconds", 0.0)
        got[2] = max(got[2], s["rss_peak_mb"])
    return [(k, *v) for k, v in out.items()]


def show(rows: int, result: dict) -> None:
    print(f"\n{rows:,} rows: {result['seconds']:.1f} s wall, {result['cpu']:.1f} s CPU, peak RSS "
          f"{result['rss_mb']:,.0f} MB ({result['seconds'] / rows * 1e6:.1f} us/row), load {result['load']}")
    for name, seconds, cpu, peak in stage_table(result["stages"]):
        print(f"  {name:<42} {seconds:8.1f} s  CPU {cpu:7.1f} s   peak {peak:8,.0f} MB")
    for s in result["stages"]:  # the dedup stages' memory per row: what resolve held beyond what was there
        if s["stage"].endswith("resolve") and s["rows"]:
            grew = (s["rss_peak_mb"] - s["rss_before_mb"]) * 2**20
            print(f"  {s['stage']}: {grew / s['rows']:.0f} bytes per row above the {s['rss_before_mb']:,.0f} MB held before")


def resume(data: Path, work: Path, rows: int, part_rows: int, extra: tuple[str, ...] = ()) -> None:
    """SIGKILL a run in the middle of its MinHash state pass, rerun it, count the parts redone."""
    ref, out = work / f"run-{rows}-ref", work / f"run-{rows}-resume"
    for d in (ref, out):
        shutil.rmtree(d, ignore_errors=True)
    reference = run(data, ref, part_rows, extra=extra)
    state = lambda o: o / "steps" / "03-minhash_dedup" / "state"  # noqa: E731
    parts = len(list((ref / "steps" / "00-inputs" / "parts").glob("[0-9]*[0-9].json")))
    half = parts // 2
    first = run(data, out, part_rows, extra=extra, kill_when=lambda o: (state(o) / f"{half:05d}.json").exists())
    done = {s.name: len(list((s / "parts").glob("[0-9]*[0-9].json"))) for s in sorted((out / "steps").glob("*"))}
    states = len(list(state(out).glob("*.json")))
    killed_at = time.time()
    second = run(data, out, part_rows, extra=extra)
    rewritten = sum(f.stat().st_mtime > killed_at for f in state(out).glob("*.json"))
    report = json.loads((out / "report.json").read_text())
    print(f"\nresume at {rows:,} rows ({parts} parts of {part_rows:,}): killed after {first['seconds']:.1f} s "
          f"with {states} of {parts} MinHash state parts done; unit markers present per step: {done}")
    print(f"  03-minhash_dedup state: {rewritten} of {parts} parts computed again by the rerun")
    for s in report["steps"][1:]:  # a step that had finished is reused whole
        m = json.loads((out / "steps" / s["step"] / "_DONE.json").read_text())
        print(f"  {s['step']:<20} parts {m['parts']}, redone {0 if s['skipped'] else m['parts'] - m['parts_reused']}")
    print(f"  rerun: {second['seconds']:.1f} s (the uninterrupted run: {reference['seconds']:.1f} s), load {second['load']}")
    print(f"  output byte-identical to the uninterrupted run: {same_output(ref, out)}")


def same_output(ref: Path, out: Path) -> bool:
    """Are records, rejects and every data/ file byte-identical in the two run folders?"""
    names = ["records.parquet", "rejects.parquet", *(p.relative_to(ref).as_posix() for p in (ref / "data").iterdir())]
    return sorted((out / "data").iterdir()) == sorted(out / n for n in names if n.startswith("data/")) and \
        all((ref / rel).read_bytes() == (out / rel).read_bytes() for rel in names)


def ray_cluster(cpus: int):
    """A one-node Ray cluster of `cpus` CPUs (no dashboard, a 500 MB object store): (cluster, seconds to start)."""
    from ray.cluster_utils import Cluster

    t0 = time.time()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": cpus, "include_dashboard": False,
                                                            "object_store_memory": 500 * 2**20})
    cluster.wait_for_nodes()
    return cluster, time.time() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[200_000, 1_000_000, 10_000_000])
    parser.add_argument("--part-rows", type=int, default=100_000)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "curate-bench-scale")
    parser.add_argument("--resume", type=int, default=None, help="rows of the kill-and-rerun check (e.g. 1000000)")
    parser.add_argument("--baseline", default=None, help="a git revision to run the same sizes with")
    parser.add_argument("--keep", action="store_true", help="keep the run folders")
    parser.add_argument("--workers", type=int, default=None,
                        help="engine.workers of the local runs (default: curate's), and with --compare-workers W "
                             "each size again with W workers, for the ratio")
    parser.add_argument("--compare-workers", type=int, default=None, metavar="W")
    parser.add_argument("--ray", type=int, default=0, metavar="CPUS",
                        help="also run each size on the Ray engine, on a local cluster of CPUS CPUs started once "
                             "(the time to start it is printed apart), and compare time and output with the local run")
    parser.add_argument("--part-compression", choices=["uncompressed", "lz4", "zstd"], default=None,
                        help="engine.part_compression of the runs (default: curate's, uncompressed)")
    args = parser.parse_args()
    settings = ("-o", f"engine.part_compression={args.part_compression}") if args.part_compression else ()
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"cores: {os.cpu_count()}, load average {load()}, part_rows {args.part_rows:,}")
    sizes = sorted(set(args.rows + ([args.resume] if args.resume else [])))
    files = {}
    for n in sizes:
        files[n] = args.work / f"alpaca-{n}.parquet"
        if not files[n].exists():
            t0 = time.time()
            planted = build(n, files[n])
            print(f"built {files[n]} in {time.time() - t0:.0f} s: planted {planted}")
    base = None
    if args.baseline:  # the revision's packages and recipes, unpacked beside the runs
        base = args.work / "baseline"
        shutil.rmtree(base, ignore_errors=True)
        base.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline, "curate", "filters", "synth", "recipes"],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
    cluster = None
    if args.ray:
        cluster, started = ray_cluster(args.ray)
        print(f"Ray: a local cluster of {args.ray} CPUs at {cluster.address}, started in {started:.1f} s")
    try:
        for n in args.rows:
            out = args.work / f"run-{n}"
            shutil.rmtree(out, ignore_errors=True)
            result = run(files[n], out, args.part_rows, workers=args.workers, extra=settings)
            show(n, result)
            print("  " + result["stdout"].strip().replace("\n", "\n  "))
            if args.compare_workers:
                other_out = args.work / f"run-{n}-w{args.compare_workers}"
                shutil.rmtree(other_out, ignore_errors=True)
                other = run(files[n], other_out, args.part_rows, workers=args.compare_workers, extra=settings)
                show(n, other)
                print(f"  workers {args.compare_workers} / {args.workers or 'default'}: time x"
                      f"{other['seconds'] / result['seconds']:.2f}, CPU x{other['cpu'] / result['cpu']:.2f}, "
                      f"memory x{other['rss_mb'] / result['rss_mb']:.2f}; output byte-identical: {same_output(out, other_out)}")
                shutil.rmtree(other_out, ignore_errors=True)
            if cluster is not None:
                on_ray = args.work / f"run-{n}-ray"
                shutil.rmtree(on_ray, ignore_errors=True)
                other = run(files[n], on_ray, args.part_rows, extra=("--engine", "ray", "--address", cluster.address, *settings))
                print(f"  ray engine ({args.ray} CPUs): {other['seconds']:.1f} s wall, driver peak RSS "
                      f"{other['rss_mb']:,.0f} MB, load {other['load']}; ray / local: time x"
                      f"{other['seconds'] / result['seconds']:.2f}; output byte-identical: {same_output(out, on_ray)}")
                for name, seconds, _, peak in stage_table(other["stages"]):
                    print(f"    {name:<40} {seconds:8.1f} s   driver peak {peak:8,.0f} MB")
                if not args.keep:
                    shutil.rmtree(on_ray, ignore_errors=True)
            if base is not None:
                shutil.rmtree(out, ignore_errors=True)
                other = run(files[n], out, args.part_rows, code=base)
                print(f"  {args.baseline}: {other['seconds']:.1f} s wall, peak RSS {other['rss_mb']:,.0f} MB, "
                      f"load {other['load']}; this tree / {args.baseline}: time x{result['seconds'] / other['seconds']:.2f}, "
                      f"memory x{result['rss_mb'] / other['rss_mb']:.2f}")
            if not args.keep:
                shutil.rmtree(out, ignore_errors=True)
        if args.resume:
            resume(files[args.resume], args.work, args.resume, args.part_rows, settings)
    finally:
        if base is not None:
            shutil.rmtree(base, ignore_errors=True)
        if cluster is not None:
            cluster.shutdown()


if __name__ == "__main__":
    main()
