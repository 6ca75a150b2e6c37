"""The local engine: runs a recipe's steps in order, in-process, with polars.

Each step writes `<out>/steps/NN-kind/{data,rejects}.parquet` and then a `_DONE.json` marker holding
the step's hash, the digests of those two files and the count of teacher requests that failed.
The hash chains, from the inputs on: the content of every input column and the input settings,
the run seed, and for each step its settings, code version and the content of the files it reads
(`Step.config_hash`), plus the teacher and its model file for steps that call it. A rerun skips a
step whose marker carries the same hash, whose files are the ones it wrote and which has no failed
request to retry; once one step runs, every later one runs too. Inside a step, LLM responses are
cached per request, so a step killed halfway, or rerun to retry its failed requests, sends only
what had not arrived. The output folder is held and marked by curate.folder.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import yaml

from curate.errors import CurateError
from curate.folder import locked, require_complete
from curate.io import read_records, write_json, write_parquet, write_text
from curate.output import write_splits
from curate.llm.teacher import build_llm
from curate.records import concat, frame_digest, split_invalid
from curate.recipe import Recipe, check_output_columns, redact_url
from curate.report.compute import StepSections
from curate.report.validate import gx_files
from curate.steps import Context, Step, StepResult, digest, embedded_model_file, file_digest, files_digest

DONE = "_DONE.json"
STEP_FILES = ("data.parquet", "rejects.parquet")
log = logging.getLogger(__name__)


def load_inputs(recipe: Recipe) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Read and concatenate the recipe's inputs (before anything is written, so bad input leaves no
    trace): (valid rows, invalid rows with step "inputs" and a reason, see `split_invalid`)."""
    frames, rejected = [], []
    for i, inp in enumerate(recipe.config.inputs):
        path = recipe.resolve(inp.path)
        if not path.exists():
            raise CurateError(f"{recipe.path or 'recipe'}: inputs[{i}].path {inp.path!r}: no such file or folder "
                              f"(looked in the recipe's folder {recipe.base_dir} and the working directory)")
        records = read_records(path, source=inp.source, prompt=inp.prompt, response=inp.response,
                               system=inp.system, gold=inp.gold, limit=inp.limit)
        valid, bad = split_invalid(records, str(path))
        if bad.height:
            reasons = ", ".join(f"{r} {n}" for r, n in _reason_counts(bad).items())
            if not valid.height:
                raise CurateError(f"{path}: none of its {bad.height} rows is a valid SFT row ({reasons}); see "
                                  "`curate inspect` for its columns, or name them with inputs[].prompt/response")
            log.warning("%s: %d of %d rows rejected (%s); they are in rejects.parquet with step 'inputs'",
                        path, bad.height, records.height, reasons)
        frames.append(valid)
        rejected.append(_as_rejects(bad, "inputs"))
    if not frames and not (recipe.steps and recipe.steps[0].is_source):
        raise CurateError(f"{recipe.path or 'recipe'}: no inputs given (add an `inputs:` list)")
    df = concat(frames)
    check_output_columns(recipe, df.columns)
    return df, concat(rejected) if rejected else _as_rejects(None, "inputs")


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
    content when it runs here (embedded, or vLLM on a local file or folder). The base_url counts
    without its credentials: a new key does not change the answers."""
    cfg = recipe.config.teacher
    local = None
    if cfg.backend == "embedded" or (cfg.backend == "vllm" and not (cfg.model_path or cfg.model)):
        local = cfg.model_path or embedded_model_file()
    elif cfg.backend == "vllm":
        local = cfg.model_path or (cfg.model if Path(cfg.model).exists() else None)
    key = cfg.model_dump(include={"backend", "model", "model_path", "base_url"})
    key["base_url"] = redact_url(key["base_url"]) if key["base_url"] else None
    return digest(key, files_digest([local] if local else []))


@dataclass
class PlannedStep:
    """A step of this run: its folder name, its hash, and its finished marker if its output is reused."""

    step: Step
    name: str
    hash: str
    reuse: dict | None = None  # the marker of a finished, unchanged, intact step
    retry: int = 0  # teacher requests that failed last time and are retried now


def plan_steps(recipe: Recipe, df: pl.DataFrame, out: Path) -> list[PlannedStep]:
    """Each step's hash, and which leading steps are finished and reusable (once one step runs,
    every later one runs too). Everything a skip relies on is checked here, before anything is
    written: a marker that does not read, a step file that is missing or is not the one the step
    wrote, or failed teacher requests make the step run again (with a warning naming the file)."""
    teacher_key = teacher_hash(recipe) if any(s.needs_llm for s in recipe.steps) else None
    chain = inputs_hash(recipe, df)
    plan, reusing = [], True
    for i, step in enumerate(recipe.steps, 1):
        chain = digest(chain, step.config_hash(), teacher_key if step.needs_llm else None)
        planned = PlannedStep(step, f"{i:02d}-{step.kind}", chain)
        if reusing:
            planned.reuse, why, planned.retry = finished_step(out / "steps" / planned.name, chain)
            if why:
                log.warning("%s", why)
            reusing = planned.reuse is not None
        plan.append(planned)
    return plan


def finished_step(folder: Path, chain: str) -> tuple[dict | None, str | None, int]:
    """(marker, None, 0) if the step in `folder` finished with hash `chain` and its files are the
    ones it wrote; else (None, why it reruns or None if there is nothing to say, failed requests
    it retries)."""
    marker = folder / DONE
    if not marker.exists():
        return None, None, 0
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
        if not isinstance(info, dict) or not isinstance(info.get("hash"), str):
            raise ValueError("no 'hash' key")
    except (OSError, ValueError) as exc:
        return None, f"{marker}: unreadable ({exc}); running the step again", 0
    if info["hash"] != chain:
        return None, None, 0
    failed = info.get("failed_requests") or {}
    retry = failed.get("retry", 0) if isinstance(failed, dict) else 0
    if retry:
        return None, (f"{folder.name}: {retry} teacher request(s) failed last time; running the step again to retry "
                      "them (the answered ones come from the cache)"), retry
    digests = info.get("files") if isinstance(info.get("files"), dict) else {}
    for name in STEP_FILES:
        path = folder / name
        if not path.is_file():
            return None, f"{path}: missing; running the step again", 0
        if name in digests:  # markers from before digests: the file must at least read
            if file_digest(path) != digests[name]:
                return None, f"{path}: not the file the step wrote (changed or damaged); running the step again", 0
        else:
            try:
                pq.read_metadata(path)
            except Exception as exc:  # pyarrow raises several types for a damaged file
                return None, f"{path}: unreadable ({exc}); running the step again", 0
    return info, None, 0


def planned_files(recipe: Recipe, plan: list[PlannedStep], out: Path, cache: Path | None) -> list[Path]:
    """Every file this run may write in `out` (with `cache`, the response cache in it), listed in
    the folder's manifest before it is written."""
    files = [out / n for n in ("recipe.yaml", "records.parquet", "rejects.parquet", *REPORT_FILES)]
    files += gx_files(out)
    files += [out / "steps" / p.name / n for p in plan for n in (*STEP_FILES, DONE)]
    splits = ("train", "validation") if recipe.config.output.validation else ("train",)
    files += [out / "data" / f"{s}.{ext}" for s in splits for ext in recipe.config.output.files]
    if cache is not None:
        files.append(cache)  # not its -wal and -shm: SQLite makes and removes them, also for other readers
    return files


