"""The local engine: runs a recipe's steps in order, in-process, part by part.

The inputs are read and checked whole first (curate.inputs: nothing is written before), then cut
into parts of `engine.part_rows` rows, and every step's output is written as parts
(curate.parts: `<out>/steps/NN-kind/parts/`), each with a marker written last. How a step runs is
what it declares (curate.steps): a row-local step (BATCHES) maps input part i to output part i, one
part in memory at a time; a global step through compact state (STATE) writes each part's state,
resolves it once (`resolved.parquet`) and then applies it part by part; a step that needs every row
(FRAME) gets them gathered and its output cut into parts. Memory grows with the rows only through
FRAME steps and the state of STATE steps. `engine.workers` parts are worked at once in threads by
steps that allow it, by the inputs' check and write, and by the end of the run (data/, records,
rejects and validation only read the final parts: curate.concurrency).

Nothing stale is reused and nothing finished is redone. Each step's hash chains, from the input
settings and the run seed, its settings, code version and the content of the files it reads
(`Step.config_hash`), plus the teacher and its model file for steps that call it. A unit of work
is reused when its marker carries that hash with the digests of the input parts it read, its files
are the ones it wrote, and it has no failed teacher request to retry; so a rerun after a kill
redoes only the unfinished parts, and an edited input row reruns only its part of row-local
steps. Inside a step, LLM responses are cached per request. A step's `_DONE.json` sums its parts
for the report; an unreadable one reruns the step. The output folder is held and marked by
curate.folder.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import yaml

from curate.folder import RunFolder, locked
from curate.concurrency import at_once, map_in_order
from curate.inputs import Inputs, as_rejects, read_inputs, reason_counts
from curate.io import write_json, write_text
from curate.llm.teacher import build_llm
from curate.output import write_splits
from curate.parts import (
    DONE,
    Part,
    StepFolder,
    Unit,
    cut,
    gather,
    part_name,
    parts_fetch,
    read_marker,
    write_parts,
)
from curate.profile import PROFILE
from curate.recipe import Recipe, redact_url
from curate.records import concat, frame_digest
from curate.report.compute import StepSections
from curate.report.validate import gx_files, validate_parts
from curate.report.write import REPORT_FILES, publish_report
from curate.states import PolarsStates, Resolved, States
from curate.steps import (
    BATCHES,
    FRAME,
    Context,
    Step,
    StepResult,
    digest,
    embedded_model_file,
    files_digest,
)

log = logging.getLogger(__name__)
INPUTS = "00-inputs"


def run_step(step: Step, df: pl.DataFrame, ctx: Context) -> StepResult:
    """Run a step on its rows: all of them, or with `sources` set only those sources' rows, the
    others passing through unchanged after the step's output (counted in the stats as `routed`)."""
    mine, others, routed = route(step, df)
    result = step.run(mine, ctx)
    if routed is None:
        return result
    warn_absent(step, routed)
    return StepResult(kept=concat([result.kept, others]), rejected=result.rejected,
                      stats={**result.stats, "routed": routed})


def route(step: Step, df: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame | None, dict | None]:
    """(the step's rows, the others, the routing stats) of `df`: all rows and None without `sources`."""
    if step.sources is None:
        return df, None, None
    mine = df["source"].is_in(step.sources)
    present = sorted(set(df["source"].unique().to_list()), key=str)
    routed = {"sources": step.sources, "rows": int(mine.sum()), "passed_through": int((~mine).sum()),
              "absent": [s for s in step.sources if s not in present], "present": present}
    return df.filter(mine), df.filter(~mine), routed


def warn_absent(step: Step, routed: dict) -> None:
    present = routed.pop("present")
    if routed["absent"]:
        log.warning("%s: no rows from source(s) %s (the data has %s)", step.kind, routed["absent"], present)


