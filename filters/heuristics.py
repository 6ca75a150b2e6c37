"""Cheap SFT heuristics: empty / too short / too long responses, responses that only repeat the
instruction, refusal or "as an AI" boilerplate, and responses that end mid-sentence. Rules of this
kind are standard first passes in instruction-data pipelines (e.g. the Self-Instruct and
Evol-Instruct filtering steps, Wang et al. 2022; Xu et al. 2023).

The mid-sentence rule is for rows that come without a finish reason (an existing dataset): a row a
teacher wrote here has meta.finish_reason, and the generators already drop those cut at max_tokens.
"""

from __future__ import annotations

import re
from typing import ClassVar

import polars as pl
from pydantic import Field

from curate.records import finish_reasons, message_text
from curate.steps import Filter

REFUSAL_PATTERNS = [
    r"\bI(?:'m| am) sorry,? but\b",
    r"\bI (?:cannot|can't|can not|am unable to|'m unable to|won't be able to) (?:help|assist|provide|comply|fulfil|fulfill|answer)",
    r"\bas an AI(?: language model)?\b",
    r"\bI(?:'m| am) (?:just )?an AI\b",
    r"\bI do not have (?:personal )?(?:opinions|feelings|the ability)\b",
]


# Words a finished line does not end on: articles, conjunctions, possessives (any case but "A",
# a grade or an option). Not prepositions or auxiliaries, which English leaves at the end
# ("comfortable with", "as you can", "the way it is").
DANGLING_WORDS = frozenset("a an the and or nor but because than whose your my our their its".split())
# Letter closings end on a comma and are finished ("Best regards,").
_CLOSING = re.compile(r"^(?:(?:best|kind|warm|warmest|with|sincerely|yours)\s+)?(?:regards|wishes|sincerely|yours(?:\s+\w+)?|"
                      r"cheers|thanks|thank you|respectfully|cordially|love)\s*,$", re.IGNORECASE)
# A whole one-line answer, or a paragraph after a heading or colon, ending on a word counts as cut
# from this many words; shorter ones are labels and short answers ("The juice was too sour").
PROSE_LINE_WORDS = 10
_FENCE = re.compile(r"^\s*(```|~~~)", re.MULTILINE)
_BOLD = re.compile(r"(?<!\w)\*\*|\*\*(?!\w)")  # a ** that opens or closes (not the one in "f**k")
_LIST_ITEM = re.compile(r"^\s*(?:[-*+•]|\d+[.)]|[a-zA-Z][.)])")
_NUMBERED = re.compile(r"^\s*\d+[.)]")
_BARE_MARKER = re.compile(r"^(?:[-*+•]|\d{1,3}[.)]|[a-zA-Z][.)])$")
_ATTRIBUTION = re.compile(r"[\"”'’]\s*[-–—]+\s*[A-Z][^\"”]*$")  # "...quote." - Author
# a sentence end after a lower-case word (not "1. Paper", "Dr. Smith" or "e.g. Python"), then a new sentence
_NEW_SENTENCE = re.compile(r"(?<=[a-z]{2})[.!?][\"”')]?\s+(?=[A-Z])")
_LAST_TOKEN = re.compile(r"(\S+)\s*$")


