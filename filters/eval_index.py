"""The eval-set index behind `filters.decontaminate`: eval files read into prompt and answer
texts, their n-gram shingles indexed, and the two tests (long n-gram overlap, near copies of
short prompts) run over training rows. The rules and their sources are in that module's
docstring.

How it runs (vectorized, no per-row Python loop): the index is a sorted array of (hash, eval item)
pairs; each training row's n-grams are looked up with `searchsorted` in batches of ~1 MB of text,
so memory stays bounded. Only the candidate (row, short item) pairs of test 2 reach the edit
distance, one numpy pass per word of the item.

Hash collisions: 64-bit hashes, so a false match needs ~2^64 / (index size x row n-grams) tries:
none expected at any realistic size.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from curate.errors import CurateError
from curate.io import read_table
from curate.text import hashed_words, ngram_hashes, words

PROMPT_FIELDS = ("instruction", "input", "prompt", "question", "query", "problem", "turns", "conversations",
                 "messages", "text")
ANSWER_FIELDS = ("reference", "references", "output", "answer", "solution", "gold", "target", "choices",
                 "instances")
# Keys inside nested values that hold labels, not text (messages' role, choices' index, ...).
_SKIP_KEYS = {"role", "from", "index", "id", "name", "type", "model", "model_id"}
_SEED = 0x5EED  # any fixed value: the eval index and the training rows must hash alike
_U = np.uint64
_MIX = _U(0x9E3779B97F4A7C15)  # odd: spreads a row number over the bits of a word hash
_MIN_PROBES = 2  # a candidate row shares this many of a short text's probes (or all it has)
_PROBE = 3  # word n-gram that proposes candidate rows for the near-copy test
_LATEX_COMMAND = re.compile(r"\\([A-Za-z]+)")
_LATEX_ENV = re.compile(r"\\(?:begin|end)\s*\{([A-Za-z]+)\*?\}")
_NOT_PROSE = re.compile(r"\$\$.*?\$\$|\$.*?\$|\\\[.*?\\\]|\\\(.*?\\\)|\[asy\].*?\[/asy\]", re.S | re.I)
_ASY_BLOCK = re.compile(r"\[asy\](.*?)\[/asy\]", re.S | re.I)


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


def _eval_items(path: str | Path, fields: list[str] | None) -> list[tuple[list[str], list[str]]]:
    """Per eval row: (every text, its prompt texts). See `eval_texts`."""
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
    if not any(c.lower() in prompt_keys for c in cols):
        prompt_keys = {c.lower() for c in cols}  # eval_fields named no prompt column: all are prompts
    items = []
    for row in df.select(cols).iter_rows():
        leaves: list[tuple[str, str]] = []
        for col, cell in zip(cols, row):
            _leaf_texts(cell, col, leaves)
        texts = [t for _, t in leaves]
        prompt = [t for k, t in leaves if k.lower() in prompt_keys and t.strip()]
        if len(prompt) > 1:
            prompt.append("\n".join(prompt))
            texts.append(prompt[-1])
        items.append((texts, prompt))
    return items


def eval_texts(path: str | Path, fields: list[str] | None = None) -> list[list[str]]:
    """The texts of each eval item (row) of one file: one list of strings per row.

    fields=None reads every column named in PROMPT_FIELDS or ANSWER_FIELDS (case-insensitive);
    nested values (MT-Bench `turns`, Self-Instruct `instances`, `messages`) give one text per leaf.
    When an item has several prompt texts (Alpaca-style instruction + input), their join is added
    too: a training prompt made of a short instruction and a short input is matched as a whole.
    """
    return [texts for texts, _ in _eval_items(path, fields)]


def markup_words(texts: list[str]) -> set[str]:
    """Words used mostly as markup or code in these texts: LaTeX command and environment names and
    the words of Asymptote `[asy]` blocks, unless the texts use the word at least as often as
    prose (outside `$...$` math and code: `\\in` or `\\angle` do not make "in" or "angle"
    markup). Normalised as `curate.text.words` does."""
    markup: Counter[str] = Counter()
    prose: Counter[str] = Counter()
    for t in texts:
        if "\\" in t:
            markup.update(w.lower() for w in _LATEX_COMMAND.findall(t))
            markup.update(w.lower() for w in _LATEX_ENV.findall(t))
        if "[asy]" in t or "[ASY]" in t:
            for block in _ASY_BLOCK.findall(t):
                markup.update(words(block))
        if "\\" in t or "$" in t or "[asy]" in t:
            t = _LATEX_COMMAND.sub(" ", _LATEX_ENV.sub(" ", _NOT_PROSE.sub(" ", t)))
        prose.update(words(t))
    return {w for w, n in markup.items() if n > prose[w]}


def _prose_flags(text: str, markup: set[str], n_words: int) -> np.ndarray:
    """Per word of text: is it a prose word (>= 2 characters, no digit, not markup)?"""
    ws = words(text)
    if len(ws) != n_words:  # words() is the vectorised tokeniser's reference; never expected
        return np.ones(n_words, bool)
    return np.fromiter((len(w) > 1 and w not in markup and not any(c.isdigit() for c in w) for w in ws),
                       bool, len(ws))


def _window_starts(word_offs: np.ndarray, n: int) -> np.ndarray:
    """First word of each n-word window inside one document, in `ngram_hashes` order."""
    n_words = np.diff(word_offs)
    count = np.where(n_words >= n, n_words - n + 1, 0)
    first = np.repeat(word_offs[:-1], count)
    return first + np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)


def _drop_common(keys: np.ndarray, items: np.ndarray, item_set: np.ndarray, common_items: int) -> np.ndarray:
    """Mask of (key, item) pairs to keep: keys held by >= common_items items of one eval set go."""
    if not common_items or not len(keys):
        return np.ones(len(keys), bool)
    pairs = pl.DataFrame({"key": keys, "item": items, "set": item_set[items]})
    common = (
        pairs.unique(["key", "item"]).group_by("key", "set").agg(pl.len().alias("n"))
        .filter(pl.col("n") >= common_items)["key"].unique().to_numpy()
    )
    return ~np.isin(keys, common)


def edit_distance(a: np.ndarray, b: np.ndarray, stretch: bool = False, weights: np.ndarray | None = None,
                  limit: float | None = None, insert: np.ndarray | None = None) -> float:
    """Levenshtein distance between two word (hash) sequences; stretch=True: between `a` and the
    closest stretch of `b` (free start and end in b: approximate substring matching, Sellers 1980).

    weights: the cost of deleting or replacing each word of `a` (default 1); insert: the cost of
    inserting each word of `b` (default 1). One numpy pass per word of `a`; with `limit`, stops as
    soon as the distance must exceed it (the row minimum never decreases) and returns inf.
    """
    w = np.ones(len(a)) if weights is None else np.asarray(weights, float)
    # Cumulative insertion cost along b: inserting b[j:k] costs idx[k] - idx[j].
    idx = np.arange(len(b) + 1, dtype=float)
    if insert is not None:
        np.cumsum(insert, out=idx[1:])
    prev = np.zeros(len(b) + 1) if stretch else idx.copy()
    tmp = np.empty(len(b) + 1)
    for i, word in enumerate(a):
        tmp[0] = prev[0] + w[i]
        np.minimum(prev[:-1] + w[i] * (b != word), prev[1:] + w[i], out=tmp[1:])
        prev = np.minimum.accumulate(tmp - idx) + idx  # then insertions of b's words along the row
        if limit is not None and prev.min() > limit:
            return float("inf")
    return float(prev.min() if stretch else prev[-1])


def stretch_distances(a: list[np.ndarray], weights: list[np.ndarray], b: np.ndarray, insert: np.ndarray,
                      spans: np.ndarray, limits: np.ndarray, cells: int = 1 << 16) -> np.ndarray:
    """edit_distance(a[k], b[lo:hi], stretch=True, weights=weights[k], insert=insert[lo:hi],
    limit=limits[k]) for every pair k with spans[k] = (lo, hi), the pairs' rows side by side in one
    numpy pass per word: the same floating-point steps, so the same values, without a Python
    loop per pair (3,300 pairs a 100k-row part held the GIL for ~0.2 s). Pairs are taken by
    length, about `cells` DP cells at a time (64k: 4x the loop on real pairs; 2M cells, slower than it)."""
    out = np.full(len(a), np.inf)
    lengths = spans[:, 1] - spans[:, 0]
    order = np.argsort(lengths, kind="stable")
    lo = 0
    while lo < len(order):
        hi = lo + 1
        while hi < len(order) and (hi + 1 - lo) * (lengths[order[hi]] + 1) <= cells:
            hi += 1
        out[order[lo:hi]] = _stretch_batch([a[k] for k in order[lo:hi]], [weights[k] for k in order[lo:hi]],
                                           b, insert, spans[order[lo:hi]], limits[order[lo:hi]])
        lo = hi
    return out


def _stretch_batch(a, weights, b, insert, spans, limits) -> np.ndarray:
    n = spans[:, 1] - spans[:, 0]
    cols = int(n.max()) + 1
    valid = np.arange(cols - 1)[None, :] < n[:, None]  # DP columns 1..n of each row; the rest is padding
    pos = (spans[:, :1] + np.arange(cols - 1)[None, :])[valid]
    words = np.zeros((len(a), cols - 1), b.dtype)
    words[valid] = b[pos]
    ins = np.zeros((len(a), cols))
    ins[:, 1:][valid] = insert[pos]
    idx = np.cumsum(ins, axis=1)  # as edit_distance's cumsum: padding to the right changes no value
    in_row = np.concatenate([np.ones((len(a), 1), bool), valid], axis=1)
    m = np.array([len(x) for x in a])
    steps = int(m.max()) if len(a) else 0
    a_words = np.zeros((len(a), steps), b.dtype)
    a_weights = np.zeros((len(a), steps))
    for k, (x, w) in enumerate(zip(a, weights)):
        a_words[k, : len(x)], a_weights[k, : len(x)] = x, w
    prev = np.zeros((len(a), cols))
    live = np.ones(len(a), bool)
    for i in range(steps):
        rows = np.flatnonzero(live & (m > i))
        if not len(rows):
            break
        w = a_weights[rows, i][:, None]
        p, tmp = prev[rows], np.empty((len(rows), cols))
        tmp[:, 0] = p[:, 0] + w[:, 0]
        np.minimum(p[:, :-1] + w * (words[rows] != a_words[rows, i][:, None]), p[:, 1:] + w, out=tmp[:, 1:])
        prev[rows] = np.minimum.accumulate(tmp - idx[rows], axis=1) + idx[rows]
        over = np.where(in_row[rows], prev[rows], np.inf).min(axis=1) > limits[rows]
        live[rows[over]] = False  # its distance must exceed the limit: no more work on it
    out = np.where(in_row, prev, np.inf).min(axis=1)
    out[~live] = np.inf
    return out


class _Table:
    """Sorted (hash, owner) pairs with a presence screen on the low hash bits: a direct-addressed
    table screens out almost every query before the binary search (random-access searchsorted is
    ~1 us per query; the screen ~10 ns)."""

    def __init__(self, keys: np.ndarray, owners: np.ndarray):
        pairs = pl.DataFrame({"key": keys, "owner": owners}).unique().sort("key", "owner")
        self.keys = pairs["key"].to_numpy()
        self.owners = pairs["owner"].to_numpy()
        bits = int(np.clip(np.ceil(np.log2(max(len(self.keys), 1) * 32)), 12, 27))
        self._mask = _U((1 << bits) - 1)
        self._present = np.zeros(1 << bits, bool)
        self._present[(self.keys & self._mask).view(np.int64)] = True

    def find(self, sh: np.ndarray, doc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The (shingle, doc) pairs whose shingle is in the table."""
        if not len(self.keys):
            return sh[:0], doc[:0]
        maybe = np.flatnonzero(self._present[(sh & self._mask).view(np.int64)])
        sh, doc = sh[maybe], doc[maybe]
        hit = self.keys[np.minimum(np.searchsorted(self.keys, sh), len(self.keys) - 1)] == sh
        return sh[hit], doc[hit]

    def expand(self, key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For keys in the table: (index into `key`, owner) for every owner of each."""
        left = np.searchsorted(self.keys, key, "left")
        reps = np.searchsorted(self.keys, key, "right") - left
        idx = np.repeat(left - np.cumsum(reps) + reps, reps) + np.arange(reps.sum())
        return np.repeat(np.arange(len(key)), reps), self.owners[idx]


class EvalIndex:
    """The n-gram hashes of a set of eval files (test 1) and the short texts of the near-copy test
    (test 2), each with the eval item it came from. See the module docstring."""

    def __init__(self, paths: list[str], ngram: int = 13, min_words: int = 8, fields: list[str] | None = None,
                 common_items: int = 0, min_prose: float = 0.0, short_words: int = 0, max_edits: float = 0.3,
                 min_answer_share: float = 0.0):
        self.ngram, self.min_words, self.max_edits = ngram, min_words, max_edits
        self.min_answer_share = min_answer_share
        self.labels: list[str] = []  # eval item -> "<file>:<row>"
        self.previews: list[str] = []  # eval item -> start of its first text
        self.set_sizes: dict[str, int] = {}
        texts, owner, is_prompt, item_set = [], [], [], []
        names = [Path(p).name for p in paths]
        for s, (path, name) in enumerate(zip(paths, names)):
            if names.count(name) > 1:
                name = str(path)  # two sets with one file name: keep them apart
            items = _eval_items(path, fields)
            self.set_sizes[name] = len(items)
            for i, (item, prompt) in enumerate(items):
                owner.extend([len(self.labels)] * len(item))
                texts.extend(item)
                is_prompt.extend(t in prompt for t in item)
                item_set.append(s)
                self.labels.append(f"{name}:{i}")
                self.previews.append(" ".join(item[0].split())[:100] if item else "")
        self.item_set = np.asarray(item_set, np.int64)
        owner_arr = np.asarray(owner, np.int64)
        markup = markup_words(texts) if min_prose > 0 else set()
        near_below = max(short_words, ngram) if short_words > min_words else 0
        keys, docs = [np.zeros(0, _U)], [np.zeros(0, np.int64)]
        n_words_all = np.zeros(len(texts), np.int64)
        text_words: dict[int, np.ndarray] = {}  # the words of texts that test 2 may cover
        for lo, _, h, word_offs in hashed_words(pl.Series("text", texts, dtype=pl.String)):
            n_words = np.diff(word_offs)
            n_words_all[lo : lo + len(n_words)] = n_words
            sh, doc = ngram_hashes(h, word_offs, ngram, _SEED)
            keep = n_words[doc] > 0
            if min_prose > 0:
                prose = np.concatenate([np.zeros(0, bool)] + [
                    _prose_flags(texts[lo + d], markup, int(k)) for d, k in enumerate(n_words)])
                cum = np.concatenate([[0], np.cumsum(prose)])
                starts = _window_starts(word_offs, ngram)
                short = n_words < ngram
                share = np.concatenate([
                    (cum[starts + ngram] - cum[starts]) / ngram,  # each full n-gram
                    (cum[word_offs[1:]] - cum[word_offs[:-1]])[short] / np.maximum(n_words[short], 1),
                ])
                keep &= (share >= min_prose) | (n_words[doc] < min_words)  # a tiny field must match exactly anyway
            keys.append(sh[keep])
            docs.append(lo + doc[keep])
            for d in np.flatnonzero((n_words >= min_words) & (n_words < near_below)).tolist():
                text_words[lo + d] = h[word_offs[d] : word_offs[d + 1]]
        self.empty_fields = int((n_words_all == 0).sum())
        # Test 2 covers prompts under short_words words (edits allowed) and any text under ngram
        # words (exact runs only: what test 1 would match with a whole-field shingle).
        short = [t for t in sorted(text_words) if n_words_all[t] < ngram or is_prompt[t]]
        allow = np.array([max_edits if is_prompt[t] else 0.0 for t in short])
        covered = np.zeros(len(texts), bool)
        covered[short] = self._short_index([text_words[t] for t in short], owner_arr[short], allow, common_items)
        keys_arr, doc_arr = np.concatenate(keys), np.concatenate(docs)
        mid = (n_words_all[doc_arr] >= min_words) & (n_words_all[doc_arr] < ngram)
        keep = ~(mid & covered[doc_arr])  # a short field test 2 covers needs no whole-field shingle
        keys_arr, items_arr = keys_arr[keep], owner_arr[doc_arr[keep]]
        answer_arr = ~np.asarray(is_prompt, bool)[doc_arr[keep]] if texts else np.zeros(0, bool)
        self.short_lengths = sorted({int(k) for k in n_words_all[doc_arr[keep & mid]]})
        common = _drop_common(keys_arr, items_arr, self.item_set, common_items)
        # One entry per (shingle, item), owner = item * 2 + 1 if the shingle is in none of the item's
        # prompt texts, only in its answers (see `lookup`).
        owners = (
            pl.DataFrame({"key": keys_arr[common], "item": items_arr[common], "answer": answer_arr[common]})
            .group_by("key", "item").agg(pl.col("answer").all())
        )
        answer_only = owners["answer"].to_numpy()
        self.table = _Table(owners["key"].to_numpy(), owners["item"].to_numpy() * 2 + answer_only)
        self.common_dropped = int(len(np.unique(keys_arr[~common])))
        # Distinct shingles per item (the denominator of `coverage`), and those only in its answers.
        self.item_size = np.bincount(self.table.owners >> 1, minlength=len(self.labels))
        self.answer_size = np.bincount(self.table.owners >> 1, self.table.owners & 1, len(self.labels)).astype(np.int64)

    def _short_index(self, short_words: list[np.ndarray], owner: np.ndarray, allow: np.ndarray,
                     common_items: int) -> np.ndarray:
        """Test 2: keep each short text's words, word weights, allowance (a share of its weight)
        and 3-grams (the probes that propose candidate rows). Returns which texts have a probe."""
        self.short_words = short_words
        self.short_item = owner
        self.short_allow = allow
        self.probes = _Table(np.zeros(0, _U), np.zeros(0, np.int64))
        self.short_probes = np.zeros(len(short_words), np.int64)
        self.short_weights: list[np.ndarray] = []
        self.short_sizes, self.short_total = np.zeros(0, np.int64), np.zeros(0)
        self._vocab, self._idf, self._idf_unseen = np.zeros(1, _U), np.ones(1), 1.0
        self._slot_mask, self._slots = _U(0), np.full(1, -1, np.int64)
        if not short_words:
            return np.zeros(0, bool)
        # Word weights: smoothed inverse document frequency over the short texts, so that words
        # common in the eval set (what, the, x, 2) weigh less than the ones that make an item its own.
        vocab, df = np.unique(np.concatenate([np.unique(w) for w in short_words]), return_counts=True)
        idf = np.log((1 + len(short_words)) / (1 + df)) + 1
        self.short_weights = [idf[np.searchsorted(vocab, w)] for w in short_words]
        self._vocab, self._idf, self._idf_unseen = vocab, idf, float(np.log(1 + len(short_words)) + 1)
        bits = int(np.clip(np.ceil(np.log2(len(vocab) * 8)), 10, 24))
        self._slot_mask = _U((1 << bits) - 1)
        slot = (vocab & self._slot_mask).view(np.int64)
        self._slots = np.full(1 << bits, -1, np.int64)
        self._slots[slot] = np.arange(len(vocab))
        taken, n = np.unique(slot, return_counts=True)
        self._slots[taken[n > 1]] = -2
        self.short_sizes = sizes = np.array([len(w) for w in short_words])
        self.short_total = np.array([w.sum() for w in self.short_weights])
        # The same, flat: short text s is [_short_start[s], _short_start[s] + sizes[s]) (see _absent_weight).
        self._short_start = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self._flat_words, self._flat_weights = np.concatenate(short_words), np.concatenate(self.short_weights)
        sh, doc = ngram_hashes(np.concatenate(short_words), np.concatenate([[0], np.cumsum(sizes)]), _PROBE, _SEED)
        keep = _drop_common(sh, owner[doc], self.item_set, common_items)
        self.probes = _Table(sh[keep], doc[keep])
        self.short_probes = np.bincount(self.probes.owners, minlength=len(short_words))
        return self.short_probes > 0

    def word_weight(self, hashes: np.ndarray) -> np.ndarray:
        """Test 2's weight of each word: its smoothed inverse document frequency among the short
        eval texts (a word they never use weighs as much as one used once)."""
        # A direct-addressed table on the low hash bits (no sort, no binary search); a slot that two
        # vocabulary words share (-2) falls back to the binary search.
        at = self._slots[(hashes & self._slot_mask).view(np.int64)]
        shared = np.flatnonzero(at == -2)
        at[shared] = np.minimum(np.searchsorted(self._vocab, hashes[shared]), len(self._vocab) - 1)
        seen = (at >= 0) & (self._vocab[np.maximum(at, 0)] == hashes)
        return np.where(seen, self._idf[np.maximum(at, 0)], self._idf_unseen)

    def __len__(self) -> int:
        return len(self.table.keys)

    def lookup(self, texts: pl.Series) -> tuple[np.ndarray, pl.DataFrame, tuple]:
        """Look texts up. Returns (distinct shingles each text shares with any eval item; a frame of
        (row, item, n): for each text and eval item sharing >= 1 shingle, how many; the candidates
        of test 2 as (rows, short texts, weight of their words absent from the row, the rows' word
        hashes), for `near`)."""
        matches = np.zeros(len(texts), np.int64)
        frames = [pl.DataFrame(schema={"row": pl.Int64, "item": pl.Int64, "n": pl.Int64})]
        cand_rows, cand_shorts, cand_absent, cand_words = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [], []
        for lo, _, h, word_offs in hashed_words(texts):
            whole = np.zeros(len(word_offs) - 1, bool)  # rows holding every shingle of some eval text
            found_sh, found_doc = [], []
            for n in [self.ngram, *self.short_lengths]:  # short eval fields: their own run length
                sh, doc = self.table.find(*ngram_hashes(h, word_offs, n, _SEED))
                found_sh.append(sh)
                found_doc.append(doc)
            if sum(len(x) for x in found_sh):
                found = pl.DataFrame({"row": np.concatenate(found_doc) + lo, "key": np.concatenate(found_sh)}).unique()
                row, key = found["row"].to_numpy(), found["key"].to_numpy()
                at, owner = self.table.expand(key)  # each found shingle to every eval item holding it
                per_pair = pl.DataFrame({"row": row[at], "item": owner >> 1}).group_by("row", "item").agg(
                    pl.len().cast(pl.Int64).alias("n"))
                f_row, f_item, f_n = (per_pair[c].to_numpy() for c in ("row", "item", "n"))
                whole[f_row[f_n >= self.item_size[f_item]] - lo] = True
                ok, counts = self._evidence(row, at, owner, f_row, f_item, f_n, lo, len(word_offs) - 1)
                if not ok.all():
                    per_pair = per_pair.filter(pl.Series(ok))
                np.add.at(matches, row[counts], 1)
                frames.append(per_pair.select("row", "item", "n"))
            if len(self.probes.keys):
                row, short, absent = self._candidates(h, word_offs, whole)
                cand_rows.append(row + lo)
                cand_shorts.append(short)
                cand_absent.append(absent)
                cand_words.extend(h[word_offs[r] : word_offs[r + 1]] for r in row.tolist())
        pairs = pl.concat(frames).sort("row", "item")
        rows, shorts = np.concatenate(cand_rows), np.concatenate(cand_shorts)
        # A (row, item) pair test 1 matched needs no test 2: the row is flagged and the item listed.
        n_items = max(len(self.labels), 1)
        new = ~np.isin(rows * n_items + self.short_item[shorts], pairs["row"].to_numpy() * n_items + pairs["item"].to_numpy())
        candidates = (rows[new], shorts[new], np.concatenate([np.zeros(0)] + cand_absent)[new],
                      [w for w, keep in zip(cand_words, new.tolist()) if keep])
        return matches, pairs, candidates

    def _evidence(self, row, at, owner, f_row, f_item, f_n, lo: int, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
        """Test 1's evidence in one batch: which (row, item) pairs of `lookup` count (shingles found
        only in an item's answers count when the row also shares its prompt's, or holds
        min_answer_share of its answers': stock derivation phrases are no copy), and which found
        (row, shingle)s count (those of at least one pair that does)."""
        ok, counts = np.ones(len(f_row), bool), np.ones(len(row), bool)
        answer = (owner & 1).astype(bool)
        if not answer.any():
            return ok, counts
        n_items = len(self.labels)
        pair = f_row * n_items + f_item
        order = np.argsort(pair)
        code, n_answer = np.unique(row[at[answer]] * n_items + (owner[answer] >> 1), return_counts=True)
        f_answer = np.zeros(len(pair), np.int64)
        f_answer[order[np.searchsorted(pair, code, sorter=order)]] = n_answer
        ok = (f_answer < f_n) | (f_n >= self.min_answer_share * self.answer_size[f_item])
        if not ok.all():  # recount the rows with a dropped pair only
            recount = np.zeros(n_rows, bool)
            recount[f_row[~ok] - lo] = True
            sub = np.flatnonzero(recount[row[at] - lo])
            kept = np.isin(row[at[sub]] * n_items + (owner[sub] >> 1), pair[ok & recount[f_row - lo]])
            counts[at[sub]] = False
            counts[at[sub[kept]]] = True
        return ok, counts

    def _candidates(self, h: np.ndarray, word_offs: np.ndarray, skip: np.ndarray) -> tuple:
        """Test 2's candidates in one batch: (row, short text) pairs sharing two of its probes (or
        all it has), whose words absent from the row weigh no more than its allowance (a lower bound
        of the edit distance: an absent word must be deleted or replaced); rows in `skip` (whole
        copies of an eval text, flagged by test 1 whatever test 2 finds) are left out. Returns
        (rows, shorts, that weight)."""
        sh, doc = ngram_hashes(h, word_offs, _PROBE, _SEED)
        keep = ~skip[doc]
        sh, doc = self.probes.find(sh[keep], doc[keep])
        if not len(sh):
            return doc[:0], doc[:0], np.zeros(0)
        found = pl.DataFrame({"row": doc, "key": sh}).unique()
        at, short = self.probes.expand(found["key"].to_numpy())
        pairs = pl.DataFrame({"row": found["row"].to_numpy()[at], "short": short}).group_by("row", "short").len()
        row, short, n = (pairs[c].to_numpy() for c in ("row", "short", "len"))
        keep = n >= np.minimum(_MIN_PROBES, self.short_probes[short])
        row, short = row[keep], short[keep]
        absent, total = self._absent_weight(h, word_offs, row, short)
        ok = absent <= self.short_allow[short] * total
        return row[ok], short[ok], absent[ok]

    def _absent_weight(self, h: np.ndarray, word_offs: np.ndarray, row: np.ndarray, short: np.ndarray):
        """For (text, short text) pairs: the weight of the short text's words absent from the text,
        and its total weight. A presence table of (text, word): a false "present" (two pairs on one
        slot) only loosens the bound."""
        if not len(row):
            return np.zeros(0), np.zeros(0)
        bits = int(np.clip(np.ceil(np.log2(max(len(h), 1) * 4)), 12, 26))
        mask = _U((1 << bits) - 1)
        present = np.zeros(1 << bits, bool)
        present[((h + np.repeat(np.arange(len(word_offs) - 1, dtype=_U), np.diff(word_offs)) * _MIX) & mask)
                .view(np.int64)] = True
        sizes = self.short_sizes[short]
        first = np.repeat(self._short_start[short] - np.cumsum(sizes) + sizes, sizes) + np.arange(sizes.sum())
        words_, weights = self._flat_words[first], self._flat_weights[first]
        slot = (words_ + np.repeat(row.astype(_U), sizes) * _MIX) & mask
        pair = np.repeat(np.arange(len(row)), sizes)
        absent = np.bincount(pair, np.where(present[slot.view(np.int64)], 0.0, weights), len(row))
        return absent, np.bincount(pair, weights, len(row))

    def near(self, candidates: tuple, prompts: pl.Series | None = None) -> pl.DataFrame:
        """Test 2's exact check of `lookup`'s candidates. Returns (row, item, edits): edits is the
        share of the short text's weight edited in the closest stretch of the row (0: an exact run).

        An exact run is looked for in the whole checked text; an edited copy of a prompt only in
        `prompts`, the prompt part of each candidate row (in the order of np.unique(rows)); without
        it, in the whole text too. A prompt-sized stretch of a long answer that resembles a short
        eval prompt (a famous joke retold, a textbook sentence) is no copy of the item.
        """
        rows, shorts, absent, row_words = candidates
        out = []
        exact = np.zeros(len(rows), bool)
        for k in np.flatnonzero(absent == 0).tolist():  # every word is there: try an exact run first
            exact[k] = _has_run(row_words[k], self.short_words[shorts[k]])
        for k in np.flatnonzero(exact).tolist():
            out.append((int(rows[k]), int(self.short_item[shorts[k]]), 0.0))
        total = self.short_total[shorts]
        allow = self.short_allow[shorts] * total
        if prompts is not None and len(rows):  # the prompts' words, and the bound again on them
            uniq = np.unique(rows)
            hashes, offsets = [np.zeros(0, _U)], [np.zeros(1, np.int64)]
            for _, _, h, word_offs in hashed_words(prompts):
                offsets.append(word_offs[1:] + sum(len(x) for x in hashes))
                hashes.append(h)
            h, word_offs = np.concatenate(hashes), np.concatenate(offsets)
            at = np.searchsorted(uniq, rows)
            within, _ = self._absent_weight(h, word_offs, at, shorts)
        else:  # the whole checked text
            h = np.concatenate([np.zeros(0, _U), *row_words])
            word_offs = np.concatenate([[0], np.cumsum([len(t) for t in row_words])]).astype(np.int64)
            at, within = np.arange(len(rows)), absent
        todo = np.flatnonzero(~exact & (allow > 0) & (within <= allow))
        # Inserting a word of the row costs its weight: looked up for the rows to check only.
        weight = np.zeros(len(h))
        spans = np.unique(at[todo])
        if len(spans):
            sizes = word_offs[spans + 1] - word_offs[spans]
            pos = np.repeat(word_offs[spans] - np.cumsum(sizes) + sizes, sizes) + np.arange(sizes.sum())
            weight[pos] = self.word_weight(h[pos])
        if len(todo):
            s = shorts[todo]
            cost = stretch_distances([self.short_words[x] for x in s.tolist()], [self.short_weights[x] for x in s.tolist()],
                                     h, weight, np.stack([word_offs[at[todo]], word_offs[at[todo] + 1]], axis=1),
                                     allow[todo])
            near = np.flatnonzero(cost <= allow[todo])
            out += zip(rows[todo[near]].tolist(), self.short_item[s[near]].tolist(), (cost[near] / total[todo[near]]).tolist())
        frame = pl.DataFrame(out, schema={"row": pl.Int64, "item": pl.Int64, "edits": pl.Float64}, orient="row")
        return frame.group_by("row", "item").agg(pl.col("edits").min()).sort("row", "item")


def _has_run(text: np.ndarray, run: np.ndarray) -> bool:
    """Does `text` hold `run` as consecutive words?"""
    n = len(run)
    for p in np.flatnonzero(text[: len(text) - n + 1] == run[0]).tolist():
        if np.array_equal(text[p : p + n], run):
            return True
    return False
