"""`mix`: sample a mixture of sources to requested weights or quotas, in rows or tokens.

Give either `weights` (shares of the total, normalised) or `quotas` (absolute amounts per source).
`by` names the column whose values the weights name: `source` by default, or any input column
kept beside the records (`by: category` mixes an Alpaca file's categories to the weights).
With weights and no `total`, the total is the largest one every source can fill. Each source is
shuffled with the recipe seed and cut at its target (rows: exactly; tokens: the row prefix whose
token sum comes closest to the target). A source that cannot fill its target gives everything it
has, and the shortfall is reported. Rows left out go to rejects with reason "over mixture quota".
In tokens, a row counts the tokens of its turns' contents (curate/tokens.py), with `tokenizer`: a
tokenizer.json, a folder holding one, or a Hugging Face model id in the local cache; by default
SmolLM2's, the embedded teacher's (no model backend is loaded either way). The run report counts its
lengths with the same tokenizer.
"""

from __future__ import annotations

from functools import partial
from typing import ClassVar, Literal

import numpy as np
import polars as pl
from pydantic import Field, field_validator, model_validator

from curate.errors import CurateError
from curate.states import Resolved, States
from curate.steps import STATE, Context, RecipePath, Step, StepResult
from curate.tokens import message_tokens, token_counter, tokenizer_file


class Mix(Step):
    kind: ClassVar[str] = "mix"
    code_version: ClassVar[int] = 2  # 2: a row's tokens are its turns' tokens, without the newlines that joined them
    # Global through its state: each row's source and size; `resolve` draws the mixture from them.
    execution: ClassVar[str] = STATE
    weights: dict[str, float] | None = None
    quotas: dict[str, float] | None = None
    by: str = "source"  # the column whose values `weights` / `quotas` name
    unit: Literal["rows", "tokens"] = "rows"
    total: float | None = Field(None, gt=0)
    seed: int | None = None  # default: the recipe's seed
    tokenizer: RecipePath | None = None  # unit tokens: see the module doc; default SmolLM2's

    @model_validator(mode="after")
    def _one_spec(self):
        if (self.weights is None) == (self.quotas is None):
            raise ValueError("give exactly one of weights or quotas")
        spec = self.weights or self.quotas
        if not spec or any(v < 0 for v in spec.values()) or sum(spec.values()) <= 0:
            raise ValueError("weights/quotas must be non-negative and not all zero")
        if self.quotas is not None and self.total is not None:
            raise ValueError("total goes with weights, not quotas")
        if self.tokenizer is not None and self.unit != "tokens":
            raise ValueError("tokenizer goes with unit: tokens")
        return self

    @field_validator("tokenizer")
    @classmethod
    def _tokenizer_is_here(cls, value: str | None) -> str | None:
        """A tokenizer that is not on this machine is a recipe error, before any step runs."""
        if value is not None:
            try:
                tokenizer_file(value)
            except CurateError as exc:
                raise ValueError(str(exc)) from None
        return value

    def files(self) -> list[str]:
        """The tokenizer file counts (a model id names no file: the cached file it resolves to)."""
        own = [f for f in super().files() if f != self.tokenizer]
        return own + ([str(token_counter(self.tokenizer).path)] if self.unit == "tokens" else [])

    def columns_named(self) -> list[str]:
        return [self.by]

    def state(self, batch: pl.DataFrame) -> pl.DataFrame:
        """Each row's value of `by` (as text: the recipe names the values as text) and size (1, or its tokens)."""
        if self.by not in batch.columns:
            raise CurateError(f"mix.by: no column {self.by!r} in the data; its columns are {', '.join(batch.columns)}")
        counter = token_counter(self.tokenizer) if self.unit == "tokens" else None
        size = message_tokens(batch, counter)["text"].cast(pl.Int64) if counter else pl.repeat(1, batch.height, dtype=pl.Int64, eager=True)
        return pl.DataFrame({"key": batch[self.by].cast(pl.String), "size": size})

    def resolve(self, state: States, ctx: Context, fetch) -> Resolved:
        """The rows left out (with their reason): per value of `by`, its rows and size (a group-by),
        then each value's target and, in a group-by again, its rows taken in the seed's order."""
        available = dict(state.groups(["key"], totals, ["size"]).select("key", "size").iter_rows())
        spec = self.weights or self.quotas
        missing = sorted(set(spec) - set(available))
        if missing:
            what = "source(s)" if self.by == "source" else f"{self.by} value(s)"
            raise CurateError(f"mix: no rows from {what} {missing}; the data has {sorted(available, key=str)}")
        if self.quotas is not None:
            target = {s: float(q) for s, q in self.quotas.items()}
        else:
            norm = sum(self.weights.values())
            shares = {s: w / norm for s, w in self.weights.items()}
            total = self.total or min(available[s] / shares[s] for s in shares if shares[s] > 0)
            target = {s: total * shares[s] for s in shares}
        seed = ctx.seed if self.seed is None else self.seed
        left = state.groups(["key"], partial(left_out, n=state.rows, seed=seed, target=target), ["size"]).sort("row")
        not_taken = dict(left.group_by("key").agg(pl.col("size").sum()).iter_rows())
        realized = {s: int(available[s] - not_taken.get(s, 0)) for s in target}
        grand = sum(realized.values()) or 1
        want_total = sum(target.values()) or 1
        mix = {s: {"requested": round(target[s], 3), "requested_share": round(target[s] / want_total, 6),
                   "realized": realized[s], "realized_share": round(realized[s] / grand, 6),
                   "available": int(available[s]), "shortfall": round(max(target[s] - available[s], 0), 3)}
               for s in target}
        left_out_rows = left.select(
            "row", pl.when(pl.col("key").is_in(list(target))).then(pl.lit("over mixture quota"))
            .otherwise(pl.lit(f"{self.by} not in the mixture")).alias("reason"))
        stats = {"unit": self.unit, "sources": mix, **({"tokenizer": token_counter(self.tokenizer).name}
                                                        if self.unit == "tokens" else {}),
                 **({"by": self.by} if self.by != "source" else {})}
        return Resolved(left_out_rows, stats={"mix": stats})

    def apply(self, batch: pl.DataFrame, rows: np.ndarray, resolved: Resolved) -> StepResult:
        reason = resolved.aligned(rows, {"reason": pl.String})["reason"]
        out = reason.is_not_null()
        return StepResult(kept=batch.filter(~out), rejected=batch.filter(out).with_columns(reason.filter(out)),
                          stats=resolved.stats)


