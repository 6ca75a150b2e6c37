"""Eval-set decontamination: drop training rows that share a long word n-gram with an eval item.

The rule is the n-gram overlap test of GPT-3 (Brown et al. 2020, appendix C: 13-grams on
lowercased, punctuation-free words), also used for FLAN and Llama-2 contamination analyses.

How it works (vectorized, no per-row Python loop):

1. Every text field of every eval item (by default its prompt and, where the file has one, its
   reference answer: see `PROMPT_FIELDS` / `ANSWER_FIELDS`) is tokenized with the normaliser of
   `curate.text` (NFKC, lowercase, split at whitespace and punctuation), so case, punctuation
   and spacing edits do not hide a copy. Each field is indexed on its own, and so is the join of
   an item's prompt fields (instruction + input):
   - a field of >= `ngram` words: every word `ngram`-gram (64-bit hash);
   - a field of k < `ngram` words with k >= `min_words`: the whole field as one shingle, found in
     a training row that holds those k words contiguously (GPT-3 likewise used a shorter n for
     sets of short items, never below 8);
   - a field of fewer than `min_words` words: the whole field as one shingle, found only in a
     training row whose checked text is exactly those words (a 5-word phrase like "what is the
     capital of" would otherwise flag half of a dataset).
2. The index is a sorted array of (hash, eval item) pairs; each training row's n-grams are looked
   up with `searchsorted` in batches of ~1 MB of text, so memory stays bounded.

Scores (`score_<name>_...`): `matches` (distinct n-grams of the row found in any eval item),
`hit` (the eval item sharing the most n-grams with it, as "<file name>:<0-based row>"),
`coverage` (the share of that item's indexed n-grams found in the row: ~1.0 is a full copy) and
`hits` (every eval item it shares an n-gram with). `summarize_hits` / `Decontaminate.summary`
turn them into the report's "which eval items were hit" table.

Hash collisions: 64-bit hashes, so a false match needs ~2^64 / (index size x row n-grams) tries:
none expected at any realistic size.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import polars as pl
from pydantic import Field as Setting
from pydantic import PrivateAttr

from curate.errors import CurateError
from curate.io import read_table
from curate.records import message_text
from curate.steps import Filter, RecipePath, reasons
from curate.text import TextPart, hashed_words, ngram_hashes

# Eval-file columns read by default (matched case-insensitively): the prompt, then reference answers.
PROMPT_FIELDS = ("instruction", "input", "prompt", "question", "query", "problem", "turns", "conversations",
                 "messages", "text")
ANSWER_FIELDS = ("reference", "references", "output", "answer", "solution", "gold", "target", "choices",
                 "instances")
# Keys inside nested values that hold labels, not text (messages' role, choices' index, ...).
_SKIP_KEYS = {"role", "from", "index", "id", "name", "type", "model", "model_id"}
_SEED = 0x5EED  # any fixed value: the eval index and the training rows must hash alike
_U = np.uint64


def _leaf_texts(value: Any, key: str, out: list[tuple[str, str]]) -> None:
    """Collect (key, string) for the strings inside a cell: lists are walked under the same key,
    structs under their field names; label keys (role, index, ...) are skipped."""
    if value is None:
        return
    if isinstance(value, str):
        out.append((key, value))
    elif isinstance(value, dict):
        for k, v in value.items():
            if str(k).lower() not in _SKIP_KEYS:
                _leaf_texts(v, str(k), out)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _leaf_texts(v, key, out)


def eval_texts(path: str | Path, fields: list[str] | None = None) -> list[list[str]]:
    """The texts of each eval item (row) of one file: one list of strings per row.

    fields=None reads every column named in PROMPT_FIELDS or ANSWER_FIELDS (case-insensitive);
    nested values (MT-Bench `turns`, Self-Instruct `instances`, `messages`) give one text per leaf.
    When an item has several prompt texts (Alpaca-style instruction + input), their join is added
    too: a training prompt made of a short instruction and a short input is matched as a whole.
    """
    df = read_table(path)
    if fields is None:
        wanted = {f.lower() for f in PROMPT_FIELDS + ANSWER_FIELDS}
        cols = [c for c in df.columns if c.lower() in wanted]
        if not cols:
            raise CurateError(
                f"{path}: no text column to index; looked for {list(PROMPT_FIELDS + ANSWER_FIELDS)}, "
                f"the columns are {df.columns}. Name them with eval_fields=[...]"
            )
    else:
        cols = [c for c in fields if c in df.columns]
        if not cols:
            raise CurateError(f"{path}: none of eval_fields {fields} is a column; the columns are {df.columns}")
    prompt_keys = {f.lower() for f in PROMPT_FIELDS}
    items = []
    for row in df.select(cols).iter_rows():
        leaves: list[tuple[str, str]] = []
        for col, cell in zip(cols, row):
            _leaf_texts(cell, col, leaves)
        texts = [t for _, t in leaves]
        prompt = [t for k, t in leaves if k.lower() in prompt_keys and t.strip()]
        if len(prompt) > 1:
            texts.append("\n".join(prompt))
        items.append(texts)
    return items


class EvalIndex:
    """The n-gram hashes of a set of eval files, sorted, each with the eval item it came from."""

    def __init__(self, paths: list[str], ngram: int = 13, min_words: int = 8, fields: list[str] | None = None):
        self.ngram, self.min_words = ngram, min_words
        self.labels: list[str] = []  # eval item -> "<file>:<row>"
        self.previews: list[str] = []  # eval item -> start of its first text
        self.set_sizes: dict[str, int] = {}
        texts, owner = [], []
        names = [Path(p).name for p in paths]
        for path, name in zip(paths, names):
            if names.count(name) > 1:
                name = str(path)  # two sets with one file name: keep them apart
            items = eval_texts(path, fields)
            self.set_sizes[name] = len(items)
            for i, item in enumerate(items):
                owner.extend([len(self.labels)] * len(item))
                texts.extend(item)
                self.labels.append(f"{name}:{i}")
                self.previews.append(" ".join(item[0].split())[:100] if item else "")
        keys, items = [np.zeros(0, _U)], [np.zeros(0, np.int64)]
        lengths = set()  # word counts of short fields that are matched as contiguous runs
        series = pl.Series("text", texts, dtype=pl.String)
        owner_arr = np.asarray(owner, np.int64)
        skipped = 0
        for lo, _, h, word_offs in hashed_words(series):
            n_words = np.diff(word_offs)
            sh, doc = ngram_hashes(h, word_offs, ngram, _SEED)
            empty = n_words[doc] == 0
            skipped += int(empty.sum())
            keys.append(sh[~empty])
            items.append(owner_arr[lo + doc[~empty]])
            lengths.update(int(k) for k in np.unique(n_words[(n_words >= min_words) & (n_words < ngram)]))
        pairs = pl.DataFrame({"key": np.concatenate(keys), "item": np.concatenate(items)}).unique().sort("key", "item")
        self.keys = pairs["key"].to_numpy()
        self.items = pairs["item"].to_numpy()
        # Distinct shingles per item: the denominator of `coverage`.
        self.item_size = np.bincount(self.items, minlength=len(self.labels))
        # A direct-addressed presence table on the low hash bits screens out almost every query
        # before the binary search (random-access searchsorted is ~1 us per query; this ~10 ns).
        bits = int(np.clip(np.ceil(np.log2(max(len(self.keys), 1) * 32)), 12, 27))
        self._mask = _U((1 << bits) - 1)
        self._present = np.zeros(1 << bits, bool)
        self._present[(self.keys & self._mask).view(np.int64)] = True
        self.short_lengths = sorted(lengths)
        self.empty_fields = skipped

    def __len__(self) -> int:
        return len(self.keys)

    def lookup(self, texts: pl.Series) -> tuple[np.ndarray, pl.DataFrame]:
        """Look texts up. Returns (distinct shingles each text shares with any eval item, and a
        frame of (row, item, n): for each text and eval item sharing >= 1 shingle, how many)."""
        matches = np.zeros(len(texts), np.int64)
        frames = [pl.DataFrame(schema={"row": pl.Int64, "item": pl.Int64, "n": pl.Int64})]
        if len(self.keys) == 0:
            return matches, frames[0]
        last = len(self.keys) - 1
        for lo, _, h, word_offs in hashed_words(texts):
            found_sh, found_doc = [], []
            for n in [self.ngram, *self.short_lengths]:  # short eval fields: their own run length
                sh, doc = ngram_hashes(h, word_offs, n, _SEED)
                maybe = np.flatnonzero(self._present[(sh & self._mask).view(np.int64)])
                sh, doc = sh[maybe], doc[maybe]
                hit = self.keys[np.minimum(np.searchsorted(self.keys, sh), last)] == sh
                found_sh.append(sh[hit])
                found_doc.append(doc[hit])
            if not sum(len(x) for x in found_sh):
                continue
            found = pl.DataFrame({"row": np.concatenate(found_doc) + lo, "key": np.concatenate(found_sh)}).unique()
            row, key = found["row"].to_numpy(), found["key"].to_numpy()
            np.add.at(matches, row, 1)
            # Expand each found shingle to every eval item holding it.
            left = np.searchsorted(self.keys, key, "left")
            reps = np.searchsorted(self.keys, key, "right") - left
            idx = np.repeat(left - np.cumsum(reps) + reps, reps) + np.arange(reps.sum())
            frames.append(
                pl.DataFrame({"row": np.repeat(row, reps), "item": self.items[idx]})
                .group_by("row", "item")
                .agg(pl.len().cast(pl.Int64).alias("n"))
            )
        return matches, pl.concat(frames).sort("row", "item")


class Decontaminate(Filter):
    """Drop training rows that share a long n-gram (default 13 normalized words) with any item of
    the given eval sets: the overlap test of GPT-3 (Brown et al. 2020, app. C).

    `eval_sets`: files read_table reads (jsonl, json, parquet, csv, a datasets folder);
    `eval_fields`: their columns to index (default: prompt and reference-answer columns, see
    PROMPT_FIELDS / ANSWER_FIELDS); `field`: the part of the training row checked; a row is dropped
    when it shares >= `min_matches` distinct n-grams with the eval sets (and, if `min_coverage` is
    set, at least that share of the best-matching item's n-grams). Short eval fields: see the
    module docstring (`min_words`). Re-thresholding either needs no rescoring.
    """

    kind: ClassVar[str] = "decontaminate"

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

    _index: Any = PrivateAttr(default=None)
    _index_key: Any = PrivateAttr(default=None)

    def index(self) -> EvalIndex:
        """The eval n-gram index, built once (rebuilt if a setting or an eval file changes)."""
        key = (tuple(self.eval_sets), tuple(self.eval_fields or ()), self.ngram, self.min_words,
               tuple(os.stat(p).st_mtime_ns if os.path.exists(p) else 0 for p in self.eval_sets))
        if self._index is None or self._index_key != key:
            self._index = EvalIndex(list(self.eval_sets), self.ngram, min(self.min_words, self.ngram), self.eval_fields)
            self._index_key = key
        return self._index

    def score_columns(self) -> list[str]:
        return [f"{self.column}_{c}" for c in ("matches", "hit", "coverage", "hits")]

    def compute_scores(self, df: pl.DataFrame) -> pl.DataFrame:
        index = self.index()
        matches, pairs = index.lookup(message_text(df, self.field))
        c_matches, c_hit, c_cov, c_hits = self.score_columns()
        labels = pl.Series("label", index.labels, dtype=pl.String)
        items = pairs["item"].to_numpy()
        best = (
            pairs.with_columns(label=labels.gather(items), size=pl.Series(index.item_size[items], dtype=pl.Int64))
            .sort(["row", "n", "item"], descending=[False, True, False])  # most shared shingles first
            .group_by("row", maintain_order=True)
            .agg(
                pl.col("label").first().alias(c_hit),
                (pl.col("n").first() / pl.col("size").first()).cast(pl.Float64).alias(c_cov),
                pl.col("label").sort().alias(c_hits),
            )
        )
        table = pl.DataFrame({"row": np.arange(len(df), dtype=np.int64)}).join(best, on="row", how="left")
        return df.with_columns(
            pl.Series(c_matches, matches),
            table[c_hit],
            table[c_cov],
            table[c_hits].fill_null(pl.lit([], dtype=pl.List(pl.String))),
        )

    def decide(self, df: pl.DataFrame) -> tuple[pl.Series, pl.Series]:
        c_matches, _, c_cov, _ = self.score_columns()
        hit = (df[c_matches] >= self.min_matches) & (df[c_cov].fill_null(0.0) >= self.min_coverage)
        return reasons(~hit, "overlaps eval set")

    def explain(self, df: pl.DataFrame) -> pl.Series:
        c_matches, c_hit, c_cov, c_hits = self.score_columns()
        why = pl.format(
            "{} shared {}-grams; most with {} ({}% of it); items hit: {}",
            pl.col(c_matches), pl.lit(self.ngram), pl.col(c_hit),
            (pl.col(c_cov) * 100).round(0).cast(pl.Int64), pl.col(c_hits).list.len(),
        )
        return df.select(pl.when(pl.col(c_matches) > 0).then(why).otherwise(None).alias("detail")).to_series()

    def summary(self, df: pl.DataFrame, examples: int = 3) -> dict[str, Any]:
        """Which eval items were hit, per eval set (for the run report); df holds this filter's scores."""
        index = self.index()
        return summarize_hits(df, self.column, self.min_matches, self.min_coverage, set_sizes=index.set_sizes,
                              previews=dict(zip(index.labels, index.previews)), examples=examples)


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
    flagged row shares an n-gram with), so an eval prompt present in two sets shows up in both."""
    matches, hits, cov = f"{column}_matches", f"{column}_hits", f"{column}_coverage"
    flagged = df.filter((pl.col(matches) >= min_matches) & (pl.col(cov).fill_null(0.0) >= min_coverage))
    ids = flagged["id"] if "id" in flagged.columns else pl.Series("id", [str(i) for i in range(len(flagged))])
    long = (
        flagged.select(pl.col(hits), ids.cast(pl.String).alias("id"), pl.col(cov))
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
        "rows_flagged": len(flagged),
        "eval_items_hit": len(per_item),
        "by_set": by_set,
        "items": items,
    }


__all__ = ["Decontaminate", "EvalIndex", "eval_texts", "summarize_hits", "PROMPT_FIELDS", "ANSWER_FIELDS"]
