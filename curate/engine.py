"""The local engine: runs a recipe's steps in order, in-process, with polars.

Each step writes `<out>/steps/NN-kind/{data,rejects}.parquet` and then a `_DONE.json` marker holding
the step's hash. The hash chains, from the inputs on: the content of every input column and the
input settings, the run seed, and for each step its settings, code version and the content of the
files it reads (`Step.config_hash`), plus the teacher and its model file for steps that call it.
A rerun skips a step whose marker carries the same hash; once one step runs, every later one runs
too. Inside a step, LLM responses are cached per request, so a step killed halfway resends only
what had not arrived.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import polars as pl
import yaml

from curate.errors import CurateError
from curate.io import read_records, write_json, write_parquet, write_text
from curate.output import write_splits
from curate.llm.teacher import build_llm
from curate.records import concat, frame_digest
from curate.recipe import Recipe
from curate.report.compute import StepSections
from curate.steps import Context, StepResult, digest, embedded_model_file, files_digest

DONE = "_DONE.json"
log = logging.getLogger(__name__)


def load_inputs(recipe: Recipe) -> pl.DataFrame:
    """Read and concatenate the recipe's inputs (before anything is written, so bad input leaves no trace)."""
    frames = []
    for i, inp in enumerate(recipe.config.inputs):
        path = recipe.resolve(inp.path)
        if not path.exists():
            raise CurateError(f"{recipe.path or 'recipe'}: inputs[{i}].path {inp.path!r}: no such file or folder "
                              f"(looked in the recipe's folder {recipe.base_dir} and the working directory)")
        frames.append(
            read_records(path, source=inp.source, prompt=inp.prompt, response=inp.response,
                         system=inp.system, gold=inp.gold, limit=inp.limit)
        )
    if not frames:
        if recipe.steps and recipe.steps[0].is_source:
            return concat([])
        raise CurateError(f"{recipe.path or 'recipe'}: no inputs given (add an `inputs:` list)")
    return concat(frames)


def run_step(step, df: pl.DataFrame, ctx: Context) -> StepResult:
    """Run a step on its rows: all of them, or with `sources` set only those sources' rows, the
    others passing through unchanged after the step's output (counted in the stats as `routed`)."""
    if step.sources is None:
        return step.run(df, ctx)
    mine = df["source"].is_in(step.sources)
    result = step.run(df.filter(mine), ctx)
    present = set(df["source"].unique().to_list())
    routed = {"sources": step.sources, "rows": int(mine.sum()), "passed_through": int((~mine).sum()),
              "absent": [s for s in step.sources if s not in present]}
    if routed["absent"]:
        log.warning("%s: no rows from source(s) %s (the data has %s)", step.kind, routed["absent"], sorted(present, key=str))
    return StepResult(kept=concat([result.kept, df.filter(~mine)]), rejected=result.rejected,
                      stats={**result.stats, "routed": routed})


def inputs_hash(recipe: Recipe, df: pl.DataFrame) -> str:
    """Start of the step hash chain: every value of every input column (so a renamed source, a
    changed gold or an edited input file counts), the input settings and the run seed."""
    settings = [inp.model_dump(exclude={"license"}) for inp in recipe.config.inputs]
    return digest("inputs", frame_digest(df), settings, recipe.config.seed)


def teacher_hash(recipe: Recipe) -> str:
    """The teacher as far as it shapes the answers: which backend and model, and the model file's
    content when it runs here (embedded, or vLLM on a local file or folder)."""
    cfg = recipe.config.teacher
    local = None
    if cfg.backend == "embedded" or (cfg.backend == "vllm" and not (cfg.model_path or cfg.model)):
        local = cfg.model_path or embedded_model_file()
    elif cfg.backend == "vllm":
        local = cfg.model_path or (cfg.model if Path(cfg.model).exists() else None)
    key = cfg.model_dump(include={"backend", "model", "model_path", "base_url"})
    return digest(key, files_digest([local] if local else []))