def merge_routed(routes: list[dict]) -> dict:
    """The routing stats of a step run part by part, as if on the whole frame."""
    present = sorted({s for r in routes for s in r["present"]}, key=str)
    sources = routes[0]["sources"]
    return {"sources": sources, "rows": sum(r["rows"] for r in routes),
            "passed_through": sum(r["passed_through"] for r in routes),
            "absent": [s for s in sources if s not in present], "present": present}


def merge_stats(stats: list[dict]) -> dict:
    """The stats of a step run part by part: numbers summed, everything else as the first part has it."""
    out: dict = {}
    for s in stats:
        for k, v in s.items():
            if k not in out:
                out[k] = v
            elif isinstance(v, dict) and isinstance(out[k], dict):
                out[k] = merge_stats([out[k], v])
            elif isinstance(v, (int, float)) and not isinstance(v, bool) and isinstance(out[k], (int, float)):
                out[k] = round(out[k] + v, 6) if isinstance(out[k] + v, float) else out[k] + v
    return out


def inputs_hash(recipe: Recipe, hub_identities: list[dict] = ()) -> str:
    """Start of the step hash chain: the input settings, the run seed and each Hub input's identity
    (repo, commit sha, config, split: a new commit reruns the work). The inputs' content counts
    part by part: a part is known by its digest (every value of every input column)."""
    settings = [inp.model_dump(exclude={"license"}) for inp in recipe.config.inputs]
    return digest("inputs", settings, recipe.config.seed, *hub_identities)


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
    """A step of this run: its folder name and its hash."""

    step: Step
    name: str
    hash: str


def plan_steps(recipe: Recipe, hub_identities: list[dict] = ()) -> list[PlannedStep]:
    """Each step's folder and hash, chained from the inputs' settings (`inputs_hash`)."""
    teacher_key = teacher_hash(recipe) if any(s.needs_llm for s in recipe.steps) else None
    chain = inputs_hash(recipe, hub_identities)
    plan = []
    for i, step in enumerate(recipe.steps, 1):
        chain = digest(chain, step.config_hash(), teacher_key if step.needs_llm else None)
        plan.append(PlannedStep(step, f"{i:02d}-{step.kind}", chain))
    return plan


def planned_files(recipe: Recipe, plan: list[PlannedStep], out: Path) -> list[Path]:
    """The files of this run whose names are known before it starts, listed in the folder's
    manifest before anything is written (parts are listed as each step comes to them)."""
    files = [out / n for n in ("recipe.yaml", "records.parquet", "rejects.parquet", *REPORT_FILES)]
    files += gx_files(out)
    files += [out / "steps" / p.name / DONE for p in plan]
    splits = ("train", "validation") if recipe.config.output.validation else ("train",)
    files += [out / "data" / f"{s}.{ext}" for s in splits for ext in recipe.config.output.files]
    return files


class Teacher:
    """The recipe's teacher, built when a step that calls it first runs (a finished run opens no cache)."""

    def __init__(self, recipe: Recipe, out: Path, folder: RunFolder, show_progress: bool):
        self.recipe, self.out, self.folder, self.show_progress = recipe, out, folder, show_progress
        self.llm = None

    def get(self):
        if self.llm is None:
            cfg = self.recipe.config
            cache = self.recipe.resolve(cfg.cache) if cfg.cache else self.out / "cache" / "llm.sqlite"
            if not cfg.cache:
                self.folder.claim([cache])  # not its -wal and -shm: SQLite makes and removes them, also for other readers
            self.llm = self.build(cache)
        return self.llm

    def build(self, cache: Path):
        """The LLM, its model in this process or reached from it (an engine elsewhere overrides this)."""
        return build_llm(self.recipe.config.teacher, cache, show_progress=self.show_progress)

    def failures(self) -> tuple[int, int]:
        """Failed teacher requests so far: all, and those the server refused as bad (not retried)."""
        return (self.llm.usage.failures, self.llm.usage.permanent_failures) if self.llm is not None else (0, 0)

    def close(self) -> None:
        if self.llm is not None:
            self.llm.close()


