"""Cheap SFT heuristics: empty / too short / too long responses, responses that only repeat the
instruction, refusal or "as an AI" boilerplate, and responses that end mid-sentence. Rules of this
kind are standard first passes in instruction-data pipelines (e.g. the Self-Instruct and
Evol-Instruct filtering steps, Wang et al. 2022; Xu et al. 2023).

The mid-sentence rule is for rows that come without a finish reason (an existing dataset): a row a
teacher wrote here has meta.finish_reason, and the generators already drop those cut at max_tokens.
"""

from __future__ import annotations

import functools
from typing import ClassVar

import numpy as np
import polars as pl
from pydantic import Field

from curate.records import finish_reasons, message_text
from curate.text import GOLDEN64, char_class, fmix64, hashed_words, ngram_hashes, python_chars
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
# A whole one-line answer, or a paragraph after a heading or colon, ending on a word counts as cut
# from this many words; shorter ones are labels and short answers ("The juice was too sour").
PROSE_LINE_WORDS = 10
# Where Python's str.splitlines() breaks a line (all of them are whitespace to str.strip()).
_LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


def ends_mid_sentence(text: str | None) -> bool:
    """True when a response looks cut off (e.g. at a token limit) rather than finished:
    `mid_sentence` for one text, where the rules are written (~2 ms a call; a column at once
    takes microseconds a text)."""
    return bool(mid_sentence(pl.Series([text], dtype=pl.String))[0])


@functools.cache
def _patterns() -> dict[str, str]:
    """The rules' regular expressions, with Python's character classes (`curate.text.char_class`)
    where polars' own would differ: the rules were written, and tested, as Python regexes."""
    sp, br = char_class("isspace"), "".join(f"\\x{{{ord(c):X}}}" for c in _LINE_BREAKS)
    digit = char_class("isdecimal")  # Python's \d
    word = char_class("isword")  # Python's \w
    # Python's IGNORECASE also takes the Turkish dotless and dotted i for an "i"; polars' does not.
    closing_words = (r"(?:(?:best|kind|warm|warmest|with|sincerely|yours)[{sp}]+)?(?:regards|wishes|sincerely|"
                     r"yours(?-i:[{sp}]+[{word}]+)?|cheers|thanks|thank you|respectfully|cordially|love)")
    closing_words = closing_words.replace("i", "[iıİ]").replace("(?-[iıİ]:", "(?-i:")
    return {
        "breaks": br,
        "fence": rf"(?m)^[{sp}]*(?:```|~~~)",
        "list_item": rf"^[{sp}]*(?:[-*+•]|[{digit}]+[.)]|[a-zA-Z][.)])",
        "numbered": rf"^[{sp}]*[{digit}]+[.)]",
        "bare_marker": rf"^(?:[-*+•]|[{digit}]{{1,3}}[.)]|[a-zA-Z][.)])\z",
        "digits": rf"^[{char_class('isdigit')}]{{1,3}}\z",  # str.isdigit, up to 3 characters
        # `**` opens or closes unless a word character is on both sides ("f**k"): runs of such
        # pairs, which a plain count of `**` also counts and must not
        "inner_bold": rf"[{word}]\*\*(?:[{word}]\*\*)*[{word}]",
        "alnum": rf"[{char_class('isalnum')}]",
        "ends_alpha": rf"[{char_class('isalpha')}]\z",
        "closing": r"\A(?i:" + closing_words.replace("{sp}", sp).replace("{word}", word) + rf")[{sp}]*,\z",
        "attribution": rf"[\"”'’][{sp}]*[-–—]+[{sp}]*[A-Z][^\"”]*\z",  # "...quote." - Author
        "word": rf"[^{sp}]+",  # a word of str.split()
        "long_word": rf"[^{sp}]{{4,}}",
        "capitalised_word": rf"(?:\A|[{sp}])[{char_class('isupper')}][^{sp}]{{3,}}",
        "long_item": rf"[^,{sp}]+(?:[{sp}]+[^,{sp}]+){{4}}",  # five words with no comma between
        "upper_or_title": rf"[{char_class('istitle')}]",  # one character's istitle(): upper or title case
        "lower": rf"[{char_class('islower')}]",
        # a sentence end after a lower-case word (not "1. Paper", "Dr. Smith" or "e.g. Python"), then
        # a new sentence: what follows the last one
        "new_sentence": rf"[a-z]{{2}}[.!?][\"”')]?[{sp}]+[A-Z]",
        "after_last_sentence": rf"\A.*[a-z]{{2}}[.!?][\"”')]?[{sp}]+([A-Z])",
    }


