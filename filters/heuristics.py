"""Cheap SFT heuristics: empty / too short / too long responses, responses that only repeat the
instruction, and refusal or "as an AI" boilerplate. Rules of this kind are standard first passes in
instruction-data pipelines (e.g. the Self-Instruct and Evol-Instruct filtering steps, Wang et al.
2022; Xu et al. 2023).
"""

from __future__ import annotations

import re
from typing import ClassVar

import polars as pl
from pydantic import Field

from curate.records import message_text
from curate.steps import Filter

REFUSAL_PATTERNS = [
    r"\bI(?:'m| am) sorry,? but\b",
    r"\bI (?:cannot|can't|can not|am unable to|'m unable to|won't be able to) (?:help|assist|provide|comply|fulfil|fulfill|answer)",
    r"\bas an AI(?: language model)?\b",
    r"\bI(?:'m| am) (?:just )?an AI\b",
    r"\bI do not have (?:personal )?(?:opinions|feelings|the ability)\b",
]


def _word_ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    if len(words) < n:
        return {tuple(words)} if words else set()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


class Heuristics(Filter):
    """Rule-based checks on the last assistant turn. Scores: response length in words, the share of
    the response's word trigrams copied from the prompt, and whether a refusal pattern matched."""

    kind: ClassVar[str] = "heuristics"
    code_version: ClassVar[int] = 1
    row_local: ClassVar[bool] = True
    decide_settings: ClassVar[tuple[str, ...]] = ("min_response_words", "max_response_words", "max_prompt_copy",
                                                  "drop_refusals")
    min_response_words: int = Field(3, ge=0)
    max_response_words: int = Field(2000, ge=1)
    max_prompt_copy: float = Field(0.8, ge=0, le=1)  # drop if this share of response trigrams is in the prompt
    drop_refusals: bool = True
    refusal_patterns: list[str] = Field(default_factory=lambda: list(REFUSAL_PATTERNS))

    def score_columns(self) -> list[str]:
        p = self.column
        return [f"{p}_response_words", f"{p}_prompt_copy", f"{p}_refusal"]

    def compute_scores(self, df: pl.DataFrame) -> pl.DataFrame:
        words_col, copy_col, refusal_col = self.score_columns()
        response = message_text(df, "response")
        prompt = message_text(df, "prompt")
        copy = []
        for p, r in zip(prompt.to_list(), response.to_list()):
            grams = _word_ngrams(r, 3)
            copy.append(len(grams & _word_ngrams(p, 3)) / len(grams) if grams else 0.0)
        refusal = "(?i)(?:" + "|".join(self.refusal_patterns) + ")"
        return df.with_columns(
            response.str.count_matches(r"\S+").cast(pl.Int64).alias(words_col),
            pl.Series(copy_col, copy, dtype=pl.Float64),
            response.str.contains(refusal).alias(refusal_col),
        )

    def thresholds(self) -> dict[str, list[float]]:
        words_col, copy_col, _ = self.score_columns()
        return {words_col: [self.min_response_words, self.max_response_words], copy_col: [self.max_prompt_copy]}

    def score_ranges(self) -> dict[str, tuple[float | None, float | None]]:
        words_col, copy_col, _ = self.score_columns()
        return {words_col: (0, None), copy_col: (0.0, 1.0)}

    def decide(self, df: pl.DataFrame) -> tuple[pl.Series, pl.Series]:
        words_col, copy_col, refusal_col = self.score_columns()
        words, copy, refusal = pl.col(words_col), pl.col(copy_col), pl.col(refusal_col)
        # Reasons are short stable categories (the report counts them); the numbers stay in the scores.
        reason = (
            pl.when(words == 0).then(pl.lit("empty response"))
            .when(words < self.min_response_words).then(pl.lit("response too short"))
            .when(words > self.max_response_words).then(pl.lit("response too long"))
            .when(copy > self.max_prompt_copy).then(pl.lit("response repeats the instruction"))
            .when(refusal & pl.lit(self.drop_refusals)).then(pl.lit("refusal or AI boilerplate"))
            .otherwise(None)
        )
        reason = df.select(reason.alias("reason")).to_series()
        return reason.is_null().alias("keep"), reason
