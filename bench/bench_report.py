"""The run report's cost: built from what the engine holds, against the report code of a git revision.

    python bench/bench_report.py [--baseline REV] [--repeat 5] [--data FILE]

Makes a run folder first: recipes/curate-existing.yaml (exact and MinHash dedup, heuristics,
decontamination; no model) pointed at the 9,038 Alpaca-GPT4 rows of
../shared/data/nuggets_alpaca_gpt4. Then, in one process, on the same frames, it times
- ours in a run: each step's section from the frames in hand (StepSections, as the engine does),
  validation, the report, report.md / report.html and the card;
- ours as `curate report OUT`: the same, the sections read from the step folders;
- with --baseline REV: curate/report.py, plots.py, validate.py and mix.py as they were at REV
  (before they became curate/report/), imported as `report_baseline` and given what the engine gave
  them; that code re-reads the step files and counts tokens with llama.cpp (the embedded extra).
A first pass of each loads what it loads once per process (tokenizers, great-expectations) and is
shown apart; then the median of --repeat passes. The load average is printed: the ratios hold
better than the times on a busy machine.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import polars as pl  # noqa: E402

from curate.engine import DONE, run_recipe  # noqa: E402
from curate.recipe import load_recipe  # noqa: E402
from curate.report.card import write_card  # noqa: E402
from curate.report.compute import StepSections, build_report, read_sections  # noqa: E402
from curate.report.render import write_reports  # noqa: E402
from curate.report.validate import validate  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "nuggets_alpaca_gpt4" / "alpaca_gpt4_bad_scored.jsonl"
if not DATA.exists():
    DATA = Path("/work/shared/data/nuggets_alpaca_gpt4/alpaca_gpt4_bad_scored.jsonl")
MODULES = ("report", "plots", "validate", "mix")


def load_baseline(rev: str):
    """curate/{report,plots,validate,mix}.py at git revision `rev`, as the package `report_baseline`."""
    tmp = Path(tempfile.mkdtemp(prefix="report_baseline_")) / "report_baseline"
    tmp.mkdir()
    for name in MODULES:
        proc = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:curate/{name}.py"], capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"--baseline {rev}: no curate/{name}.py there ({proc.stderr.strip()}); "
                             "name a revision from before the report became a package")
        text = re.sub(r"\bcurate\.(report|plots|validate|mix)\b", r"report_baseline.\1", proc.stdout)
        (tmp / f"{name}.py").write_text(text, encoding="utf-8")
    (tmp / "__init__.py").write_text("", encoding="utf-8")
    sys.path.insert(0, str(tmp.parent))
    return importlib.import_module("report_baseline.report"), importlib.import_module("report_baseline.validate")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", metavar="REV", help="also time the report code of this git revision")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--data", type=Path, default=DATA)
    args = ap.parse_args()
    baseline = load_baseline(args.baseline) if args.baseline else None

    work = Path(tempfile.mkdtemp(prefix="bench_report_"))
    recipe = load_recipe(ROOT / "recipes" / "curate-existing.yaml", [f"inputs.0.path={args.data}", "inputs.0.source=bench"])
    first = run_recipe(recipe, work / "run", show_progress=False)
    src = work / "run"
    steps = [first["steps"][0]] + [{**json.loads((src / "steps" / s["step"] / DONE).read_text()), "skipped": False}
                                   for s in first["steps"][1:]]
    held = [(info["step"], step, pl.read_parquet(src / "steps" / info["step"] / "data.parquet"),
             pl.read_parquet(src / "steps" / info["step"] / "rejects.parquet")) for step, info in zip(recipe.steps, steps[1:])]
    final, rejects = pl.read_parquet(src / "records.parquet"), pl.read_parquet(src / "rejects.parquet")
    data_files = first["data_files"]
    print(f"{final.height} final rows of {first['rows']['in']}, {len(held)} steps; load average {os.getloadavg()[0]:.2f}")

    def ours_in_run(out: Path) -> None:
        sections = StepSections()
        for name, step, kept, rejected in held:
            sections.add(name, step, kept, rejected)
        report = build_report(recipe, steps, final, rejects, data_files, 1.0, out, sections.sections,
                              validate(final, recipe.steps))
        write_reports(report, out)
        write_card(recipe, report, out / "README.md")

    def ours_rebuild(out: Path) -> None:
        report = build_report(recipe, steps, final, rejects, data_files, 1.0, out, read_sections(recipe, steps, out),
                              validate(final, recipe.steps))
        write_reports(report, out)
        write_card(recipe, report, out / "README.md")

    variants = {"ours, in a run": ours_in_run, "ours, curate report": ours_rebuild}
    if baseline:
        old_report, old_validate = baseline

        def baseline_run(out: Path) -> None:  # its publish_report: what the engine gave it, then it reads the rest
            report = old_report.build_report(recipe, steps, final, rejects, data_files, 1.0, out,
                                             old_validate.validate(final, recipe.steps))
            old_report.write_reports(report, out)
            old_report.write_card(recipe, report, out / "README.md")

        variants[f"{args.baseline}, in a run or curate report"] = baseline_run
    folders = {}
    for i, name in enumerate(variants):
        folders[name] = work / f"out{i}"
        shutil.copytree(src, folders[name])
    times = {name: [] for name in variants}
    for rep in range(args.repeat + 1):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn(folders[name])
            elapsed = time.perf_counter() - t0
            if rep == 0:
                print(f"first pass, {name}: {elapsed:.3f} s")
            else:
                times[name].append(elapsed)
    med = {name: statistics.median(t) for name, t in times.items()}
    for name, t in med.items():
        print(f"{name}: median {t:.3f} s of {args.repeat} (min {min(times[name]):.3f} s)")
    if baseline:
        base = med[f"{args.baseline}, in a run or curate report"]
        print(f"{args.baseline} / ours: in a run {base / med['ours, in a run']:.2f}, "
              f"curate report {base / med['ours, curate report']:.2f}")
    print(f"load average {os.getloadavg()[0]:.2f}")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