def mid_sentence(texts: pl.Series) -> pl.Series:
    """For each text, whether it looks cut off (e.g. at a token limit) rather than finished; null
    and empty texts are not. Polars expressions over the whole column (no Python per text).

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
    stop looks finished here).

    Lines are those of Python's str.splitlines(), stripped of Python's whitespace, blank ones
    skipped; the rules were first written in Python, row by row, and give the same answers
    (bench/bench_hotpaths.py compares them on public data)."""
    re_, space = _patterns(), python_chars("isspace")
    line_end = rf"[^{re_['breaks']}]*\z"
    text = pl.col("text").fill_null("").str.strip_chars_end(space)
    raw_last = text.str.extract(f"({line_end})")
    # what comes before the last line, less the blank lines at its end
    head = text.str.head(text.str.len_chars() - raw_last.str.len_chars()).str.strip_chars_end(space)
    lines = pl.DataFrame({"text": texts.cast(pl.String)}).select(
        text.alias("text"),
        raw_last.str.strip_chars(space).alias("last"),
        head.str.extract(f"({line_end})").fill_null("").str.strip_chars(space).alias("before"),
    )
    last, before = pl.col("last"), pl.col("before")
    parts = lines.with_columns(
        token=last.str.extract(rf"({re_['word']})\z"),
        words=last.str.count_matches(re_["word"]),
        list_item=last.str.contains(re_["list_item"]),
        prev_list_item=before.str.contains(re_["list_item"]),
    )
    token, words = pl.col("token"), pl.col("words")
    list_item, prev_list_item = pl.col("list_item"), pl.col("prev_list_item")
    long_words, capitalised = last.str.count_matches(re_["long_word"]), last.str.count_matches(re_["capitalised_word"])
    inner_bold = last.str.extract_all(re_["inner_bold"]).list.join("").str.count_matches(r"\*\*")
    bold = last.str.count_matches(r"\*\*") - inner_bold
    token_lower = ~token.str.contains(re_["upper_or_title"]) & token.str.contains(re_["lower"])
    cut = (
        pl.when(pl.col("text") == "").then(False)
        .when(pl.col("text").str.count_matches(re_["fence"]) % 2 == 1).then(True)  # inside a code block
        .when((last.str.contains(re_["bare_marker"]) & (before.str.contains(r"[.!?:]\z") | prev_list_item))
              | (last.str.contains(re_["digits"]) & before.str.contains(re_["numbered"])))
        .then(True)  # the next list item had not begun
        .when(last.str.starts_with("|") & (last.str.count_matches("|", literal=True) >= 2) & ~last.str.ends_with("|"))
        .then(True)  # a table row without its closing pipe
        .when((bold % 2 == 1)
              | (last.str.count_matches("(", literal=True) > last.str.count_matches(")", literal=True))
              | (last.str.count_matches("[", literal=True) > last.str.count_matches("]", literal=True)))
        .then(True)
        .when(last.str.ends_with(":")).then(~before.str.ends_with(":"))
        .when(~last.str.contains(re_["alnum"])).then(False)  # a rule (---), a table border, an emoji line
        .when(last.str.contains(r"[,(\[{\-–—&]\z")).then(~last.str.contains(re_["closing"]))
        .when(~last.str.contains(re_["ends_alpha"]) | token.str.starts_with("#") | token.str.starts_with("@")
              | token.str.starts_with("http") | last.str.contains(re_["attribution"]))
        .then(False)  # sentence end, closing bracket or quote, number, symbol, hashtag, link, attribution
        .when(token.str.to_lowercase().is_in(list(DANGLING_WORDS)) & (token != "A")).then(True)
        .when(((long_words > 0) & (capitalised >= 0.7 * long_words))
              | ((last.str.count_matches(",", literal=True) >= 2) & ~last.str.contains(re_["long_item"])))
        .then(False)  # a title, or a list of names
        .when(last.str.contains(re_["new_sentence"])
              & (last.str.replace(re_["after_last_sentence"], "$1").str.count_matches(re_["word"]) >= 3))
        .then(True)  # a sentence begun after a finished one on the same line
        .when(before.str.contains(r"[.!?]\z"))  # a paragraph or list item begun after a sentence end
        .then(pl.when(list_item).then(prev_list_item & (words >= 2))
              .otherwise((token_lower & (words >= 2)) | (words >= PROSE_LINE_WORDS)))
        .when((before == "") | before.str.ends_with(":") | before.str.ends_with("**") | before.str.starts_with("#"))
        .then((words >= PROSE_LINE_WORDS) & ~list_item)  # alone, or after a heading
        .otherwise(False)  # line by line: labels, list values, poem lines
    )
    return parts.select(cut.alias("mid_sentence")).to_series()


