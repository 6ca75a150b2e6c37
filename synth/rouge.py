"""ROUGE-L and the Self-Instruct novelty filter, exact and fast.

Self-Instruct (Wang et al. 2022) adds a generated instruction to its pool only if its ROUGE-L
F-measure against every instruction already there is below 0.7. Done naively that is one LCS per
(candidate, pool item) pair: quadratic in pool size with a quadratic DP inside. This module makes the
same keep/drop decisions with three exact filters before any LCS is computed:

1. Length: LCS <= min(la, lb), so F = 2 LCS / (la + lb) <= 2 min / (la + lb).
2. Prefix filtering (Chaudhuri et al. 2006, "A primitive operator for similarity joins"): LCS is at
   most the multiset token overlap O. Number each token occurrence ("the"#1, "the"#2, ...) so the
   multiset becomes a set, and sort each set by one global order, rarest first. If O >= alpha, the
   first |A| - alpha + 1 tokens of A share a token with B's first |B| - alpha + 1. So only
   records that share a rare *prefix* token are ever looked at (an inverted index over prefixes).
3. The exact overlap O (a set intersection) for the pairs that survive.
Then LCS by the bit-parallel algorithm of Allison & Dix (1986) in Hyyrö's form (2004): one word of
the candidate is one bit, a Python big int holds them all, and each token of the other string costs
four integer operations instead of a DP row.

Exactness: the bounds are compared with a 1e-9 slack in the safe direction, and the final decision
uses the same floating-point formula as `rouge_score` (P = lcs/lb, R = lcs/la, F = 2PR/(P+R)), so the
decisions are identical to a naive loop over `rouge_score`, ties at exactly 0.7 included.

Tokenization is `rouge_score`'s default (what Self-Instruct used): lowercase, every run of characters
other than [a-z0-9] is a separator, no stemming.

Self-Instruct's code drops a candidate when the max score is > 0.7; here a candidate is dropped when
it is >= threshold (the issue's wording). Use threshold=0.7 + 1e-12 to get Self-Instruct's ">".
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

__all__ = [
    "NoveltyFilter",
    "lcs_length",
    "novel_mask",
    "novel_mask_naive",
    "rouge_l",
    "rouge_l_tokens",
    "tokenize",
]

_TOKEN_RE = re.compile(r"[a-z0-9]+")
_POS_BITS = 24  # index entries are (record << 24) | position in the record's sorted key list
_EPS = 1e-9  # slack for bounds computed in floating point; always in the "keep looking" direction


def tokenize(text: str) -> list[str]:
    """rouge_score's default tokenizer: lowercase, [a-z0-9]+ runs, no stemming."""
    return _TOKEN_RE.findall(text.lower())


def _fmeasure(lcs: int, la: int, lb: int) -> float:
    """rouge_score's F-measure, same float operations (the result is symmetric in a and b)."""
    if lcs == 0:
        return 0.0
    precision = lcs / lb
    recall = lcs / la
    return 2 * precision * recall / (precision + recall)


def lcs_length(a: Sequence, b: Sequence) -> int:
    """Length of the longest common subsequence, bit-parallel (Hyyro 2004).

    Bit i of V is 1 while a[i] is still unmatched; per symbol c of b, with U = V & match(c):
    V <- (V + U) | (V - U). The LCS is the number of zero bits in the low len(a) bits at the end.
    """
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return 0
    masks: dict = {}
    for i, tok in enumerate(a):
        masks[tok] = masks.get(tok, 0) | (1 << i)
    return _lcs_masks(masks, len(a), b)


def _lcs_masks(masks: dict, m: int, b: Iterable) -> int:
    full = (1 << m) - 1
    v = full
    get = masks.get
    for tok in b:
        mk = get(tok)
        if mk:
            u = v & mk
            v = (v + u) | (v - u)
    return m - (v & full).bit_count()


def rouge_l_tokens(a: Sequence, b: Sequence) -> float:
    """ROUGE-L F-measure of two token sequences (0.0 if either is empty)."""
    if not a or not b:
        return 0.0
    return _fmeasure(lcs_length(a, b), len(a), len(b))


def rouge_l(a: str, b: str) -> float:
    """ROUGE-L F-measure of two texts, as rouge_score's RougeScorer(["rougeL"]) computes it."""
    return rouge_l_tokens(tokenize(a), tokenize(b))


class _Record:
    __slots__ = ("ids", "keys", "n")

    def __init__(self, ids: tuple[int, ...], keys: frozenset[int]):
        self.ids = ids  # token ids in order (for the LCS)
        self.keys = keys  # occurrence-numbered token ids (for the multiset overlap)
        self.n = len(ids)


