"""Eval-set decontamination: drop training rows that copy an eval item, whole or lightly edited.

Two tests, both on words normalised by `curate.text` (NFKC, lowercase, split at whitespace and
punctuation), so case, punctuation and spacing edits never hide a copy:

1. Long n-gram overlap: the rule of GPT-3 (Brown et al. 2020, appendix C: 13-grams of lowercased,
   punctuation-free words), also used for the FLAN and Llama-2 contamination analyses. Every text
   field of every eval item (by default its prompt and, where the file has one, its reference
   answer: `PROMPT_FIELDS` / `ANSWER_FIELDS`) is indexed on its own, and so is the join of an
   item's prompt fields (instruction + input):
   - a field of >= `ngram` words: every word `ngram`-gram (64-bit hash);
   - a field of k < `ngram` words with k >= `min_words`: found in a training row that holds those
     k words contiguously (GPT-3 likewise used a shorter n for sets of short items, never below
     8); test 2 finds these exact runs, or, when it is off or the field has no 3-gram it can
     look up, one whole-field shingle here;
   - a field of fewer than `min_words` words: the whole field as one shingle, found only in a
     training row whose checked text is exactly those words (a 5-word phrase like "what is the
     capital of" would otherwise flag half of a dataset).
   Shingles that are no evidence of a copy are left out of the index: those held by
   >= `common_items` items of one eval set (template text: MATH solutions share "the average of
   the first and last term"), and those whose words are mostly markup or code, i.e. fewer than
   `min_prose` of them are prose words (a prose word has two or more characters, no digit, and is
   not one the eval set uses mostly as a LaTeX command or environment name or in Asymptote
   `[asy]` code: plotting code and `\\begin{pmatrix} 1 & 0 ...` literals are no evidence).
   Shingles of an item's reference answers (`ANSWER_FIELDS`) count only when the row also shares
   shingles of the item's prompt, or holds at least `min_answer_share` of its answers' shingles (a
   copied gold solution): worked solutions share stock sentences ("we can set up a system of two
   equations to represent the given information") with solutions of other problems, which is no
   copy of the item. The eval item's own text, the GPT-3 rule's object, is its prompt.
2. Near copies of short items. A 13-gram test misses a short item (a typical math problem) whose
   opening words are reworded and one number changed: no 13 words in a row survive. So each
   prompt text of `min_words` <= w < `short_words` words is also found in a training row that
   holds a stretch within `max_edits` of it: the Levenshtein distance over words between the
   text and the stretch (free to start and end anywhere in the row: approximate substring
   matching, Sellers 1980), each edit costing the rarity of its word among the eval set's short
   texts (smoothed inverse document frequency, so "what is the" costs less than the item's own
   numbers and names): deleting or replacing a word of the eval text costs that word's weight,
   inserting a word of the row its own (a word no short text uses weighs the most, so a stretch
   padded with other content is no near copy), divided by the text's total weight. Edited copies are looked
   for in the row's prompt (a retold joke or a textbook sentence in an answer is no copy of an
   eval prompt); exact runs anywhere. Candidates for that exact check are rows sharing two of the
   text's word 3-grams, or all it has (only 3-grams held by fewer than `common_items` items of
   its eval set count), and holding its words but for a weight within the allowance (a lower
   bound of the distance, checked again on the prompt). A (row, item) pair test 1 matched is not
   checked again.
   Published contamination rules measure this coarser, as a share of an item found in training
   data: of its 8-grams (PaLM, Chowdhery et al. 2022, sec. 8) or of its tokens inside long shared
   n-grams (Llama 2, Touvron et al. 2023, app. A.6); with three words reworded and a number
   changed, a 20-word item keeps few of either.

Scores (`score_<name>_...`): `matches` (distinct n-grams of the row found in any eval item, test 1),
`hit` (the eval item sharing the most n-grams with it, else the nearest short item, as
"<file name>:<0-based row>"), `coverage` (the share of that item's indexed n-grams found in the
row: ~1.0 is a full copy), `edits` (test 2: the weighted word edits between a stretch of the row
and the nearest short eval text, as a share of that text's weight, 0.0 for an exact run; null when
none is within `max_edits` or test 1 matched that item) and `hits` (every eval item matched by
either test). `summarize_hits` / `Decontaminate.summary` turn them into the report's "which eval
items were hit" table.

The index and both tests live in `filters.eval_index`.
"""

from __future__ import annotations

import os
import threading
from typing import Any, ClassVar

import numpy as np
import polars as pl
from pydantic import Field as Setting
from pydantic import PrivateAttr

from curate.records import message_text
from curate.steps import Filter, RecipePath, reasons
from curate.text import TextPart
from filters.eval_index import ANSWER_FIELDS, PROMPT_FIELDS, EvalIndex, edit_distance, eval_texts, markup_words


_INDEX_LOCK = threading.Lock()


