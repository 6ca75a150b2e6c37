"""The step and filter contracts.

A step maps a record DataFrame to a record DataFrame plus the rows it dropped (with a reason).
A filter is a step in two phases: `score(df)` adds `score_<name>*` columns and drops nothing;
`keep(df)` decides from the stored scores only, so re-thresholding never rescores.

Nothing stale is reused. A step's hash (`config_hash`) covers its settings, its code version and
the content of every file it reads; the engine chains it with the inputs' content. Stored scores
carry a fingerprint column (`score_<name>_fingerprint`) saying which filter settings, code version,
files and rows made them; a filter reuses only the scores carrying its own fingerprint and rescores
the rest. Settings that only change `decide` (thresholds) are not in the fingerprint.

Steps are pydantic models: their typed fields are the constructor arguments and exactly the keys
a recipe may give, so a misspelt key is an error instead of a silently ignored setting.

How a step runs is the engine's business; the step only declares what it needs (`execution`):
- BATCHES: row-local. `run` maps a batch of rows to a batch, and no state crosses rows, so an
  engine may cut the data into any batches (the local engine's parts, Ray's blocks).
- STATE: global, through compact per-row state. `state(batch)` gives each row's state (hashes,
  keys, lengths: never the texts); `resolve(States)` answers for the whole dataset, per row
  number; `apply(batch, its row numbers, the answer)` is then row-local again. The engine holds
  the state and answers `resolve`'s questions about it (`States`: a group-by whose groups a
  function of the step's sees whole, a column read in order); the local engine with polars, the
  Ray engine with Ray Data on the cluster. Exact and MinHash dedup and `mix` work this way.
- FRAME: needs every row at once (multi-round generators, selections over embeddings, LLM steps on
  small data); the engine gathers the rows, which the step declares by saying so.
A step never knows which engine runs it. In Python, `run(df)` takes the whole frame whatever the
execution (a STATE step runs as one batch), and filters keep `score`, `keep` and `split`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Iterable, get_args

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from curate.records import FrameDigest, concat, frame_digest, row_hashes
from curate.states import Fetch, GroupFn, PolarsStates, Resolved, States, frame_fetch  # noqa: F401 (the step contract's names)


class _RecipePathMarker:
    """Metadata tag of `RecipePath`."""

    def __repr__(self) -> str:
        return "RecipePath"


# A setting that names a file: in a recipe, a relative value is resolved against the recipe's folder
# (curate.recipe), so a recipe runs from any working directory; in Python it is used as given.
RecipePath = Annotated[str, _RecipePathMarker()]


# Seeds reach polars (u64), numpy, llama.cpp (u32, which wraps) and OpenAI-compatible servers (int64):
# a seed in [0, 2**63) fits them all; one outside fails only where it is first used, after steps ran.
SEED_LIMIT = 2**63


def check_seed(seed: int | None) -> int | None:
    """A seed in [0, SEED_LIMIT), or None (for "the recipe's seed")."""
    if seed is not None and not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"a seed is a whole number from 0 to 2**63 - 1, not {seed}")
    return seed


def path_settings(model: type[BaseModel]) -> list[str]:
    """The fields of a step (or config) class that hold RecipePaths, alone or in a list or dict."""
    def marked(annotation: Any) -> bool:
        if any(isinstance(m, _RecipePathMarker) for m in getattr(annotation, "__metadata__", ())):
            return True
        return any(marked(a) for a in get_args(annotation))

    return [name for name, f in model.model_fields.items()
            if marked(f.annotation) or any(isinstance(m, _RecipePathMarker) for m in f.metadata)]


def file_digest(path: str | Path) -> str:
    """sha256 of a file's content (of a folder: its files' relative names and contents); "missing"
    if there is none. The whole file is read, once per process for each (path, size, mtime, inode):
    sha256 runs at ~1.2 GB/s here, so the embedded 98 MB model costs 0.08 s, where a partial hash
    could miss an edit."""
    p = Path(path)
    if not p.exists():
        return "missing"
    if p.is_dir():
        h = hashlib.sha256()
        for f in sorted(x for x in p.rglob("*") if x.is_file()):
            h.update(f"{f.relative_to(p).as_posix()}\0{file_digest(f)}\0".encode())
        return h.hexdigest()
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _FILE_DIGESTS:
        with open(p, "rb") as f:
            _FILE_DIGESTS[key] = hashlib.file_digest(f, "sha256").hexdigest()
    return _FILE_DIGESTS[key]


_FILE_DIGESTS: dict[tuple, str] = {}


def files_digest(paths: list[str | Path]) -> list[str]:
    """The content digests of files, in order, each file once. Contents only: where a file is
    named by a setting, the path is in the settings already, and a default file (a shipped
    template, the embedded model) may sit at another path on another machine."""
    return [file_digest(p) for p in dict.fromkeys(str(p) for p in paths)]


def embedded_model_file() -> str:
    """The embedded model's GGUF, for `files()` of steps that load it when no model_path is given."""
    from curate.llm.embedded import embedded_model_path

    return str(embedded_model_path())


