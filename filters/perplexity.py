"""Perplexity of the response given its prompt, and of the whole text, under a small LM.

PPL = exp(mean NLL) over the scored tokens (methods.md notation: exp(-ℓ(A|C)/|A|)). Very high
perplexity flags noise, very low flags templated or repetitive text, so thresholds are often a
two-sided band; as CCNet (Wenzek et al. 2019) advises they are best set as dataset percentiles
rather than absolute values. `buckets()` gives CCNet's head/middle/tail report (cut at the 30th
and 60th percentiles, as `cc_net.perplexity.PerplexityBucket`).

Spans: tokens of the context and of the target are taken separately and concatenated, so the
response span is exact (see curate.llm.scoring). The whole-text perplexity is over every token but
the first (nothing predicts it; the embedded model adds no BOS).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import numpy as np
import polars as pl
from pydantic import Field, model_validator

from curate.llm.scorers import ScorerKind, check_options, get_scorer
from curate.records import message_text
from curate.steps import BATCHES, FRAME, Filter, RecipePath, as_polars, embedded_model_file, reasons


# Shared with filters.ifd and filters.nuggets ---------------------------------------------------
class LikelihoodFilter(Filter):
    """A filter that scores with token log-probs: which scorer (`curate.llm.scorers`), which model,
    and the scorer's options (vllm: engine settings such as max_model_len or
    gpu_memory_utilization; a teacher with the same model and settings shares the engine)."""

    scorer: ScorerKind = "llama_cpp"
    model_path: RecipePath | None = None  # a GGUF; transformers and vllm also an HF folder or hub id
    scorer_options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_scorer_options(self):
        check_options(self.scorer, self.scorer_options)
        return self

    def files(self) -> list[str]:
        return super().files() + ([] if self.model_path else [embedded_model_file()])

    def load_scorer(self):
        return get_scorer(self.scorer, self.model_path, **self.scorer_options)


def fit_target(scorer, context: str, target: str, max_tokens: int) -> tuple[str, bool]:
    """Cut `target` (at a character boundary) so context + target fit in `max_tokens` tokens, as
    the papers truncate to max_length. Returns (target, truncated); target is "" if the context
    alone fills the budget."""
    budget = max_tokens - len(scorer.tokenize(context))
    if budget <= 0:
        return "", bool(target)
    if len(scorer.tokenize(target)) <= budget:
        return target, False
    lo, hi = 0, len(target)  # longest prefix (in characters) that tokenizes within the budget
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(scorer.tokenize(target[:mid])) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return target[:lo], True


def mean_nll(logprobs: np.ndarray) -> float | None:
    """Mean negative log-likelihood in nats per token; None when no token was scored."""
    return float(-logprobs.mean()) if len(logprobs) else None


def percentile(values: pl.Series, q: float) -> float | None:
    """Linear-interpolation percentile (numpy's default) of the non-null values."""
    v = values.drop_nulls().drop_nans().to_numpy()
    return float(np.percentile(v, q)) if len(v) else None


def ccnet_buckets(values: pl.Series, head: float = 30, tail: float = 60) -> pl.Series:
    """CCNet's perplexity buckets: "head" below the `head` percentile, "middle" below the `tail`
    percentile, else "tail"; null where the value is null."""
    lo, hi = percentile(values, head), percentile(values, tail)
    if lo is None:
        return pl.Series("bucket", [None] * len(values), dtype=pl.String)
    return pl.select(
        pl.when(values.is_null() | values.is_nan()).then(None)
        .when(values < lo).then(pl.lit("head"))
        .when(values < hi).then(pl.lit("middle"))
        .otherwise(pl.lit("tail"))
    ).to_series().alias("bucket")


class Perplexity(LikelihoodFilter):
    """Scores `score_perplexity_response` = PPL(response | prompt) and `score_perplexity_text` =
    PPL(whole text), with token counts; keeps rows inside [min, max] (absolute) and/or
    [min_percentile, max_percentile] (of this dataset's scores) on the column chosen by `on`.

    template: "chat" renders the prompt turns with the scorer model's chat template up to the
    assistant turn (what an instruct model sees when it answers); "plain" is the prompt text and a
    blank line. Responses longer than `max_length` tokens (with the prompt) are cut, as in Cherry.
    """

    kind: ClassVar[str] = "perplexity"
    code_version: ClassVar[int] = 1
    row_local: ClassVar[bool] = True
    decide_settings: ClassVar[tuple[str, ...]] = ("max", "min", "max_percentile", "min_percentile", "on")
    template: Literal["chat", "plain"] = "chat"
    max_length: int = Field(1024, ge=8)
    on: Literal["response", "text"] = "response"
    score_text: bool = True  # False: skip the whole-text pass (half the cost); its columns stay null
    max: float | None = Field(None, gt=0)
    min: float | None = Field(None, ge=0)
    max_percentile: float | None = Field(None, ge=0, le=100)
    min_percentile: float | None = Field(None, ge=0, le=100)

    @model_validator(mode="after")
    def _check(self):
        if self.on == "text" and not self.score_text:
            raise ValueError("on='text' needs score_text=True")
        return self  # min <= max and min_percentile <= max_percentile: Step checks every min/max pair

    @property
    def execution(self) -> str:  # type: ignore[override]
        """Percentile thresholds need the whole dataset's scores."""
        return FRAME if self.max_percentile is not None or self.min_percentile is not None else BATCHES

    def score_columns(self) -> list[str]:
        p = self.column
        return [f"{p}_response", f"{p}_text", f"{p}_response_tokens", f"{p}_text_tokens"]

    def _context(self, scorer, messages: list[dict], prompt: str) -> str:
        if self.template == "plain":
            return prompt + "\n\n" if prompt else ""
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages))
        turns = [{"role": m["role"], "content": m["content"]} for m in messages[:last]]
        return scorer.chat_prompt(turns)

    def compute_scores(self, df: pl.DataFrame) -> pl.DataFrame:
        scorer = self.load_scorer()
        prompts = message_text(df, "prompt").to_list()
        responses = message_text(df, "response").to_list()
        texts = message_text(df, "text").to_list()
        pairs = []
        for msgs, prompt, response in zip(df["messages"].to_list(), prompts, responses):
            context = self._context(scorer, msgs or [], prompt)
            pairs.append((context, fit_target(scorer, context, response, self.max_length)[0]))
        if self.score_text:
            pairs += [("", fit_target(scorer, "", text, self.max_length)[0]) for text in texts]
        scored = scorer.score_many(pairs)
        resp, text = scored[: len(df)], scored[len(df) :]
        ppl = lambda lps: [None if (m := mean_nll(lp)) is None else math.exp(m) for lp in lps]  # noqa: E731
        c_resp, c_text, n_resp, n_text = self.score_columns()
        return df.with_columns(
            pl.Series(c_resp, ppl(resp), dtype=pl.Float64),
            pl.Series(c_text, ppl(text) if text else [None] * len(df), dtype=pl.Float64),
            pl.Series(n_resp, [len(lp) for lp in resp], dtype=pl.Int64),
            pl.Series(n_text, [len(lp) for lp in text] if text else [None] * len(df), dtype=pl.Int64),
        )

    def bounds(self, df: pl.DataFrame) -> tuple[float | None, float | None]:
        """(low, high) thresholds in perplexity units: the tighter of absolute and percentile."""
        values = df[self.score_columns()[0 if self.on == "response" else 1]]
        lows = [self.min] + ([percentile(values, self.min_percentile)] if self.min_percentile is not None else [])
        highs = [self.max] + ([percentile(values, self.max_percentile)] if self.max_percentile is not None else [])
        lows, highs = [x for x in lows if x is not None], [x for x in highs if x is not None]
        return (max(lows) if lows else None), (min(highs) if highs else None)

    def thresholds(self) -> dict[str, list[float]]:
        """The absolute bounds, drawn on the report's histogram (percentile bounds depend on the data)."""
        cuts = [x for x in (self.min, self.max) if x is not None]
        return {self.score_columns()[0 if self.on == "response" else 1]: cuts} if cuts else {}

    def decide(self, df: pl.DataFrame) -> tuple[pl.Series, pl.Series]:
        col = pl.col(self.score_columns()[0 if self.on == "response" else 1])
        low, high = self.bounds(df)
        thresholded = low is not None or high is not None or self.is_global
        reason = (
            pl.when(pl.lit(thresholded) & (col.is_null() | col.is_nan())).then(pl.lit("no perplexity score"))
            .when(pl.lit(low is not None) & (col < (low or 0.0))).then(pl.lit("perplexity too low"))
            .when(pl.lit(high is not None) & (col > (high or 0.0))).then(pl.lit("perplexity too high"))
            .otherwise(None)
        )
        reason = df.select(reason.alias("reason")).to_series()
        return reasons(reason.is_null(), reason)

    def explain(self, df: pl.DataFrame) -> pl.Series:
        return self._explain(df, *self.bounds(df))

    def decide_and_explain(self, df: pl.DataFrame, just_scored: bool = False) -> tuple[pl.Series, pl.Series, pl.Series]:
        """The rejected rows' details name the bounds of the whole frame (percentiles), not of
        the rejected rows alone."""
        mask, reason = self.decide(df)
        return mask, reason, self._explain(df.filter(~mask), *self.bounds(df))

    def _explain(self, df: pl.DataFrame, low: float | None, high: float | None) -> pl.Series:
        col = self.score_columns()[0 if self.on == "response" else 1]
        return df.select(
            pl.format("perplexity {} outside [{}, {}]", pl.col(col).round(2), pl.lit(str(low)), pl.lit(str(high)))
            .alias("detail")
        ).to_series()

    def buckets(self, df, head: float = 30, tail: float = 60) -> pl.Series:
        """CCNet-style head/middle/tail label per row (percentiles of this dataset) for the report."""
        frame, _ = as_polars(df)
        return ccnet_buckets(frame[self.score_columns()[0 if self.on == "response" else 1]], head, tail)

    def report(self, df) -> dict:
        """Distribution summary for a run report: percentiles, CCNet cutoffs and bucket counts."""
        frame, _ = as_polars(df)
        out = {}
        for name, col in zip(("response", "text"), self.score_columns()[:2]):
            values = frame[col]
            counts = ccnet_buckets(values).value_counts()
            out[name] = {
                "count": int(values.drop_nulls().len()),
                "percentiles": {str(q): percentile(values, q) for q in (1, 5, 10, 25, 30, 50, 60, 75, 90, 95, 99)},
                "ccnet_cutoffs": {"head<": percentile(values, 30), "middle<": percentile(values, 60)},
                "buckets": {r["bucket"]: r["count"] for r in counts.iter_rows(named=True) if r["bucket"]},
            }
        return out