def prompt_copy(prompt: pl.Series, response: pl.Series, ngram: int = 3) -> pl.Series:
    """The share of each response's distinct word n-grams that are also in its prompt (0.0 for a
    response with no words; a text shorter than `ngram` words is one n-gram of all its words).

    Words and n-gram hashes are `curate.text`'s, the ones dedup and decontamination use: symbols
    and emoji are words, and text without spaces (Chinese, Thai) is compared by character
    n-grams, not by whole sentences. Batch by batch with numpy: memory follows the batch."""
    share = np.zeros(len(response))
    for lo, hi, h, word_offs in hashed_words(response):
        grams, docs = _doc_ngrams(h, word_offs, ngram)
        keys = grams ^ _doc_salt(docs)
        order = np.argsort(keys)
        keys, docs = keys[order], docs[order]
        first = _firsts(keys)
        keys, docs = keys[first], docs[first]
        prompt_keys = _ngram_keys(prompt.slice(lo, hi - lo), ngram)
        at = np.minimum(np.searchsorted(prompt_keys, keys), len(prompt_keys) - 1)
        in_prompt = prompt_keys[at] == keys if len(prompt_keys) else np.zeros(len(keys), bool)
        total = np.bincount(docs, minlength=hi - lo)
        copied = np.bincount(docs[in_prompt], minlength=hi - lo)
        np.divide(copied, total, out=share[lo:hi], where=total > 0)
    return pl.Series("prompt_copy", share, dtype=pl.Float64)


def _doc_ngrams(h: np.ndarray, word_offs: np.ndarray, ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """(n-gram hashes, document of each) of a tokenised batch, leaving out documents with no words."""
    grams, docs = ngram_hashes(h, word_offs, ngram, seed=0)
    has_words = np.diff(word_offs)[docs] > 0
    return grams[has_words], docs[has_words]


def _ngram_keys(texts: pl.Series, ngram: int) -> np.ndarray:
    """The distinct (text, n-gram) keys of these texts, sorted (a text is its index in `texts`)."""
    keys = [grams ^ _doc_salt(docs + lo) for lo, _, h, word_offs in hashed_words(texts)
            for grams, docs in [_doc_ngrams(h, word_offs, ngram)]]
    if not keys:
        return np.zeros(0, np.uint64)
    keys = np.sort(np.concatenate(keys))
    return keys[_firsts(keys)]


def _firsts(sorted_keys: np.ndarray) -> np.ndarray:
    """Where each distinct value of a sorted array starts (np.unique's hash table measured ~2x
    slower than a sort here)."""
    new = np.ones(len(sorted_keys), bool)
    new[1:] = sorted_keys[1:] != sorted_keys[:-1]
    return np.flatnonzero(new)


def _doc_salt(docs: np.ndarray) -> np.ndarray:
    """A 64-bit value per document index: an n-gram hash xor it is a key of (document, n-gram)
    (two pairs collide with probability 2^-64)."""
    return fmix64(docs.astype(np.uint64) * GOLDEN64 + np.uint64(1))


class Heuristics(Filter):
    """Rule-based checks on the last assistant turn. Scores: response length in words, the share of
    the response's word trigrams copied from the prompt, whether a refusal pattern matched, and
    whether the response looks cut off (`ends_mid_sentence`; only rows without a finish reason are
    dropped for it, with `drop_mid_sentence`)."""

    kind: ClassVar[str] = "heuristics"
    concurrent_parts: ClassVar[bool] = True
    code_version: ClassVar[int] = 2  # 2: prompt copy in curate.text words (symbols, CJK characters)
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
        refusal = "(?i)(?:" + "|".join(self.refusal_patterns) + ")"
        return df.with_columns(
            response.str.count_matches(r"\S+").cast(pl.Int64).alias(words_col),
            prompt_copy(prompt, response).alias(copy_col),
            response.str.contains(refusal).alias(refusal_col),
            mid_sentence(response).alias(mid_col),
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