def ends_mid_sentence(text: str | None) -> bool:
    """True when a response looks cut off (e.g. at a token limit) rather than finished.

    Cut: an unclosed code block; a last line that is a bare list marker ("8.", or "9" after "8."),
    a table row with no closing pipe, or has an unclosed ** or bracket; a last line ending on a
    comma, colon (unless the line before ends on one too: a form), dash or opening bracket, or on
    a word no finished line ends on ("the", "and", ...); a last sentence with no end after one that
    has it ("... of the program. This includes the current line"); a paragraph or list item begun
    after a sentence end and ending on a word ("...drawbacks.\n\nOn one hand, machine"). Finished:
    sentence ends, closing brackets and quotes, numbers, semicolons, code fences, hashtags, links,
    quote attributions, titles, lists of names, letter closings, and lines after a line with no
    sentence end (labels, list values, poems). For data without a finish reason: where the
    teacher's finish reason is known it is the better evidence (a response cut right after a full
    stop looks finished here)."""
    text = (text or "").rstrip()
    if not text:
        return False
    if len(_FENCE.findall(text)) % 2:
        return True  # inside a code block
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    last, before = lines[-1], (lines[-2] if len(lines) > 1 else "")
    if (_BARE_MARKER.match(last) and (before[-1:] in (".", "!", "?", ":") or _LIST_ITEM.match(before))) or (
            last.isdigit() and len(last) <= 3 and _NUMBERED.match(before)):
        return True  # the next list item had not begun
    if last.startswith("|") and last.count("|") >= 2 and not last.endswith("|"):
        return True  # a table row without its closing pipe
    if len(_BOLD.findall(last)) % 2 or last.count("(") > last.count(")") or last.count("[") > last.count("]"):
        return True
    if last[-1] == ":":
        return not before.endswith(":")
    if not any(c.isalnum() for c in last):
        return False  # a rule (---), a table border, an emoji line
    if last[-1] in ",([{-–—&":
        return not _CLOSING.match(last)
    token = _LAST_TOKEN.search(last).group(1)
    if not token[-1].isalpha() or token.startswith(("#", "@", "http")) or _ATTRIBUTION.search(last):
        return False  # sentence end, closing bracket or quote, number, symbol, hashtag, link, attribution
    if token.lower() in DANGLING_WORDS and token != "A":
        return True
    words = last.split()
    long_words = [w for w in words if len(w) > 3]
    items = last.split(",")
    if (long_words and sum(w[0].isupper() for w in long_words) >= 0.7 * len(long_words)) or (
            len(items) >= 3 and all(len(i.split()) <= 4 for i in items)):
        return False  # a title, or a list of names
    sentences = _NEW_SENTENCE.split(last)
    if len(sentences) > 1 and len(sentences[-1].split()) >= 3:
        return True  # a sentence begun after a finished one on the same line
    if before and before[-1] in ".!?":  # a paragraph or list item begun after a sentence end
        if _LIST_ITEM.match(last):
            return bool(_LIST_ITEM.match(before)) and len(words) >= 2
        return (token.islower() and len(words) >= 2) or len(words) >= PROSE_LINE_WORDS
    if not before or before.endswith((":", "**")) or before.startswith("#"):  # alone, or after a heading
        return len(words) >= PROSE_LINE_WORDS and not _LIST_ITEM.match(last)
    return False  # line by line: labels, list values, poem lines


def _word_ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    if len(words) < n:
        return {tuple(words)} if words else set()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


class Heuristics(Filter):
    """Rule-based checks on the last assistant turn. Scores: response length in words, the share of
    the response's word trigrams copied from the prompt, whether a refusal pattern matched, and
    whether the response looks cut off (`ends_mid_sentence`; only rows without a finish reason are
    dropped for it, with `drop_mid_sentence`)."""

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
    drop_mid_sentence: bool = True

    def score_columns(self) -> list[str]:
        p = self.column
        return [f"{p}_response_words", f"{p}_prompt_copy", f"{p}_refusal", f"{p}_mid_sentence"]

    def compute_scores(self, df: pl.DataFrame) -> pl.DataFrame:
        words_col, copy_col, refusal_col, mid_col = self.score_columns()
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
            pl.Series(mid_col, [ends_mid_sentence(r) for r in response.to_list()], dtype=pl.Boolean),
        )

    def thresholds(self) -> dict[str, list[float]]:
        words_col, copy_col, *_ = self.score_columns()
        return {words_col: [self.min_response_words, self.max_response_words], copy_col: [self.max_prompt_copy]}

    def score_ranges(self) -> dict[str, tuple[float | None, float | None]]:
        words_col, copy_col, *_ = self.score_columns()
        return {words_col: (0, None), copy_col: (0.0, 1.0)}

    def decide(self, df: pl.DataFrame) -> tuple[pl.Series, pl.Series]:
        words_col, copy_col, refusal_col, mid_col = self.score_columns()
        words, copy, refusal = pl.col(words_col), pl.col(copy_col), pl.col(refusal_col)
        # a row with a finish reason is judged by it (the generators drop "length"), not by its text
        no_finish_reason = pl.lit(finish_reasons(df).is_null())
        # Reasons are short stable categories (the report counts them); the numbers stay in the scores.
        reason = (
            pl.when(words == 0).then(pl.lit("empty response"))
            .when(words < self.min_response_words).then(pl.lit("response too short"))
            .when(words > self.max_response_words).then(pl.lit("response too long"))
            .when(copy > self.max_prompt_copy).then(pl.lit("response repeats the instruction"))
            .when(refusal & pl.lit(self.drop_refusals)).then(pl.lit("refusal or AI boilerplate"))
            .when(pl.col(mid_col) & no_finish_reason & pl.lit(self.drop_mid_sentence))
            .then(pl.lit("response ends mid-sentence"))
            .otherwise(None)
        )
        reason = df.select(reason.alias("reason")).to_series()
        return reason.is_null().alias("keep"), reason