def totals(frame: pl.DataFrame) -> pl.DataFrame:
    """Mix's first group-by (`States.groups`): each value of `by` with its rows' total size."""
    return frame.group_by("key").agg(pl.col("size").sum())


def left_out(frame: pl.DataFrame, n: int, seed: int, target: dict[str, float]) -> pl.DataFrame:
    """Mix's second group-by (`States.groups`): the rows of `frame` not taken, with their value of
    `by` and size. Of each value's rows, taken in the order of the seed's shuffle of all n rows (a
    permutation that depends on n and the seed only), the prefix whose size sum comes closest to
    the value's target (ties to the shorter one); values without a target give none."""
    order = pl.int_range(n, eager=True).sample(fraction=1.0, shuffle=True, seed=seed).to_numpy()
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    frame = frame.with_columns(pl.Series("rank", rank[frame["row"].to_numpy()])).sort("rank")
    keys, size = frame["key"].to_numpy(), frame["size"].to_numpy()
    take = np.zeros(frame.height, dtype=bool)
    for s, want in target.items():
        idx = np.flatnonzero(keys == s)
        cum = np.cumsum(size[idx])
        k = int(np.searchsorted(cum, want, side="left"))
        if k < len(cum) and (k == 0 or abs(cum[k] - want) < abs(cum[k - 1] - want)):
            k += 1
        take[idx[:k]] = True
    return frame.filter(~pl.Series(take)).select("row", "key", "size")