class NoveltyFilter:
    """A growing pool of instructions; a candidate is novel if its ROUGE-L F against every pool
    instruction is < threshold. `filter()` keeps candidates sequentially (a kept candidate joins the
    pool before the next one is checked), as Self-Instruct does.

        nf = NoveltyFilter(seed_instructions, threshold=0.7)
        keep = nf.filter(new_instructions)      # list[bool]; kept ones are now in the pool
        nf.last_matches                          # (pool index, score) of the blocker, per dropped one
    """

    def __init__(self, pool: Iterable[str] = (), threshold: float = 0.7):
        self.threshold = float(threshold)
        self._vocab: dict[str, int] = {}
        self._records: list[_Record] = []
        self._texts: list[str] = []
        self._rank: dict[int, int] = {}
        self._next_new_rank = -1  # tokens first seen after a rebuild go first: they are rare
        self._index: dict[int, dict[int, list[int]]] = {}  # key -> partner length -> entries
        self._built_at = 0  # pool size at the last rank rebuild
        self.last_matches: list[tuple[int, float] | None] = []
        self.pairs_checked = 0  # LCS computations done (for benchmarks)
        pool = list(pool)
        if pool:
            self.add(pool)

    def __len__(self) -> int:
        return len(self._records)

    @property
    def pool(self) -> list[str]:
        return list(self._texts)

    # -- token bookkeeping -----------------------------------------------------------------------
    def _encode(self, text: str) -> _Record:
        vocab = self._vocab
        ids = []
        for w in tokenize(text):
            i = vocab.get(w)
            if i is None:
                i = vocab[w] = len(vocab)
            ids.append(i)
        seen: dict[int, int] = {}
        keys = []
        for i in ids:
            k = seen.get(i, 0)
            seen[i] = k + 1
            keys.append((k << 32) | i)  # the k-th occurrence of token i
        return _Record(tuple(ids), frozenset(keys))

    def _bounds(self, n: int) -> tuple[int, int, int]:
        """(shortest partner, longest partner, prefix length) that can reach the threshold."""
        t = min(max(self.threshold, 1e-6), 1.0)  # outside (0, 1] _blocker decides without bounds
        lo = max(1, math.ceil(t * n / (2 - t) - _EPS))
        hi = math.floor((2 - t) * n / t + _EPS)
        alpha = max(1, math.ceil(t * (n + lo) / 2 - _EPS))  # least overlap any partner needs
        return lo, hi, n - alpha + 1

    def _prefix(self, rec: _Record) -> list[int]:
        p = self._bounds(rec.n)[2]
        if p <= 0:
            return []
        rank = self._rank
        for k in rec.keys:
            if k not in rank:
                rank[k] = self._next_new_rank
                self._next_new_rank -= 1
        return sorted(rec.keys, key=rank.__getitem__)[:p]

    def _index_record(self, j: int) -> None:
        index = self._index
        m = self._records[j].n
        for pos, k in enumerate(self._prefix(self._records[j])):
            entry = (j << _POS_BITS) | pos  # record and the key's position in its sorted order
            by_len = index.get(k)
            if by_len is None:
                index[k] = {m: [entry]}
            else:
                lst = by_len.get(m)
                if lst is None:
                    by_len[m] = [entry]
                else:
                    lst.append(entry)

    def _rebuild(self, upcoming: list[_Record]) -> None:
        """Global order = ascending frequency over the pool and the coming batch, then re-index."""
        df: dict[int, int] = {}
        for rec in self._records + upcoming:
            for k in rec.keys:
                df[k] = df.get(k, 0) + 1
        self._rank = {k: r for r, k in enumerate(sorted(df, key=lambda k: (df[k], k)))}
        self._next_new_rank = -1
        self._index = {}
        for j in range(len(self._records)):
            self._index_record(j)
        self._built_at = max(1, len(self._records) + len(upcoming))

    # -- public ----------------------------------------------------------------------------------
    def add(self, texts: Iterable[str]) -> None:
        """Put instructions in the pool unconditionally (seed tasks)."""
        texts = list(texts)
        start = len(self._records)
        self._records.extend(self._encode(t) for t in texts)
        self._texts.extend(texts)
        if len(self._records) > 2 * self._built_at:
            self._rebuild([])
        else:
            for j in range(start, len(self._records)):
                self._index_record(j)

    def _blocker(self, rec: _Record) -> tuple[int, float] | None:
        """The first pool record with F >= threshold, or None if rec is novel."""
        t = self.threshold
        if t <= 0:  # every pair scores >= 0 (empty token lists included)
            return (0, 0.0) if self._records else None
        if t > 1:  # no pair scores above 1
            return None
        n = rec.n
        if n == 0:
            return None
        lo, hi, _ = self._bounds(n)
        masks: dict[int, int] = {}
        for i, tok in enumerate(rec.ids):
            masks[tok] = masks.get(tok, 0) | (1 << i)
        records = self._records
        keys = rec.keys
        index = self._index
        half_t = t / 2
        pos_mask = (1 << _POS_BITS) - 1
        # PPJoin (Xiao et al. 2008): count shared prefix tokens per record; the positional filter
        # bounds the final overlap by count + 1 + min(tokens left in each after this match).
        acc: dict[int, int] = {}
        get = acc.get
        two_over_t = 2 / t
        for i, k in enumerate(self._prefix(rec)):
            by_len = index.get(k)
            if by_len is None:
                continue
            left = n - i - 1
            # a pair of lengths (n, m) needs overlap alpha = t(n+m)/2, and its first shared token
            # lies in x's first n - alpha + 1 positions: so at position i only m <= m_top can start
            m_top = min(hi, math.floor(two_over_t * (n - i + _EPS) - n))
            for m, entries in by_len.items():
                if m < lo or m > m_top:
                    continue
                need = half_t * (n + m) - _EPS
                for entry in entries:
                    j = entry >> _POS_BITS
                    a = get(j, 0)
                    if a < 0:
                        continue
                    rest = m - (entry & pos_mask) - 1
                    if a + 1 + (left if left < rest else rest) >= need:  # noqa: FURB136 (hot loop)
                        acc[j] = a + 1
                    else:
                        acc[j] = -1
        for j, a in acc.items():
            if a <= 0:
                continue
            other = records[j]
            m = other.n
            need = half_t * (n + m) - _EPS  # an LCS below this cannot reach t
            if len(keys & other.keys) < need:
                continue
            self.pairs_checked += 1
            lcs = _lcs_masks(masks, n, other.ids)
            if lcs >= need:
                f = _fmeasure(lcs, n, m)
                if f >= t:
                    return j, f
        return None

    def is_novel(self, text: str) -> bool:
        """True if `text` is below the threshold against the whole pool (the pool is unchanged)."""
        return self._blocker(self._encode(text)) is None

    def filter(self, candidates: Iterable[str]) -> list[bool]:
        """Keep-mask over candidates, sequentially; kept ones join the pool."""
        candidates = list(candidates)
        recs = [self._encode(c) for c in candidates]
        if len(self._records) + len(recs) > 2 * self._built_at:
            self._rebuild(recs)
        keep: list[bool] = []
        self.last_matches = []
        for text, rec in zip(candidates, recs):
            hit = self._blocker(rec)
            self.last_matches.append(hit)
            keep.append(hit is None)
            if hit is None:
                self._records.append(rec)
                self._texts.append(text)
                self._index_record(len(self._records) - 1)
        return keep


