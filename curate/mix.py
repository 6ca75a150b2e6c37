"""`mix`: sample a mixture of sources to requested weights or quotas, in rows or tokens.

Give either `weights` (shares of the total, normalised) or `quotas` (absolute amounts per source).
With weights and no `total`, the total is the largest one every source can fill. Each source is
shuffled with the recipe seed and cut at its target (rows: exactly; tokens: the row prefix whose
token sum comes closest to the target). A source that cannot fill its target gives everything it
has, and the shortfall is reported. Rows left out go to rejects with reason "over mixture quota".
Tokens are counted with the embedded model's tokenizer (SmolLM2, vocab only), so the budget means
model tokens, not words.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
import polars as pl
from pydantic import Field, model_validator

from curate.errors import CurateError
from curate.records import message_text
from curate.steps import Context, Step, StepResult, embedded_model_file


def count_tokens(texts: list[str]) -> np.ndarray:
    """Token counts with the embedded model's tokenizer (loaded vocab-only, once)."""
    from curate.llm.embedded import load_tokenizer

    tok = load_tokenizer()
    return np.array([len(tok.tokenize(t.encode("utf-8"), add_bos=False, special=True)) if t else 0 for t in texts])


class Mix(Step):
    kind: ClassVar[str] = "mix"
    code_version: ClassVar[int] = 1
    is_global: ClassVar[bool] = True
    weights: dict[str, float] | None = None
    quotas: dict[str, float] | None = None
    unit: Literal["rows", "tokens"] = "rows"
    total: float | None = Field(None, gt=0)
    seed: int | None = None  # default: the recipe's seed

    @model_validator(mode="after")
    def _one_spec(self):
        if (self.weights is None) == (self.quotas is None):
            raise ValueError("give exactly one of weights or quotas")
        spec = self.weights or self.quotas
        if not spec or any(v < 0 for v in spec.values()) or sum(spec.values()) <= 0:
            raise ValueError("weights/quotas must be non-negative and not all zero")
        if self.quotas is not None and self.total is not None:
            raise ValueError("total goes with weights, not quotas")
        return self

    def files(self) -> list[str]:
        """Token counts come from the embedded model's tokenizer."""
        return super().files() + ([embedded_model_file()] if self.unit == "tokens" else [])

    def run(self, df: pl.DataFrame, ctx: Context) -> StepResult:
        spec = self.weights or self.quotas
        have = set(df["source"].unique().to_list())
        missing = sorted(set(spec) - have)
        if missing:
            raise CurateError(f"mix: no rows from source(s) {missing}; the data has {sorted(have, key=str)}")
        seed = ctx.seed if self.seed is None else self.seed
        df = df.with_row_index("_row").sample(fraction=1.0, shuffle=True, seed=seed)
        size = (count_tokens(message_text(df, "text").to_list()) if self.unit == "tokens"
                else np.ones(df.height, dtype=np.int64))
        df = df.with_columns(pl.Series("_size", size))
        available = {s: int(df.filter(pl.col("source") == s)["_size"].sum()) for s in spec}
        if self.quotas is not None:
            target = {s: float(q) for s, q in self.quotas.items()}
        else:
            norm = sum(self.weights.values())
            shares = {s: w / norm for s, w in self.weights.items()}
            total = self.total or min(available[s] / shares[s] for s in shares if shares[s] > 0)
            target = {s: total * shares[s] for s in shares}
        take = np.zeros(df.height, dtype=bool)
        sources = df["source"].to_numpy()
        realized = {}
        for s, want in target.items():
            idx = np.flatnonzero(sources == s)
            cum = np.cumsum(size[idx])
            # the prefix whose sum is closest to the target (ties to the shorter one)
            k = int(np.searchsorted(cum, want, side="left"))
            if k < len(cum) and (k == 0 or abs(cum[k] - want) < abs(cum[k - 1] - want)):
                k += 1
            take[idx[:k]] = True
            realized[s] = int(cum[k - 1]) if k else 0
        grand = sum(realized.values()) or 1
        want_total = sum(target.values()) or 1
        mix = {s: {"requested": round(target[s], 3), "requested_share": round(target[s] / want_total, 6),
                   "realized": realized[s], "realized_share": round(realized[s] / grand, 6),
                   "available": available[s], "shortfall": round(max(target[s] - available[s], 0), 3)}
               for s in target}
        kept = df.filter(pl.Series(take)).sort("_row").drop("_row", "_size")
        rejected = df.filter(~pl.Series(take)).sort("_row").drop("_row", "_size").with_columns(
            pl.when(pl.col("source").is_in(list(target))).then(pl.lit("over mixture quota"))
            .otherwise(pl.lit("source not in the mixture")).alias("reason"))
        return StepResult(kept=kept, rejected=rejected, stats={"mix": {"unit": self.unit, "sources": mix}})