def digest(*parts: Any) -> str:
    """16 hex digits of sha256 over JSON-able parts (settings, digests): the hashes steps are compared by."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class StepResult:
    """What a step hands back: the surviving rows, the dropped ones and per-step usage numbers."""

    kept: pl.DataFrame
    rejected: pl.DataFrame | None = None  # rows with `reason` (and optional `detail`) columns
    stats: dict[str, Any] = field(default_factory=dict)  # tokens, requests, cost, ...


# How an engine runs a step (`Step.execution`; see the module docstring).
BATCHES = "batches"
STATE = "state"
FRAME = "frame"

@dataclass
class Context:
    """What the engine gives a step: where to keep state, which teacher to use, the run seed."""

    out_dir: Path | None = None
    seed: int = 0
    llm: Any = None  # curate.llm.LLM, built from the recipe's `teacher`
    show_progress: bool = True


class Step(BaseModel):
    """Base class of every step. Subclasses set `kind` (the registry name) and implement `run`."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    kind: ClassVar[str] = "step"
    # Run the step on the rows of these sources only; the engine passes the other rows through
    # unchanged, after the step's own (e.g. answer one input's instructions, then mix with the rest).
    # Routing is the engine's (curate.engine.run_step): score/split/run in Python take the frame given.
    sources: list[str] | None = Field(None, min_length=1)
    # How an engine runs it (BATCHES, STATE or FRAME; see the module docstring). FRAME, the default,
    # is right for any step; BATCHES and STATE let an engine stream or distribute the step.
    execution: ClassVar[str] = FRAME
    # Steps that call an LLM need a Context with one.
    needs_llm: ClassVar[bool] = False
    # May an engine work several parts at once in threads of one process (BATCHES and STATE work)?
    # Yes for numpy and polars work, which releases the GIL; no for a step holding a model or an
    # unguarded cache, the default.
    concurrent_parts: ClassVar[bool] = False
    # Source steps make rows from nothing (Magpie): a recipe may start with one and have no inputs.
    is_source: ClassVar[bool] = False
    # Bump it in the class whose code changed, when the change alters what the step outputs: a
    # rerun then redoes the step instead of reusing the old code's output, and a filter rescores.
    code_version: ClassVar[int] = 1

    @field_validator("seed", check_fields=False)
    @classmethod
    def _seed_in_range(cls, seed: int | None) -> int | None:
        return check_seed(seed)

    @model_validator(mode="after")
    def _min_not_above_max(self):
        """Each setting `min<X>` (min_response_words, min, minn) must not exceed its `max<X>`:
        contradictory bounds would drop every row, or silently mean nothing."""
        for low in type(self).model_fields:
            high = "max" + low[3:]
            if low.startswith("min") and high in type(self).model_fields:
                lo, hi = getattr(self, low), getattr(self, high)
                if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and lo > hi:
                    raise ValueError(f"{low} ({lo}) must not exceed {high} ({hi})")
        return self

    @property
    def is_global(self) -> bool:
        """Does the step need more than one row at a time (dedup, percentile thresholds, anchors)?"""
        return self.execution != BATCHES

    def run(self, df: pl.DataFrame, ctx: Context) -> StepResult:
        """The step on `df`. A STATE step runs it as one batch (`state`, `resolve`, `apply`)."""
        if self.execution != STATE:
            raise NotImplementedError
        return self.apply(df, np.arange(df.height), self.resolve_frame(df, ctx))

    def resolve_frame(self, df: pl.DataFrame, ctx: Context | None = None) -> Resolved:
        """`resolve` over an in-memory frame, as one batch."""
        return self.resolve(PolarsStates(self.state(df).lazy()), ctx or Context(), frame_fetch(df))

    # STATE steps ------------------------------------------------------------------------------
    def state(self, batch: pl.DataFrame) -> pl.DataFrame:
        """Each row's compact state (same rows, same order): what `resolve` needs of it, never its texts."""
        raise NotImplementedError

    def resolve(self, state: States, ctx: Context, fetch: Fetch) -> Resolved:
        """The answer for the whole dataset from every row's state, asked of `state` (its group-bys
        run where the engine holds the state: the step never gathers every row itself). `fetch`
        reads rows back by number, for what the state alone cannot answer (MinHash verifies its
        candidate pairs on their texts)."""
        raise NotImplementedError

    def apply(self, batch: pl.DataFrame, rows: np.ndarray, resolved: Resolved) -> StepResult:
        """A batch's output from its rows, their numbers and `resolved` (at least their results)."""
        raise NotImplementedError

    def columns_named(self) -> list[str]:
        """The data columns the step's settings name (mix's `by`), checked against the inputs'
        columns before any step runs (curate.recipe.check_output_columns)."""
        return []

    def files(self) -> list[str]:
        """Every file the step reads (eval sets, anchors, prompt templates, models), so the step's
        hash covers them by content. By default the files its RecipePath settings name, also in
        nested steps; a step that reads a default file (a shipped template, the embedded model)
        when a setting is empty adds it."""
        out: list[str] = []
        for name in path_settings(type(self)):
            value = getattr(self, name)
            values = value.values() if isinstance(value, dict) else value if isinstance(value, list) else [value]
            out += [str(v) for v in values if v]
        for step in self._nested_steps():
            out += step.files()
        return out

    def code_versions(self) -> list[int]:
        """The code versions of this step's class and its bases (a generator built on another
        inherits its changes) and of nested steps (best_of_n's judge)."""
        own = [c.__dict__["code_version"] for c in type(self).__mro__ if "code_version" in c.__dict__]
        return own + [v for step in self._nested_steps() for v in step.code_versions()]

    def config_hash(self) -> str:
        """Hash of the step's kind, settings, code versions and the content of the files it reads:
        a rerun skips a finished step whose hash (chained with the inputs') is unchanged."""
        return digest(self.kind, self.code_versions(), self.model_dump(mode="json"), files_digest(self.files()))

    def _nested_steps(self) -> list["Step"]:
        return [v for v in (getattr(self, n) for n in type(self).model_fields) if isinstance(v, Step)]