def novel_mask(candidates: Sequence[str], pool: Sequence[str] = (), threshold: float = 0.7) -> list[bool]:
    """Keep a candidate iff its ROUGE-L F against every pool instruction and every earlier kept
    candidate is < threshold (Self-Instruct's filter, sequential semantics)."""
    return NoveltyFilter(pool, threshold).filter(candidates)


def novel_mask_naive(candidates: Sequence[str], pool: Sequence[str] = (), threshold: float = 0.7,
                     rouge=None) -> list[bool]:
    """The reference: every pair, rouge_score's DP LCS (or `rouge(tokens_a, tokens_b)`). Quadratic;
    for tests and benchmarks."""
    rouge = rouge or _rouge_dp
    kept = [tokenize(p) for p in pool]
    out = []
    for c in candidates:
        tc = tokenize(c)
        ok = all(rouge(tc, tp) < threshold for tp in kept)
        out.append(ok)
        if ok:
            kept.append(tc)
    return out


def lcs_length_dp(a: Sequence, b: Sequence) -> int:
    """The textbook O(len(a) * len(b)) LCS table, as rouge_score's _score_lcs fills it: the
    reference the bit-parallel `lcs_length` is checked against."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def _rouge_dp(a: list[str], b: list[str]) -> float:
    """rouge_score's _score_lcs: DP table, then P, R, F."""
    if not a or not b:
        return 0.0
    return _fmeasure(lcs_length_dp(a, b), len(a), len(b))