def run_recipe(recipe: Recipe, out: str | Path, show_progress: bool = True) -> dict:
    """Run every step, write the outputs under `out`, and return the report (also in report.json).

    `out` is held for the run (curate.folder): refused if another run holds it or it holds files
    that are not a run's, and marked incomplete from the first write until the card is written."""
    out = Path(out)
    started = time.time()
    df, input_rejects = load_inputs(recipe)
    cfg = recipe.config
    inputs = {"step": "inputs", "kind": "inputs", "rows_in": df.height + input_rejects.height, "rows_out": df.height,
              "dropped": _reason_counts(input_rejects), "seconds": round(time.time() - started, 3), "skipped": False}
    with locked(out) as folder:
        plan = plan_steps(recipe, df, out)
        cache = llm = None
        if any(p.step.needs_llm and p.reuse is None for p in plan):  # a finished run needs no teacher
            cache = recipe.resolve(cfg.cache) if cfg.cache else out / "cache" / "llm.sqlite"
        folder.claim(planned_files(recipe, plan, out, None if cfg.cache else cache))
        if cache is not None:
            llm = build_llm(cfg.teacher, cache, show_progress=show_progress)
        try:
            folder.start(cfg.name)
            write_text(yaml.safe_dump(recipe.raw, sort_keys=False), out / "recipe.yaml")  # overrides applied
            sections = StepSections()
            steps, rejects, df = run_steps(plan, df, Context(out_dir=out, seed=cfg.seed, llm=llm,
                                                              show_progress=show_progress), sections)
        finally:
            if llm is not None:
                llm.close()
        all_rejects = concat([input_rejects, *rejects])
        write_parquet(df, out / "records.parquet")  # the kept rows with every score, before conversion
        write_parquet(all_rejects, out / "rejects.parquet")
        data_files = write_splits(df, cfg.output, out, seed=cfg.seed, replaceable=folder.wrote)
        report = publish_report(recipe, out, [inputs, *steps], df, all_rejects, data_files,
                                seconds=time.time() - started, sections=sections.sections)
        folder.finish()
    return report