class StaleScores(ValueError):
    """Raised by `decide` when the stored scores cannot answer for these deciding settings (e.g. a
    diversity tau that changes the greedy walk): `split` then rescores, `keep` passes it on."""


# The record columns a filter's scores may be computed from (row content, not bookkeeping).
CONTENT_COLUMNS = ("messages", "reasoning", "answer", "gold")


class Filter(Step):
    """A step that scores rows, then keeps those whose stored scores pass.

    `name` prefixes the score columns (`score_<name>`); a recipe names a second filter of one kind
    `<kind>_2` unless it is given a name. Besides its scores a filter writes
    `score_<name>_fingerprint`: for each row, a hash of what made the scores (the filter's kind,
    code version, scoring settings and files, and the row's content or, when scores relate rows to
    each other, every scored row's content). Scores whose fingerprint is not the one this filter
    would write are someone else's: `split` rescores them, `keep` refuses them.
    Both methods accept a polars DataFrame or a `datasets.Dataset` and return the same type.
    """

    name: str = ""
    # Settings that only change `decide` (thresholds, top fractions): a new value re-thresholds
    # the stored scores; every other setting is a scoring setting and a new value rescores.
    decide_settings: ClassVar[tuple[str, ...]] = ()
    # True when each row's scores depend on that row alone: then only rows whose scores are not
    # this filter's own are rescored. False (dedup, diversity): the scores belong to the whole
    # frame scored, and any change of rows rescores them all.
    row_local: ClassVar[bool] = False

    @property
    def execution(self) -> str:  # type: ignore[override]
        """Row-local scores and decisions run batch by batch; a filter whose scores relate rows
        says how it runs (STATE for dedup, FRAME for the others)."""
        return BATCHES if self.row_local else FRAME

    @property
    def column(self) -> str:
        return f"score_{self.name or self.kind}"

    @property
    def fingerprint_column(self) -> str:
        return f"{self.column}_fingerprint"

    def score(self, df):
        """Add this filter's score columns and their fingerprint (replacing any stored ones); drop nothing."""
        frame, back = as_polars(df)
        return back(self._score(frame))

    def keep(self, df) -> tuple[pl.Series, pl.Series]:
        """A boolean mask and, for each dropped row, a reason (null where kept), from stored scores
        (a frame of the score columns alone will do)."""
        frame, _ = as_polars(df, need_records=False)
        missing = [c for c in self.score_columns() if c not in frame.columns]
        if missing:
            raise ValueError(f"{self.kind}: keep() needs score columns {missing}; call score() first")
        foreign = int((~self.owned(frame)).sum())
        if foreign:
            raise ValueError(
                f"{self.kind}: {foreign} of {frame.height} rows carry {self.column}* scores this filter did not "
                "make with these scoring settings, code, files and rows; rescore them with score() or split(), "
                "or stamp() scores you made with these settings")
        return self.decide(frame)

    def split(self, df):
        """(kept, rejected): rescore what is not this filter's own, then split; rejected rows carry
        `filter`, `reason` and `detail`."""
        frame, back = as_polars(df)
        own = self.owned(frame)
        just_scored = False
        if not own.all() or not self._has_scores(frame):
            frame, just_scored = self._rescore(frame, own)
        try:
            mask, reason, detail = self.decide_and_explain(frame, just_scored)
        except StaleScores:
            if not own.any():  # every score is fresh: rescoring again would not help
                raise
            frame = self._score(frame)
            mask, reason, detail = self.decide_and_explain(frame, just_scored=True)
        rejected = frame.filter(~mask)
        if len(detail) != rejected.height:
            raise ValueError(f"{self.kind}: decide_and_explain gave {len(detail)} details for {rejected.height} rejected rows")
        rejected = rejected.with_columns(
            reason.filter(~mask).alias("reason"),
            detail.alias("detail"),
            pl.lit(self.name or self.kind).alias("filter"),
        )
        return back(frame.filter(mask)), back(rejected)

    def run(self, df: pl.DataFrame, ctx: Context) -> StepResult:
        kept, rejected = self.split(df)
        return StepResult(kept=kept, rejected=rejected.drop("filter"))

    # Fingerprints ----------------------------------------------------------------------------
    def scoring_settings(self) -> dict[str, Any]:
        """The settings that shape the scores: all but `decide_settings`, the column `name` and
        the `sources` routing."""
        skip = {"name", "sources", *self.decide_settings}
        return {k: v for k, v in self.model_dump(mode="json").items() if k not in skip}

    def fingerprint(self) -> str:
        """Hash of what makes this filter's scores, rows aside: kind, code versions, scoring
        settings and the content of the files it reads."""
        return digest(self.kind, self.code_versions(), self.scoring_settings(), files_digest(self.files()))

    def reads(self, df: pl.DataFrame) -> list[str]:
        """The columns of `df` the scores are computed from; with scores that relate rows to each
        other, `id` too (they name other rows by id)."""
        wanted = CONTENT_COLUMNS if self.row_local else ("id", *CONTENT_COLUMNS)
        return [c for c in wanted if c in df.columns]

    def marks(self, df: pl.DataFrame) -> pl.Series:
        """The fingerprint column this filter would write on `df`: per row, the fingerprint hashed
        with the row's content (row-local scores) or with the whole frame's content."""
        fp = self.fingerprint()
        content = df.select(self.reads(df))
        if self.row_local and content.width:
            values = content.hash_rows(seed=int(fp, 16)).cast(pl.String)
        else:
            values = pl.repeat(self._whole_mark(frame_digest(content)), df.height, dtype=pl.String, eager=True)
        return values.alias(self.fingerprint_column)

    def _whole_mark(self, content_digest: str) -> str:
        """The fingerprint value of scores that relate rows: of this filter and of every row scored together."""
        return str(int(digest(self.fingerprint(), content_digest), 16))

    def owned(self, df) -> pl.Series:
        """For each row: are its stored scores this filter's own (made with these scoring
        settings, code and files, on this content)?"""
        frame, _ = as_polars(df, need_records=False)
        if not self._has_scores(frame) or self.fingerprint_column not in frame.columns:
            return pl.Series("owned", [False] * frame.height, dtype=pl.Boolean)
        return (frame[self.fingerprint_column] == self.marks(frame)).fill_null(False).alias("owned")

    def stamp(self, df):
        """Write this filter's fingerprint beside score columns already in `df`, declaring them
        made by this filter with these settings: for scores computed elsewhere (another tool, a
        test) that should be re-thresholded rather than rescored."""
        frame, back = as_polars(df, need_records=False)
        missing = [c for c in self.score_columns() if c not in frame.columns]
        if missing:
            raise ValueError(f"{self.kind}: stamp() needs score columns {missing}")
        return back(frame.with_columns(self.marks(frame)))

    def _has_scores(self, frame: pl.DataFrame) -> bool:
        return all(c in frame.columns for c in self.score_columns())

    def _score(self, frame: pl.DataFrame) -> pl.DataFrame:
        """compute_scores on a frame cleared of this filter's stored columns, then the fingerprint."""
        frame = frame.drop([*self.score_columns(), self.fingerprint_column], strict=False)
        scored = self.compute_scores(frame)
        return scored.with_columns(self.marks(scored))

    def _rescore(self, frame: pl.DataFrame, own: pl.Series) -> tuple[pl.DataFrame, bool]:
        """Score the rows whose scores are not this filter's own: only those rows if scores are
        row-local and some are reusable, else the whole frame. Also says whether it scored every row."""
        if not (self.row_local and own.any() and self._has_scores(frame)):
            return self._score(frame), True
        rows = frame.with_row_index("_curate_row")
        fresh = self._score(rows.filter(~own))
        # rechunk: polars 2.1 panics on eager expressions mixing the differently chunked columns
        # that concat + sort leave
        merged = pl.concat([rows.filter(own), fresh], how="diagonal_relaxed").sort("_curate_row")
        return merged.drop("_curate_row").rechunk(), False

    # STATE filters (dedup) -------------------------------------------------------------------
    # They implement `state`, `resolve` (per row: the scores that differ from the defaults, a
    # `reason` for the rows dropped and their `detail` unless `explain` gives it from their own
    # scores; in `shared`, the fingerprint from `resolved_fingerprint`) and `resolved_scores`.
    def content_hashes(self, batch: pl.DataFrame) -> np.ndarray:
        """Each row's hash of the columns the scores are computed from, for `resolved_fingerprint`."""
        return row_hashes(batch.select(self.reads(batch)))

    def resolved_fingerprint(self, hashes: Iterable[np.ndarray], fetch: Fetch) -> str:
        """The fingerprint `marks` writes on the whole frame, from each row's `content_hashes`
        (given in row order, a chunk at a time)."""
        wanted = ("id", *CONTENT_COLUMNS)
        schema = next(fetch(np.zeros(0, np.int64), list(wanted))).drop("row").schema
        whole = FrameDigest(schema)
        for chunk in hashes:
            whole.update_hashes(chunk)
        return self._whole_mark(whole.hexdigest())

    def resolved_scores(self, batch: pl.DataFrame, rows: np.ndarray, resolved: Resolved) -> pl.DataFrame:
        """STATE filters: `batch` (rows numbered `rows`) with its score columns, from `resolved`."""
        raise NotImplementedError

    def apply(self, batch: pl.DataFrame, rows: np.ndarray, resolved: Resolved) -> StepResult:
        """What `run` (split) gives for these rows of the whole frame: the scores and decisions of
        `resolved`, and the whole-frame fingerprint."""
        frame = batch.drop([*self.score_columns(), self.fingerprint_column], strict=False)
        scored = self.resolved_scores(frame, rows, resolved).with_columns(
            pl.repeat(resolved.shared["fingerprint"], frame.height, dtype=pl.String, eager=True).alias(self.fingerprint_column))
        why = resolved.aligned(rows, {"reason": pl.String, "detail": pl.String})
        mask = why["reason"].is_null()
        rejected = scored.filter(~mask)
        detail = why["detail"].filter(~mask) if "detail" in resolved.rows.columns else self.explain(rejected)
        return StepResult(kept=scored.filter(mask), rejected=rejected.with_columns(
            why["reason"].filter(~mask), detail.alias("detail")))

    # What subclasses implement -------------------------------------------------------------
    def score_columns(self) -> list[str]:
        """The columns compute_scores adds (keep() checks they are there)."""
        return [self.column]

    def compute_scores(self, df: pl.DataFrame) -> pl.DataFrame:
        raise NotImplementedError

    def decide(self, df: pl.DataFrame) -> tuple[pl.Series, pl.Series]:
        """(keep mask, reason): the reason is a short stable category ("exact duplicate"), so the
        report can count rows per reason; row-specific facts go in `explain`."""
        raise NotImplementedError

    def thresholds(self) -> dict[str, list[float]]:
        """Cut-offs per score column, drawn on the report's histograms (none by default)."""
        return {}

    def score_ranges(self) -> dict[str, tuple[float | None, float | None]]:
        """The values each score column can take, checked by the final-data validation."""
        return {}

    def explain(self, df: pl.DataFrame) -> pl.Series:
        """Optional detail for each row of `df` (e.g. which row it duplicates); null by default.
        split() calls it on the rejected rows alone: a filter whose detail depends on other rows
        than the one explained (percentile bounds, clusters) overrides `decide_and_explain`."""
        return pl.Series("detail", [None] * len(df), dtype=pl.String)

    def decide_and_explain(self, df: pl.DataFrame, just_scored: bool = False) -> tuple[pl.Series, pl.Series, pl.Series]:
        """split()'s one call: (keep mask, reason, detail of each rejected row, in order). Details
        are computed for the rejected rows only. `just_scored`: split() scored every row a moment
        ago with these settings, deciding ones included, so a filter whose scoring already decided
        (MinHash's clusters) may read the decision off its scores instead of redoing it."""
        mask, reason = self.decide(df)
        return mask, reason, self.explain(df.filter(~mask))