@dataclass
class StepOutput:
    """A finished step: its kept parts in order, its rejects parts, and its marker's facts."""

    kept: list[Part]
    rejects: list[Part]
    info: dict


@dataclass
class Work:
    """One unit of work of a BATCHES or STATE step, as data: it names everything the work needs (the
    step, its input part, where its files go) and nothing of the run, so an engine may do it in
    another process (curate.engines.ray) with `run_work`. `what`: "batch" (a row-local step on input
    part i), "state" (a STATE step's state of part i) or "apply" (its output for part i, whose rows
    are numbered rows[0]..rows[1]-1)."""

    what: str
    step: Step
    name: str  # the step's folder name, NN-kind (the rejects' `step`)
    folder: Path  # the step's folder
    i: int
    part: Part
    key: str
    rows: tuple[int, int] = (0, 0)
    retry: int = 0  # failed teacher requests of the last try, retried by this one
    compression: str = "uncompressed"  # of the parts it writes (engine.part_compression)

    @property
    def marker(self) -> Path:
        sf = StepFolder(self.folder)
        return sf.path / "state" / f"{part_name(self.i)}.json" if self.what == "state" else sf.marker_path(part_name(self.i))

    def paths(self) -> list[Path]:
        """The files the work may write, for the manifest."""
        sf = StepFolder(self.folder)
        if self.what == "state":
            return [sf.state_path(self.i), self.marker]
        return [sf.kept_path(self.i), sf.path / "parts" / f"{part_name(self.i)}-others.parquet", sf.rejects_path(self.i),
                self.marker]


def untimed(work, retried: int = 0):
    """`work()` and the facts a marker keeps of it, for a step that calls no teacher."""
    t0 = time.time()
    result = work()
    return result, {"seconds": round(time.time() - t0, 3), **({"retried": retried} if retried else {})}


def run_work(w: Work, ctx: Context, resolved: Resolved | None = None, keep_frames: bool = False, timed=untimed) -> Unit:
    """Do one unit of work and write its files, its marker last (curate.parts). `timed(work, retried)`
    runs the work and gives its facts (the local engine counts the teacher's failed requests)."""
    sf, step = StepFolder(w.folder, w.compression), w.step
    if w.what == "state":
        return sf.write_unit(w.marker, w.key, [(sf.state_path(w.i), step.state(route(step, w.part.read())[0]))], [], {},
                             keep_frames=keep_frames)
    mine, others, routed = route(step, w.part.read())
    if w.what == "batch":
        result, facts = timed(lambda: step.run(mine, ctx), w.retry)
        stats = result.stats
    else:
        lo, hi = w.rows
        result, facts = timed(lambda: step.apply(mine, np.arange(lo, hi), resolved.between(lo, hi)), w.retry)
        stats = None
    kept = [(sf.kept_path(w.i), result.kept)]
    if others is not None:
        kept.append((sf.path / "parts" / f"{part_name(w.i)}-others.parquet", others))
    rejected = as_rejects(result.rejected, w.name)
    info = {"rows_in": w.part.rows, "rows_out": sum(f.height for _, f in kept), "dropped": reason_counts(rejected),
            **facts, **({"stats": stats} if stats else {}), **({"routed": routed} if routed else {})}
    return sf.write_unit(w.marker, w.key, kept, [(sf.rejects_path(w.i), rejected)], info, keep_frames=keep_frames)