def run_steps(plan: list[PlannedStep], df: pl.DataFrame, ctx: Context,
              sections: StepSections | None = None) -> tuple[list[dict], list[pl.DataFrame], pl.DataFrame]:
    """Run (or reuse) each planned step: (each step's marker, each step's rejects, the final rows);
    each step's report section goes to `sections` while its rows are at hand."""
    records = []
    rejects = []
    for p in plan:
        folder = ctx.out_dir / "steps" / p.name
        marker = folder / DONE
        rows_in = df.height
        if p.reuse is not None:
            df = pl.read_parquet(folder / "data.parquet")
            rejected = pl.read_parquet(folder / "rejects.parquet")
            info = {**p.reuse, "skipped": True}
        else:
            marker.unlink(missing_ok=True)
            t0 = time.time()
            failed_before = _failures(ctx.llm)
            result: StepResult = run_step(p.step, df, ctx)
            df, rejected = result.kept, _as_rejects(result.rejected, p.name)
            write_parquet(df, folder / "data.parquet")
            write_parquet(rejected, folder / "rejects.parquet")
            failed, for_good = (a - b for a, b in zip(_failures(ctx.llm), failed_before))
            info = {
                "step": p.name, "kind": p.step.kind, "hash": p.hash, "config": p.step.model_dump(mode="json"),
                "rows_in": rows_in, "rows_out": df.height,
                "dropped": _reason_counts(rejected), "seconds": round(time.time() - t0, 3),
                **result.stats,
                # what a skip checks: the step's files are the ones it wrote, and no request is left to retry
                "files": {n: file_digest(folder / n) for n in STEP_FILES},
                **({"failed_requests": {"retry": failed - for_good, "for_good": for_good}} if failed else {}),
                **({"retried": p.retry} if p.retry else {}),
            }
            write_json(info, marker)
            info["skipped"] = False
        records.append(info)
        rejects.append(rejected)
        if sections is not None:
            sections.add(p.name, p.step, df, rejected)
    return records, rejects, df


def _failures(llm) -> tuple[int, int]:
    """Failed teacher requests so far: all, and those the server refused as bad (not retried)."""
    return (llm.usage.failures, llm.usage.permanent_failures) if llm is not None else (0, 0)


REPORT_FILES = ("report.json", "report.md", "report.html", "README.md")


def publish_report(recipe: Recipe, out: Path, steps: list[dict], final: pl.DataFrame, rejects: pl.DataFrame,
                   data_files: dict, seconds: float, sections: dict | None = None) -> dict:
    """Validate the final data, then write report.json / .md / .html and the dataset card (REPORT_FILES).
    Without `sections` (computed while the steps ran) they are read from the step folders."""
    from curate.report.card import write_card
    from curate.report.compute import build_report, read_sections
    from curate.report.render import write_reports
    from curate.report.validate import validate

    # on 0 rows too: "at least 1 row" fails
    validation = validate(final, recipe.steps, recipe.config.checks, recipe.config.output, save_to=out / "gx")
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
    require_complete(out, "rebuild its report")
    with locked(out, purpose="report rebuild", create=False) as folder:
        folder.claim(gx_files(out))  # a run from before they were saved, or without great-expectations then
        recipe = build_recipe(_read_state(out / "recipe.yaml", yaml.safe_load), base_dir=out,
                              origin=str(out / "recipe.yaml"))
        old = _read_state(out / "report.json", json.loads, need=("steps", "data_files", "seconds"))
        steps = [old["steps"][0]]
        for i, step in enumerate(recipe.steps, 1):
            marker = out / "steps" / f"{i:02d}-{step.kind}" / DONE
            if not marker.exists():
                raise CurateError(f"{marker}: missing; the run did not finish")
            steps.append({**_read_state(marker, json.loads, need=("step", "rows_in", "rows_out")), "skipped": False})
        return publish_report(recipe, out, steps, pl.read_parquet(out / "records.parquet"),
                              pl.read_parquet(out / "rejects.parquet"), old["data_files"], old["seconds"])


def _read_state(path: Path, parse, need: tuple[str, ...] = ()) -> dict:
    """A run's JSON or YAML file, or an error naming it and what is wrong with it."""
    try:
        data = parse(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise CurateError(f"{path}: unreadable ({exc}); rerun `curate run` into this folder to rewrite it") from None
    missing = [k for k in need if not isinstance(data, dict) or k not in data]
    if not isinstance(data, dict) or missing:
        raise CurateError(f"{path}: not what a run writes (missing {', '.join(missing) or 'a mapping'}); "
                          "rerun `curate run` into this folder to rewrite it")
    return data


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