class Decontaminate(Filter):
    """Drop training rows that copy an item of the given eval sets: rows sharing a long n-gram
    (default 13 normalised words: the overlap test of GPT-3, Brown et al. 2020, app. C) with it,
    and rows holding a lightly edited copy of a short prompt (see the module docstring).

    `eval_sets`: files read_table reads (jsonl, json, parquet, csv, a datasets folder);
    `eval_fields`: their columns to index (default: prompt and reference-answer columns, see
    PROMPT_FIELDS / ANSWER_FIELDS); `field`: the part of the training row checked. A row is dropped
    when it shares >= `min_matches` distinct n-grams with the eval sets (and, if `min_coverage` is
    set, at least that share of the best-matching item's n-grams), or when a stretch of its prompt
    is within `max_edits` (a share of weighted word edits) of an eval prompt of < `short_words` words.
    `common_items`, `min_prose` and `min_answer_share` keep template, markup and stock-solution
    n-grams out of the evidence (0 turns each off; `short_words=0, common_items=0, min_prose=0,
    min_answer_share=0` is the plain GPT-3 rule).
    Re-thresholding `min_matches` / `min_coverage` needs no rescoring.
    """

    kind: ClassVar[str] = "decontaminate"
    concurrent_parts: ClassVar[bool] = True
    code_version: ClassVar[int] = 1
    row_local: ClassVar[bool] = True
    decide_settings: ClassVar[tuple[str, ...]] = ("min_matches", "min_coverage")

    eval_sets: list[RecipePath] = Setting(min_length=1)
    eval_fields: list[str] | None = None
    ngram: int = Setting(13, ge=1)
    min_words: int = Setting(8, ge=1)
    field: TextPart = "text"
    min_matches: int = Setting(1, ge=1)
    # Also require this share of the hit item's shingles in the row. 0 by default: on real data the
    # low-coverage single-shingle hits are famous quotes and jokes shared with an eval item (see
    # bench/report_filters_real_data.py), but a row copying just the prompt of an item that also
    # indexes a long reference answer has low coverage too.
    min_coverage: float = Setting(0.0, ge=0.0, le=1.0)
    # Test 2 (near copies) covers prompts of min_words <= w < short_words words (0: off).
    short_words: int = Setting(50, ge=0)
    max_edits: float = Setting(0.4, ge=0.0, le=1.0)
    # An n-gram held by this many items of one eval set is template text, not evidence (0: off).
    common_items: int = Setting(3, ge=0)
    # An n-gram with a smaller share of prose words is markup or code, not evidence (0: off).
    min_prose: float = Setting(0.4, ge=0.0, le=1.0)
    # Shingles found only in an item's reference answers count when the row also shares shingles of
    # its prompt, or holds at least this share of its answers' shingles (0: any answer shingle counts).
    min_answer_share: float = Setting(0.5, ge=0.0, le=1.0)

    _index: Any = PrivateAttr(default=None)
    _index_key: Any = PrivateAttr(default=None)

    def index(self) -> EvalIndex:
        """The eval index, built once (rebuilt if a setting or an eval file changes), also when
        several parts ask for it at once (the engine's threads)."""
        with _INDEX_LOCK:
            return self._built_index()

    def _built_index(self) -> EvalIndex:
        key = (tuple(self.eval_sets), tuple(self.eval_fields or ()), self.ngram, self.min_words, self.short_words,
               self.max_edits, self.common_items, self.min_prose, self.min_answer_share,
               tuple(os.stat(p).st_mtime_ns if os.path.exists(p) else 0 for p in self.eval_sets))
        if self._index is None or self._index_key != key:
            self._index = EvalIndex(list(self.eval_sets), self.ngram, min(self.min_words, self.ngram), self.eval_fields,
                                    common_items=self.common_items, min_prose=self.min_prose,
                                    short_words=self.short_words, max_edits=self.max_edits,
                                    min_answer_share=self.min_answer_share)
            self._index_key = key
        return self._index

    def score_columns(self) -> list[str]:
        return [f"{self.column}_{c}" for c in ("matches", "hit", "coverage", "edits", "hits")]

    def compute_scores(self, df: pl.DataFrame) -> pl.DataFrame:
        index = self.index()
        matches, pairs, candidates = index.lookup(message_text(df, self.field))
        rows = np.unique(candidates[0])
        near = index.near(candidates, message_text(df[rows], "response" if self.field == "response" else "prompt"))
        c_matches, c_hit, c_cov, c_edits, c_hits = self.score_columns()
        labels = pl.Series("label", index.labels, dtype=pl.String)
        items = pairs["item"].to_numpy()
        best = (
            pairs.with_columns(label=labels.gather(items), size=pl.Series(index.item_size[items], dtype=pl.Int64))
            .sort(["row", "n", "item"], descending=[False, True, False])  # most shared shingles first
            .group_by("row", maintain_order=True)
            .agg(
                pl.col("label").first().alias("ngram_hit"),
                (pl.col("n").first() / pl.col("size").first()).cast(pl.Float64).alias(c_cov),
            )
        )
        nearest = (
            near.with_columns(label=labels.gather(near["item"].to_numpy()))
            .sort(["row", "edits", "item"])
            .group_by("row", maintain_order=True)
            .agg(pl.col("label").first().alias("near_hit"), pl.col("edits").first().alias(c_edits))
        )
        every = pl.concat([pairs.select("row", "item"), near.select("row", "item")]).unique()
        every = (
            every.with_columns(label=labels.gather(every["item"].to_numpy()))
            .group_by("row")
            .agg(pl.col("label").sort().alias(c_hits))
        )
        table = (
            pl.DataFrame({"row": np.arange(len(df), dtype=np.int64)})
            .join(best, on="row", how="left")
            .join(nearest, on="row", how="left")
            .join(every, on="row", how="left")
            .sort("row")
        )
        return df.with_columns(
            pl.Series(c_matches, matches),
            table.select(pl.coalesce("ngram_hit", "near_hit").alias(c_hit)).to_series(),
            table[c_cov],
            table[c_edits].cast(pl.Float64),
            table[c_hits].fill_null(pl.lit([], dtype=pl.List(pl.String))),
        )

    def decide(self, df: pl.DataFrame) -> tuple[pl.Series, pl.Series]:
        return reasons(~flagged(df, self.column, self.min_matches, self.min_coverage), "overlaps eval set")

    def explain(self, df: pl.DataFrame) -> pl.Series:
        c_matches, c_hit, c_cov, c_edits, c_hits = self.score_columns()
        ngrams = pl.format(
            "{} shared {}-grams; most with {} ({}% of it); items hit: {}",
            pl.col(c_matches), pl.lit(self.ngram), pl.col(c_hit),
            (pl.col(c_cov) * 100).round(0).cast(pl.Int64), pl.col(c_hits).list.len(),
        )
        edited = pl.format("a stretch {}% edited (weighted word edits) from short eval item {}; items hit: {}",
                           (pl.col(c_edits) * 100).round(0).cast(pl.Int64), pl.col(c_hit), pl.col(c_hits).list.len())
        return df.select(
            pl.when(pl.col(c_matches) > 0).then(ngrams).when(pl.col(c_edits).is_not_null()).then(edited)
            .otherwise(None).alias("detail")
        ).to_series()

    def summary(self, df: pl.DataFrame, examples: int = 3) -> dict[str, Any]:
        """Which eval items were hit, per eval set (for the run report); df holds this filter's scores."""
        index = self.index()
        return summarize_hits(df, self.column, self.min_matches, self.min_coverage, set_sizes=index.set_sizes,
                              previews=dict(zip(index.labels, index.previews)), examples=examples)