class LocalRun:
    """The steps of one run, in this process, part by part (see the module docstring)."""

    def __init__(self, out: Path, folder: RunFolder, part_rows: int, ctx: Context, teacher: Teacher, small: bool,
                 workers: int = 1, compression: str = "uncompressed"):
        self.out, self.folder, self.part_rows, self.ctx, self.teacher = out, folder, part_rows, ctx, teacher
        self.workers, self.compression = workers, compression
        self.small = small  # the rows fit in one part: keep the frames written instead of reading them back

    # Inputs ------------------------------------------------------------------------------------
    def inputs(self, inputs: Inputs, chain: str) -> StepOutput:
        """The inputs as parts of `part_rows` valid rows (a part already written with the same rows is kept)."""
        sf = StepFolder(self.out / "steps" / INPUTS, self.compression)

        def claimed():
            for i, (valid, rejected) in enumerate(inputs.parts()):
                self.folder.claim([sf.kept_path(i), sf.rejects_path(i), sf.marker_path(part_name(i))])
                yield i, valid, rejected

        def write(item) -> Unit:
            i, valid, rejected = item
            key = digest(chain, frame_digest(valid), frame_digest(rejected))
            marker = sf.marker_path(part_name(i))
            info = sf.finished(marker, key)
            return sf.unit_from(marker, info) if info else sf.write_unit(
                marker, key, [(sf.kept_path(i), valid)], [(sf.rejects_path(i), rejected)], {"rows_out": valid.height},
                keep_frames=self.small)

        units = list(map_in_order(write, claimed(), self.workers))
        sf.clear_stale(set().union(*(u.files() for u in units)), self.folder.wrote)
        return StepOutput([p for u in units for p in u.kept], [p for u in units for p in u.rejects], inputs.info)

    # Steps -------------------------------------------------------------------------------------
    def step(self, p: PlannedStep, parts: list[Part]) -> StepOutput:
        """Run (or reuse, unit by unit) one step on its input parts."""
        sf = StepFolder(self.out / "steps" / p.name, self.compression)
        started = time.time()
        inputs_key = digest(p.hash, [part.digest for part in parts])
        summary_path = sf.path / DONE
        summary = read_marker(summary_path)
        damaged = summary_path.exists() and summary is None  # unreadable: the whole step runs again
        execution = p.step.execution
        if execution == FRAME:  # one unit, whose marker is the step's
            unit = self.frame_unit(p, sf, parts, inputs_key, damaged)
            sf.clear_stale(unit.files(), self.folder.wrote)
            return StepOutput(unit.kept, unit.rejects, {**unit.info, "skipped": unit.reused})
        keep: set[Path] = set()
        if execution == BATCHES:
            units = self.units(p, [self.pending(sf, Work("batch", p.step, p.name, sf.path, i, part, digest(p.hash, part.digest),
                                                     compression=self.compression),
                                                damaged) for i, part in enumerate(parts)])
            stats = merge_stats([u.info.get("stats") or {} for u in units])
        else:
            units, stats = self.state_units(p, sf, parts, damaged, keep)
        for u in units:
            keep |= u.files()
        sf.clear_stale(keep, self.folder.wrote)
        slots = max(len(u.kept) for u in units)  # routed: the step's output parts, then the passed-through ones
        kept = [u.kept[s] for s in range(slots) for u in units]
        rejects = [part for u in units for part in u.rejects]
        if all(u.reused for u in units) and summary and summary.get("hash") == p.hash \
                and summary.get("inputs") == inputs_key:
            return StepOutput(kept, rejects, {**summary, "skipped": True})
        info = self.step_info(p, parts, inputs_key, kept, units, stats, started)
        self.folder.claim([summary_path])
        write_json(info, summary_path)
        return StepOutput(kept, rejects, {**info, "skipped": False})

    def step_info(self, p: PlannedStep, parts: list[Part], inputs_key: str, kept: list[Part], units: list[Unit],
                  stats: dict, started: float) -> dict:
        """The step's marker: what the report's funnel shows, summed over its units."""
        routes = [u.info["routed"] for u in units if u.info.get("routed")]
        if routes:
            stats = {**stats, "routed": merge_routed(routes)}
            warn_absent(p.step, stats["routed"])
        failed = [u.info["failed_requests"] for u in units if u.info.get("failed_requests")]
        retried = sum(u.info.get("retried", 0) for u in units if not u.reused)
        dropped = sum((Counter(u.info.get("dropped") or {}) for u in units), Counter())
        return {
            "step": p.name, "kind": p.step.kind, "hash": p.hash, "inputs": inputs_key,
            "config": p.step.model_dump(mode="json"),
            "rows_in": sum(part.rows for part in parts), "rows_out": sum(part.rows for part in kept),
            "dropped": reason_counts(dict(dropped)), "seconds": round(time.time() - started, 3),
            **stats,
            **({"failed_requests": merge_stats(failed)} if failed else {}),
            **({"retried": retried} if retried else {}),
            "parts": len(units), "parts_reused": sum(u.reused for u in units),
        }

    def pending(self, sf: StepFolder, w: Work, damaged: bool) -> Unit | Work:
        """The unit `w` would make, if one is finished with its key and has nothing to retry; else
        `w` (with the failed teacher requests it retries)."""
        reused, w.retry = self.reusable(sf, w.marker, w.key, damaged)
        return reused or w

    def units(self, p: PlannedStep, items: list[Unit | Work], resolved: Resolved | None = None) -> list[Unit]:
        """The units of a step stage, in order: the reused ones as they are, the others worked here,
        `workers` parts at once for a step that allows it (an engine that runs them elsewhere
        overrides this). Each unit's files are its own, so the order they finish in changes nothing."""
        works = [item for item in items if isinstance(item, Work)]
        threads = min(self.workers, len(works)) if p.step.concurrent_parts and not p.step.needs_llm else 1
        if threads <= 1:
            return [item if isinstance(item, Unit) else self.work(p, item, resolved) for item in items]
        for w in works:
            self.folder.claim(w.paths())
        with ThreadPoolExecutor(threads) as pool:
            done = iter(list(pool.map(lambda w: run_work(w, self.ctx, resolved, keep_frames=self.small), works)))
        return [item if isinstance(item, Unit) else next(done) for item in items]

    def work(self, p: PlannedStep, w: Work, resolved: Resolved | None = None) -> Unit:
        """One unit of work in this process, its files claimed in the manifest first."""
        self.folder.claim(w.paths())
        return run_work(w, self.ctx, resolved, keep_frames=self.small,
                        timed=lambda work, retried: self.timed(p, work, retried))

    def state_units(self, p: PlannedStep, sf: StepFolder, parts: list[Part], damaged: bool,
                    keep: set[Path]) -> tuple[list[Unit], dict]:
        """A STATE step: each part's state, one `resolve` over all of it, then each part's output."""
        step = p.step
        with PROFILE.stage(f"{p.name} state"):
            made = self.units(p, [self.pending(sf, Work("state", step, p.name, sf.path, i, part, digest(p.hash, "state", part.digest),
                                                    compression=self.compression),
                                               damaged) for i, part in enumerate(parts)])
        for unit in made:
            keep |= unit.files()
        states = [unit.kept[0] for unit in made]
        resolved, resolved_digest = self.resolved(p, sf, parts, states, damaged, keep)
        offsets = np.concatenate([[0], np.cumsum([s.rows for s in states])]).astype(np.int64)
        units = self.units(p, [self.pending(sf, Work("apply", step, p.name, sf.path, i, part,
                                                     digest(p.hash, resolved_digest, part.digest),
                                                     rows=(int(offsets[i]), int(offsets[i + 1])),
                                                     compression=self.compression), damaged)
                               for i, part in enumerate(parts)], resolved)
        return units, resolved.stats

    def resolved(self, p: PlannedStep, sf: StepFolder, parts: list[Part], states: list[Part], damaged: bool,
                 keep: set[Path]) -> tuple[Resolved, str]:
        """The step's `resolve` over every part's state (or its stored answer, if the states are unchanged)."""
        key = digest(p.hash, [s.digest for s in states])
        path, marker = sf.path / "resolved.parquet", sf.path / "resolved.json"
        self.folder.claim([path, marker])
        info = None if damaged else sf.finished(marker, key)
        if info is None:
            step = p.step
            fetch = parts_fetch(parts, step.sources, [s.rows for s in states])
            with self.llm_for(p), PROFILE.stage(f"{p.name} resolve", sum(s.rows for s in states)):
                resolved = step.resolve(self.states(states), self.ctx, fetch)
            sf.write_unit(marker, key, [(path, resolved.rows)], [], {"shared": resolved.shared, "stats": resolved.stats})
            info = read_marker(marker)
            rows = resolved.rows
        else:
            rows = pl.read_parquet(path)
        keep |= {path, marker}
        # the parts' key: everything `apply` is given (a whole-frame fingerprint changes with any row)
        return Resolved(rows, info["shared"], info["stats"]), digest(info["files"]["resolved.parquet"], info["shared"],
                                                                      info["stats"])

    def states(self, states: list[Part]) -> States:
        """Every row's state, from the state parts, for `resolve` to ask (an engine that runs its
        group-bys elsewhere overrides this): here polars, in this process."""
        return PolarsStates(pl.concat([s.frame.lazy() if s.frame is not None else pl.scan_parquet(s.path) for s in states]))

    def frame_unit(self, p: PlannedStep, sf: StepFolder, parts: list[Part], key: str, damaged: bool) -> Unit:
        """A FRAME step: every row gathered, one `run`, the output cut into parts; its marker is the step's."""
        started = time.time()
        marker = sf.path / DONE
        reused, retry = self.reusable(sf, marker, key, damaged)
        if reused:
            return reused
        df = gather(parts)
        mine, others, routed = route(p.step, df)
        del df
        result, facts = self.timed(p, lambda: p.step.run(mine, self.ctx), retry)
        stats = dict(result.stats)
        if routed is not None:
            warn_absent(p.step, routed)
            stats["routed"] = routed
        kept = concat([result.kept, others]) if others is not None else result.kept
        rejected = as_rejects(result.rejected, p.name)
        kept_files = [(sf.kept_path(j), frame) for j, frame in enumerate(cut(kept, self.part_rows))]
        reject_files = [(sf.rejects_path(j), frame) for j, frame in enumerate(cut(rejected, self.part_rows))]
        info = {"step": p.name, "kind": p.step.kind, "hash": p.hash, "inputs": key,
                "config": p.step.model_dump(mode="json"), "rows_in": sum(x.rows for x in parts),
                "rows_out": kept.height, "dropped": reason_counts(rejected),
                **facts, "seconds": round(time.time() - started, 3), **stats, "parts": 1, "parts_reused": 0}
        self.folder.claim([path for path, _ in [*kept_files, *reject_files]] + [marker])
        return sf.write_unit(marker, key, kept_files, reject_files, info, keep_frames=self.small)

    # Helpers -----------------------------------------------------------------------------------
    def reusable(self, sf: StepFolder, marker: Path, key: str, damaged: bool) -> tuple[Unit | None, int]:
        """(the unit of this marker if finished with this key and nothing to retry, else None;
        the failed teacher requests it retries)."""
        info = None if damaged else sf.finished(marker, key)
        if info is None:
            return None, 0
        retry = (info.get("failed_requests") or {}).get("retry", 0)
        if retry:
            log.warning("%s: %d teacher request(s) failed last time; running the step again to retry them "
                        "(the answered ones come from the cache)", sf.path.name, retry)
            return None, retry
        return sf.unit_from(marker, info), 0

    def timed(self, p: PlannedStep, work, retried: int = 0):
        """Run `work` (with the teacher, if the step calls it): its result and the facts a marker keeps."""
        t0 = time.time()
        with self.llm_for(p):
            before = self.teacher.failures()
            result = work()
            failed, for_good = (a - b for a, b in zip(self.teacher.failures(), before))
        facts = {"seconds": round(time.time() - t0, 3)}
        if failed:
            facts["failed_requests"] = {"retry": failed - for_good, "for_good": for_good}
        if retried:
            facts["retried"] = retried
        return result, facts

    @contextmanager
    def llm_for(self, p: PlannedStep):
        """ctx.llm is the teacher while a step that calls it runs."""
        self.ctx.llm = self.teacher.get() if p.step.needs_llm else None
        try:
            yield
        finally:
            self.ctx.llm = None