def run_recipe(recipe: Recipe, out: str | Path, show_progress: bool = True) -> dict:
    """Run every step, write the outputs under `out`, and return the report (also in report.json)."""
    out = Path(out)
    started = time.time()
    df = load_inputs(recipe)
    cfg = recipe.config
    llm = None
    if any(s.needs_llm for s in recipe.steps):
        cache = recipe.resolve(cfg.cache) if cfg.cache else out / "cache" / "llm.sqlite"
        llm = build_llm(cfg.teacher, cache, show_progress=show_progress)
    out.mkdir(parents=True, exist_ok=True)
    write_text(yaml.safe_dump(recipe.raw, sort_keys=False), out / "recipe.yaml")  # with overrides applied
    ctx = Context(out_dir=out, seed=cfg.seed, llm=llm, show_progress=show_progress)
    teacher_key = teacher_hash(recipe) if any(s.needs_llm for s in recipe.steps) else None

    chain = inputs_hash(recipe, df)
    records = [{"step": "inputs", "kind": "inputs", "rows_in": 0, "rows_out": df.height, "dropped": {},
                "seconds": round(time.time() - started, 3), "skipped": False}]
    rejects = []
    sections = StepSections()
    must_run = False
    try:
        for i, step in enumerate(recipe.steps, 1):
            name = f"{i:02d}-{step.kind}"
            folder = out / "steps" / name
            chain = digest(chain, step.config_hash(), teacher_key if step.needs_llm else None)
            marker = folder / DONE
            rows_in = df.height
            if not must_run and marker.exists() and json.loads(marker.read_text()).get("hash") == chain:
                info = json.loads(marker.read_text())
                df = pl.read_parquet(folder / "data.parquet")
                rejected = pl.read_parquet(folder / "rejects.parquet")
                info["skipped"] = True
            else:
                must_run = True
                marker.unlink(missing_ok=True)
                t0 = time.time()
                result: StepResult = run_step(step, df, ctx)
                df, rejected = result.kept, _as_rejects(result.rejected, name)
                write_parquet(df, folder / "data.parquet")
                write_parquet(rejected, folder / "rejects.parquet")
                info = {
                    "step": name, "kind": step.kind, "hash": chain, "config": step.model_dump(mode="json"),
                    "rows_in": rows_in, "rows_out": df.height,
                    "dropped": _reason_counts(rejected), "seconds": round(time.time() - t0, 3),
                    **result.stats,
                }
                write_json(info, marker)
                info["skipped"] = False
            records.append(info)
            rejects.append(rejected)
            sections.add(name, step, df, rejected)
    finally:
        if llm is not None:
            llm.close()

    all_rejects = concat(rejects)
    write_parquet(df, out / "records.parquet")  # the kept rows with every score, before conversion
    write_parquet(all_rejects, out / "rejects.parquet")
    data_files = write_splits(df, cfg.output, out, seed=cfg.seed)
    return publish_report(recipe, out, records, df, all_rejects, data_files, seconds=time.time() - started,
                          sections=sections.sections)


def publish_report(recipe: Recipe, out: Path, steps: list[dict], final: pl.DataFrame, rejects: pl.DataFrame,
                   data_files: dict, seconds: float, sections: dict | None = None) -> dict:
    """Validate the final data, then write report.json / .md / .html and the dataset card. Without
    `sections` (computed while the steps ran) they are read from the step folders."""
    from curate.report.card import write_card
    from curate.report.compute import build_report, read_sections
    from curate.report.render import write_reports
    from curate.report.validate import validate

    validation = validate(final, recipe.steps)  # on 0 rows too: "at least 1 row" fails
    sections = read_sections(recipe, steps, out) if sections is None else sections
    report = build_report(recipe, steps, final, rejects, data_files, seconds, out, sections, validation)
    write_reports(report, out)
    write_card(recipe, report, out / "README.md")
    return report


def rebuild_report(out: str | Path) -> dict:
    """Regenerate the report and card of a finished run from its files, without rerunning anything."""
    from curate.recipe import build_recipe

    out = Path(out)
    needed = [out / n for n in ("recipe.yaml", "report.json", "records.parquet", "rejects.parquet")]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise CurateError(f"{out}: not a finished run folder (missing {', '.join(missing)})")
    recipe = build_recipe(yaml.safe_load((out / "recipe.yaml").read_text(encoding="utf-8")), base_dir=out,
                          origin=str(out / "recipe.yaml"))
    old = json.loads((out / "report.json").read_text(encoding="utf-8"))
    steps = [old["steps"][0]]
    for i, step in enumerate(recipe.steps, 1):
        marker = out / "steps" / f"{i:02d}-{step.kind}" / DONE
        if not marker.exists():
            raise CurateError(f"{marker}: missing; the run did not finish")
        steps.append({**json.loads(marker.read_text(encoding="utf-8")), "skipped": False})
    return publish_report(recipe, out, steps, pl.read_parquet(out / "records.parquet"),
                          pl.read_parquet(out / "rejects.parquet"), old["data_files"], old["seconds"])


def _as_rejects(rejected: pl.DataFrame | None, step: str) -> pl.DataFrame:
    """Give every dropped row its `step`, a `reason` and a `detail` column (possibly null)."""
    if rejected is None:
        return pl.DataFrame(schema={"step": pl.String, "reason": pl.String, "detail": pl.String})
    if "reason" not in rejected.columns:
        raise CurateError(f"step {step} returned rejects without a 'reason' column")
    if "detail" not in rejected.columns:
        rejected = rejected.with_columns(pl.lit(None, dtype=pl.String).alias("detail"))
    return rejected.with_columns(pl.lit(step).alias("step"))


def _reason_counts(rejected: pl.DataFrame) -> dict[str, int]:
    if rejected.height == 0:
        return {}
    # ties in name order: group_by's order varies from run to run, and the card must not
    counts = rejected.group_by("reason").len().sort(["len", "reason"], descending=[True, False])
    return {r: n for r, n in counts.iter_rows()}