def flagged(df: pl.DataFrame, column: str = "score_decontaminate", min_matches: int = 1,
            min_coverage: float = 0.0) -> pl.Series:
    """Rows that overlap an eval set by either test, from the score columns."""
    hit = (df[f"{column}_matches"] >= min_matches) & (df[f"{column}_coverage"].fill_null(0.0) >= min_coverage)
    if f"{column}_edits" in df.columns:  # frames scored before the near-copy test have no such column
        hit = hit | df[f"{column}_edits"].is_not_null()
    return hit


def summarize_hits(
    df: pl.DataFrame,
    column: str = "score_decontaminate",
    min_matches: int = 1,
    min_coverage: float = 0.0,
    set_sizes: dict[str, int] | None = None,
    previews: dict[str, str] | None = None,
    examples: int = 3,
) -> dict[str, Any]:
    """Summarise decontamination scores: rows flagged, and for each eval item hit, how many rows hit
    it, their ids and the best coverage. Items are counted from `<column>_hits` (all items a
    flagged row matches), so an eval prompt present in two sets shows up in both."""
    hits, cov = f"{column}_hits", f"{column}_coverage"
    flagged_rows = df.filter(flagged(df, column, min_matches, min_coverage))
    n = len(flagged_rows)
    ids = flagged_rows["id"] if "id" in flagged_rows.columns else pl.Series("id", [str(i) for i in range(n)])
    long = (
        flagged_rows.select(pl.col(hits), ids.cast(pl.String).alias("id"), pl.col(cov))
        .explode(hits)
        .drop_nulls(hits)
        .rename({hits: "item"})
    )
    per_item = (
        long.group_by("item")
        .agg(pl.len().alias("rows"), pl.col("id").head(examples).alias("example_ids"))
        .with_columns(pl.col("item").str.replace(r":\d+$", "").alias("set"))
        .sort(["rows", "item"], descending=[True, False])
    )
    by_set: dict[str, Any] = {}
    for name in sorted(set(per_item["set"].to_list()) | set(set_sizes or {})):
        sub = per_item.filter(pl.col("set") == name)
        by_set[name] = {"items_hit": len(sub), "row_hits": int(sub["rows"].sum()) if len(sub) else 0}
        if set_sizes and name in set_sizes:
            by_set[name]["items"] = set_sizes[name]
    items = per_item.drop("set").to_dicts()
    if previews:
        for it in items:
            it["text"] = previews.get(it["item"], "")
    return {
        "rows": len(df),
        "rows_flagged": len(flagged_rows),
        "eval_items_hit": len(per_item),
        "by_set": by_set,
        "items": items,
    }


__all__ = ["Decontaminate", "EvalIndex", "eval_texts", "markup_words", "edit_distance", "flagged", "summarize_hits",
           "PROMPT_FIELDS", "ANSWER_FIELDS"]
