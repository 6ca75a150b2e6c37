"""LLM judges: a teacher model grades each row.

- method "rating" (AlpaGasus, Chen et al. 2023, arXiv 2307.08701): the judge writes a score on a
  1..scale scale and a one-line reason; keep rows with score >= min_score (AlpaGasus kept
  accuracy >= 4.5 of 5, about 17% of Alpaca).
- method "expected" (DEITA, Liu et al. 2024): read the judge's log-probs at the first answer
  position, softmax over the digit tokens 1..scale only, and score sum_j p_j * j; `aspect`
  "quality" grades the response, "complexity" the instruction alone (DEITA uses scale 6).

Prompts live in filters/prompts/judge_<rating|quality|complexity>.txt; a recipe can give its own
with `prompt_file` ({instruction}, {response} and {scale} are filled in). An output with no
readable score is kept as data: the score is null, the raw text stays in the rationale column,
and the row is dropped with reason "judge output unparseable".
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import ClassVar, Literal

import polars as pl
from pydantic import Field, PrivateAttr

from curate.errors import CurateError
from curate.llm import LLM, Request, TeacherConfig, Usage, build_llm
from curate.records import message_text
from curate.steps import Context, Filter, RecipePath, StepResult, reasons

PROMPTS = Path(__file__).parent / "prompts"
_SCORE = re.compile(r"score\s*[:=]?\s*\**\s*(\d+(?:\.\d+)?)", re.IGNORECASE)
_NUMBER = re.compile(r"\b(\d+(?:\.\d+)?)\b")


def parse_rating(text: str | None, scale: int) -> float | None:
    """The score in a rating reply: 'Score: 4' first, else the first number in 1..scale."""
    if not text:
        return None
    for pattern in (_SCORE, _NUMBER):
        for match in pattern.finditer(text):
            value = float(match.group(1))
            if 1 <= value <= scale:
                return value
    return None


def expected_digit_score(top: list[dict[str, float]] | None, scale: int) -> float | None:
    """DEITA's expected score: softmax over the log-probs of the tokens '1'..'scale' at the first
    generated position, then sum_j p_j * j. None when no digit is among the returned tokens."""
    if not top:
        return None
    digits: dict[int, float] = {}
    for token, logprob in top[0].items():
        t = token.strip()
        if t.isdigit() and 1 <= int(t) <= scale:
            digits[int(t)] = max(logprob, digits.get(int(t), -math.inf))
    if not digits:
        return None
    peak = max(digits.values())
    weights = {d: math.exp(lp - peak) for d, lp in digits.items()}
    total = sum(weights.values())
    return sum(d * w for d, w in weights.items()) / total


class Judge(Filter):
    """Grade rows with a teacher model and keep those scoring at least `min_score`."""

    kind: ClassVar[str] = "judge"
    code_version: ClassVar[int] = 1
    needs_llm: ClassVar[bool] = True
    row_local: ClassVar[bool] = True
    decide_settings: ClassVar[tuple[str, ...]] = ("min_score",)
    method: Literal["rating", "expected"] = "rating"
    aspect: Literal["quality", "complexity"] = "quality"
    scale: int = Field(5, ge=2, le=10)
    min_score: float | None = None
    prompt_file: RecipePath | None = None
    max_tokens: int = Field(96, ge=1)
    top_logprobs: int = Field(20, ge=1, le=20)
    # Used only outside a recipe (a notebook): the judge model. Inside a recipe, the recipe's teacher.
    teacher: TeacherConfig | None = None
    _llm: LLM | None = PrivateAttr(default=None)
    _usage: Usage | None = PrivateAttr(default=None)  # of the last compute_scores, for the run report

    @property
    def last_usage(self) -> Usage | None:
        """Requests, tokens and cost of the last scoring pass."""
        return self._usage

    def use(self, llm: LLM) -> "Judge":
        """Judge with this LLM (a notebook can share one LLM between steps)."""
        self._llm = llm
        return self

    def run(self, df: pl.DataFrame, ctx: Context) -> StepResult:
        if self._llm is None:
            self._llm = ctx.llm
        result = super().run(df, ctx)
        if self.last_usage is not None:
            result.stats["llm"] = self.last_usage.as_dict()
        return result

    def score_columns(self) -> list[str]:
        return [self.column, f"{self.column}_rationale"]

    def template_file(self) -> Path:
        """The prompt file: `prompt_file`, else the shipped one for the method (and aspect)."""
        if self.prompt_file:
            return Path(self.prompt_file)
        return PROMPTS / f"judge_{'rating' if self.method == 'rating' else self.aspect}.txt"

    def template(self) -> str:
        path = self.template_file()
        if not path.exists():
            raise CurateError(f"judge prompt_file {path}: no such file")
        return path.read_text(encoding="utf-8")

    def files(self) -> list[str]:
        return [*super().files(), str(self.template_file())]

    def scoring_settings(self) -> dict:
        """With the model that judges: the one given by use() (in a recipe, the recipe's teacher),
        else `teacher`."""
        judge = {"backend": self._llm.backend.name, "model": self._llm.model} if self._llm is not None else None
        return {**super().scoring_settings(), "judge_model": judge}

    def render(self, instruction: str, response: str) -> str:
        # Plain replacement, not str.format: instructions often contain braces (code, JSON).
        return (self.template().replace("{scale}", str(self.scale))
                .replace("{instruction}", instruction).replace("{response}", response))

    def compute_scores(self, df: pl.DataFrame) -> pl.DataFrame:
        llm = self._llm or build_llm(self.teacher or TeacherConfig(), cache_path=None)
        prompts = [self.render(q, a) for q, a in zip(message_text(df, "prompt"), message_text(df, "response"))]
        if self.method == "rating":
            requests = [Request.chat([{"role": "user", "content": p}], max_tokens=self.max_tokens, temperature=0.0)
                        for p in prompts]
        else:
            requests = [Request.chat([{"role": "user", "content": p}], max_tokens=1, temperature=0.0,
                                     top_logprobs=self.top_logprobs) for p in prompts]
        responses, self._usage = llm.generate(requests, label=f"judge ({self.method})")
        scores: list[float | None] = []
        notes: list[str | None] = []
        for resp in responses:
            if not resp.ok:
                scores.append(None)
                notes.append(f"judge request failed: {resp.error}")
            elif self.method == "rating":
                scores.append(parse_rating(resp.text, self.scale))
                notes.append(resp.text)
            else:
                scores.append(expected_digit_score(resp.extra.get("top_logprobs"), self.scale))
                notes.append(None if scores[-1] is not None else f"no digit 1-{self.scale} among top tokens: {resp.text!r}")
        return df.with_columns(
            pl.Series(self.column, scores, dtype=pl.Float64),
            pl.Series(f"{self.column}_rationale", notes, dtype=pl.String),
        )

    def thresholds(self) -> dict[str, list[float]]:
        return {self.column: [self.min_score]} if self.min_score is not None else {}

    def score_ranges(self) -> dict[str, tuple[float | None, float | None]]:
        return {self.column: (1.0, float(self.scale))}

    def decide(self, df: pl.DataFrame) -> tuple[pl.Series, pl.Series]:
        score = pl.col(self.column)
        threshold = -math.inf if self.min_score is None else self.min_score
        reason = (pl.when(score.is_null()).then(pl.lit("judge output unparseable"))
                  .when(score < threshold).then(pl.lit("judge score below threshold"))
                  .otherwise(None))
        reason = df.select(reason.alias("reason")).to_series()
        return reasons(reason.is_null(), reason)

    def explain(self, df: pl.DataFrame) -> pl.Series:
        """The score and the start of the judge's reply; for a missing score, why there is none, so
        that a reject table of unparseable outputs shows what the judge wrote instead of null."""
        score = pl.Series(df[self.column]).round(2)
        note = df[f"{self.column}_rationale"].str.slice(0, 300)
        # Failed requests and the expected-score mode already write their own reason into the note.
        own_reason = note.str.starts_with("judge request failed:") | note.str.starts_with("no digit ")
        detail = (pl.when(score.is_not_null() & note.is_null()).then(pl.format("score {}", score))
                  .when(score.is_not_null()).then(pl.format("score {}: {}", score, note))
                  .when(note.is_null() | (note.str.strip_chars() == "")).then(pl.lit("no score: the judge's reply was empty"))
                  .when(own_reason).then(note)
                  .otherwise(pl.format("no score in the judge's reply: {}", note)))
        return pl.select(detail.alias("detail")).to_series()