def run_recipe(recipe: Recipe, out: str | Path, show_progress: bool = True) -> dict:
    """Run every step, write the outputs under `out`, and return the report (also in report.json).

    `out` is held for the run (curate.folder): refused if another run holds it or it holds files
    that are not a run's, and marked incomplete from the first write until the card is written."""
    out = Path(out)
    started = time.time()
    cfg = recipe.config
    ray = None
    if cfg.engine.name == "ray":  # joined before anything is read or written: a wrong address costs nothing
        from curate.engines.ray import RayConnection

        ray = RayConnection(cfg.engine)
        out = out.absolute()  # tasks elsewhere write there, and the folder's paths are built from it
    try:
        with PROFILE.stage("read inputs"):
            inputs = read_inputs(recipe, cfg.engine.part_rows, cfg.engine.local_workers())
    except BaseException:
        if ray is not None:
            ray.close()
        raise
    try:
        with locked(out) as folder:
            plan = plan_steps(recipe, inputs.identities)
            folder.claim(planned_files(recipe, plan, out))
            folder.start(cfg.name)
            write_text(yaml.safe_dump(recipe.raw, sort_keys=False), out / "recipe.yaml")  # overrides applied
            ctx = Context(out_dir=out, seed=cfg.seed, show_progress=show_progress)
            small = inputs.rows <= cfg.engine.part_rows
            workers = cfg.engine.local_workers()
            if ray is None:
                teacher = Teacher(recipe, out, folder, show_progress)
                run = LocalRun(out, folder, cfg.engine.part_rows, ctx, teacher, small=small, workers=workers,
                               compression=cfg.engine.part_compression)
            else:
                from curate.engines.ray import RayRun, RayTeacher

                teacher = RayTeacher(recipe, out, folder, show_progress, connection=ray, engine=cfg.engine)
                run = RayRun(out, folder, cfg.engine.part_rows, ctx, teacher, small=small, connection=ray,
                             workers=workers, compression=cfg.engine.part_compression)  # the driver's own work: inputs, outputs
            sections = StepSections()
            try:
                with PROFILE.stage("write input parts", inputs.rows):
                    first = run.inputs(inputs, inputs_hash(recipe, inputs.identities))
                inputs.close()
                steps, rejects, final = [first.info], list(first.rejects), first.kept
                for p in plan:
                    with PROFILE.stage(p.name, sum(part.rows for part in final)):
                        done = run.step(p, final)
                    steps.append(done.info)
                    rejects += done.rejects
                    final = done.kept
                    with PROFILE.stage(f"{p.name} report section"):
                        sections.add_parts(p.name, p.step, done.kept, done.rejects)
            finally:
                teacher.close()
            # they only read the final parts: at once, longest first
            with PROFILE.stage("data/, records.parquet, rejects.parquet, validation (at once)"):
                done = at_once({
                    "data": lambda: write_splits(final, cfg.output, out, seed=cfg.seed, replaceable=folder.wrote,
                                                 part_rows=cfg.engine.part_rows, claim=folder.claim),
                    "validation": lambda: validate_parts(final, recipe.steps, cfg.checks, cfg.output, save_to=out / "gx"),
                    "records": lambda: write_parts(final, out / "records.parquet", cfg.engine.part_rows),  # every score
                    "rejects": lambda: write_parts(rejects, out / "rejects.parquet", cfg.engine.part_rows),
                }, workers)
            with PROFILE.stage("report (lengths, languages, card)"):
                report = publish_report(recipe, out, steps, final, rejects, done["data"],
                                        seconds=time.time() - started, sections=sections.sections,
                                        validation=done["validation"], workers=workers)
            folder.finish()
    finally:
        inputs.close()
        if ray is not None:
            ray.close()
    return report