def reasons(mask: pl.Series, reason: pl.Series | str) -> tuple[pl.Series, pl.Series]:
    """Pair a keep-mask with a reason that is null on kept rows (helper for `decide`)."""
    if isinstance(reason, str):
        reason = pl.Series([reason] * len(mask), dtype=pl.String)
    return mask.alias("keep"), pl.select(pl.when(mask).then(None).otherwise(reason)).to_series().alias("reason")


def as_polars(df, need_records: bool = True):
    """Accept a polars DataFrame or a datasets.Dataset, of records or of a shape curate reads
    (Alpaca, ShareGPT, prompt/response: `as_records`); return the record frame and a function
    giving a result back in the caller's type and shape. Without `need_records` (deciding from
    stored scores) a frame of no shape curate reads is taken as it is."""
    if isinstance(df, pl.DataFrame):
        frame, to_type = df, (lambda x: x)
    else:
        try:
            import datasets
        except ImportError:  # pragma: no cover - datasets is a core dependency
            datasets = None
        if datasets is None or not isinstance(df, datasets.Dataset):
            raise TypeError(f"expected a polars DataFrame or a datasets.Dataset, got {type(df).__name__}")
        frame, to_type = pl.from_arrow(df.data.table), datasets.Dataset.from_polars
    if "messages" in frame.columns:
        return frame, to_type
    try:
        records, back = as_records(frame)
    except ValueError:
        if need_records:
            raise
        return frame, to_type
    return records, lambda x: to_type(back(x))


