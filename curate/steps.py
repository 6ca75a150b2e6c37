"""The step and filter contracts.

A step maps a record DataFrame to a record DataFrame plus the rows it dropped (with a reason).
A filter is a step in two phases: `score(df)` adds `score_<name>*` columns and drops nothing;
`keep(df)` decides from the stored scores only, so re-thresholding never rescores.

Steps are pydantic models: their typed fields are the constructor arguments and exactly the keys
a recipe may give, so a misspelt key is an error instead of a silently ignored setting.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, get_args

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from curate.records import concat


class _RecipePathMarker:
    """Metadata tag of `RecipePath`."""

    def __repr__(self) -> str:
        return "RecipePath"


# A setting that names a file: in a recipe, a relative value is resolved against the recipe's folder
# (curate.recipe), so a recipe runs from any working directory; in Python it is used as given.
RecipePath = Annotated[str, _RecipePathMarker()]


def path_settings(model: type[BaseModel]) -> list[str]:
    """The fields of a step (or config) class that hold RecipePaths, alone or in a list or dict."""
    def marked(annotation: Any) -> bool:
        if any(isinstance(m, _RecipePathMarker) for m in getattr(annotation, "__metadata__", ())):
            return True
        return any(marked(a) for a in get_args(annotation))

    return [name for name, f in model.model_fields.items()
            if marked(f.annotation) or any(isinstance(m, _RecipePathMarker) for m in f.metadata)]


@dataclass
class StepResult:
    """What a step hands back: the surviving rows, the dropped ones and per-step usage numbers."""

    kept: pl.DataFrame
    rejected: pl.DataFrame | None = None  # rows with `reason` (and optional `detail`) columns
    stats: dict[str, Any] = field(default_factory=dict)  # tokens, requests, cost, ...


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
    # Global steps need the whole dataset at once (dedup, percentile thresholds, anchors).
    is_global: ClassVar[bool] = False
    # Steps that call an LLM need a Context with one.
    needs_llm: ClassVar[bool] = False
    # Source steps make rows from nothing (Magpie): a recipe may start with one and have no inputs.
    is_source: ClassVar[bool] = False

    def run(self, df: pl.DataFrame, ctx: Context) -> StepResult:
        raise NotImplementedError

    def config_hash(self) -> str:
        """Hash of the step's kind and settings: a rerun skips a finished step whose hash is unchanged."""
        canon = json.dumps({"kind": self.kind, **self.model_dump(mode="json")}, sort_keys=True)
        return hashlib.sha256(canon.encode()).hexdigest()[:16]


class Filter(Step):
    """A step that scores rows, then keeps those whose stored scores pass.

    `name` prefixes the score columns (`score_<name>`); set it to run one filter kind twice.
    Both methods accept a polars DataFrame or a `datasets.Dataset` and return the same type.
    """

    name: str = ""

    @property
    def column(self) -> str:
        return f"score_{self.name or self.kind}"

    def score(self, df):
        """Add this filter's score columns; drop nothing."""
        frame, back = _as_polars(df)
        return back(self.compute_scores(frame))

    def keep(self, df) -> tuple[pl.Series, pl.Series]:
        """A boolean mask and, for each dropped row, a reason (null where kept), from stored scores."""
        frame, _ = _as_polars(df)
        missing = [c for c in self.score_columns() if c not in frame.columns]
        if missing:
            raise ValueError(f"{self.kind}: keep() needs score columns {missing}; call score() first")
        return self.decide(frame)

    def split(self, df):
        """(kept, rejected): score if needed, then split; rejected rows carry `filter` and `reason`."""
        frame, back = _as_polars(df)
        if any(c not in frame.columns for c in self.score_columns()):
            frame = self.compute_scores(frame)
        mask, reason = self.decide(frame)
        kept = frame.filter(mask)
        rejected = frame.with_columns(
            reason.alias("reason"),
            self.explain(frame).alias("detail"),
            pl.lit(self.name or self.kind).alias("filter"),
        )
        return back(kept), back(rejected.filter(~mask))

    def run(self, df: pl.DataFrame, ctx: Context) -> StepResult:
        kept, rejected = self.split(df)
        return StepResult(kept=kept, rejected=rejected.drop("filter"))

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
        """Optional per-row detail for dropped rows (e.g. which row it duplicates); null by default."""
        return pl.Series("detail", [None] * len(df), dtype=pl.String)


def reasons(mask: pl.Series, reason: pl.Series | str) -> tuple[pl.Series, pl.Series]:
    """Pair a keep-mask with a reason that is null on kept rows (helper for `decide`)."""
    if isinstance(reason, str):
        reason = pl.Series([reason] * len(mask), dtype=pl.String)
    return mask.alias("keep"), pl.select(pl.when(mask).then(None).otherwise(reason)).to_series().alias("reason")


def _as_polars(df):
    """Accept a polars DataFrame or a datasets.Dataset; return the frame and a function converting back."""
    if isinstance(df, pl.DataFrame):
        return df, lambda x: x
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a core dependency
        datasets = None
    if datasets is not None and isinstance(df, datasets.Dataset):
        return pl.from_arrow(df.data.table), datasets.Dataset.from_polars
    raise TypeError(f"expected a polars DataFrame or a datasets.Dataset, got {type(df).__name__}")


__all__ = ["Step", "Filter", "StepResult", "Context", "RecipePath", "reasons", "concat"]