# While a filter runs on a frame that is not records, the caller's columns named like record
# columns (its own `id`, `source`) wait under this prefix, and come back as they were.
_WAITING = "__curate_input_"


def as_records(frame: pl.DataFrame) -> tuple[pl.DataFrame, Any]:
    """A frame in a shape curate reads (Alpaca instruction/input/output, ShareGPT conversations,
    prompt/response: curate.io.to_records) as records with every column of the frame beside them,
    and a function taking a result (the frame, or rows of it with columns added) back to the
    frame's own columns plus the added ones (scores, reasons). Another shape is a ValueError
    saying what to call."""
    from curate.errors import CurateError
    from curate.io import to_records
    from curate.records import SCHEMA

    try:
        records = to_records(frame, origin="the frame given")
    except CurateError as exc:
        raise ValueError(f"{exc}. Filters take records (a 'messages' column of {{role, content}} turns) or Alpaca "
                         "(instruction/input/output), ShareGPT (conversations) or prompt/response columns; map any "
                         "other frame first with curate.io.to_records(df, prompt=..., response=...)") from None
    waiting = {c: _WAITING + c for c in frame.columns if c in SCHEMA}
    work = pl.concat([records.select(list(SCHEMA)), frame.rename(waiting)], how="horizontal")

    def back(result: pl.DataFrame) -> pl.DataFrame:
        added = [c for c in result.columns if c not in work.columns]
        return result.select([waiting.get(c, c) for c in frame.columns] + added).rename({w: c for c, w in waiting.items()})

    return work, back


__all__ = ["Step", "Filter", "BATCHES", "STATE", "FRAME", "States", "PolarsStates", "GroupFn", "Resolved", "Fetch", "frame_fetch", "SEED_LIMIT", "check_seed", "StaleScores", "StepResult", "Context", "RecipePath", "reasons", "concat", "digest",
           "file_digest", "files_digest", "embedded_model_file"]
