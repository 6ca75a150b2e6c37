"""MinHash signatures, LSH banding and clustering: the machinery behind `filters.dedup.MinHashDedup`.

Near-duplicates are found with MinHash (Broder 1997) + LSH banding (Indyk & Motwani 1998), fully
vectorised so that text -> clusters runs at numpy speed with no per-document Python loop:

1. Tokenise (`curate.text`, numpy on the Arrow string buffer): NFKC, lowercase, split on whitespace and
   punctuation; hash each word from its bytes, 8 bytes at a time.
2. Shingle: word n-grams, hashed by combining the n word hashes. A document shorter than n words
   is one shingle (the empty document included).
3. Sign with *one-permutation hashing* (Li, Owen & Zhang 2012) + optimal densification
   (Shrivastava 2017): each shingle hash falls in one of `num_perm` bins and each bin keeps its
   minimum; empty bins borrow from other bins. Pr[sig_A[i] == sig_B[i]] = J(A, B), as with
   `num_perm` independent permutations, but it costs O(shingles + num_perm) per document instead
   of O(shingles * num_perm). Measured on 2 cores: textbook k-permutation hashing in numpy costs
   ~1.4 s per million shingles at 128 permutations (~13 s for the 9M shingles of the 55k-prompt
   T0 sample); binning plus densification costs ~0.05 s per million.
4. LSH: `bands` bands of `rows` values each. Two documents with Jaccard s share at least one band
   with probability 1 - (1 - s^rows)^bands.
5. Candidates are linked to the first document of their bucket, optionally verified
   (`pair_similarity`), and clustered by connected components.

Short texts. A text with fewer shingles than `num_perm` leaves most bins empty, and the
densified signature's plain estimate is noisy there (RMSE 0.04-0.05 against exact Jaccard on the
LSH candidates of GPTeacher prompts and of T0 prompts cut to 10-40 words; 0.025 above 128). So
`minhash_signatures(..., details=True)` also keeps which bins were filled and, for texts with at
most `num_perm` shingles, the few shingles that lost their bin to a smaller one: signature plus
those is the whole shingle set. Verification uses the estimate over the filled bins (Li, Owen &
Zhang 2012) and, for pairs of such texts near the threshold, the exact Jaccard computed from
them (`exact_jaccard`). Measured on GPTeacher prompts and texts and on T0 prompts cut to 10-40
words at thresholds 0.7 and 0.8: pair precision 0.999-1.000 against the exact all-pairs join
(0.50-0.90 before), recall 0.96-0.98 (datasketch's LSH: 0.46-0.84), bench/bench_dedup_accuracy.py.

The signatures are not interchangeable with datasketch's (different hash functions); the
parameters (`num_perm`, `threshold`, `bands` x `rows`, `seed`) mean the same thing. Memory:
~0.5 KB of signature per text (plus 16 bytes of filled bins, and 12 bytes per hidden shingle
of a short text, while scoring)
and ~40 bytes per byte of the text batch being hashed.
"""

from __future__ import annotations

import functools
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, NamedTuple, Sequence

import numpy as np
import polars as pl

from curate.text import GOLDEN64, arrow_strings, batches, fmix64, ngram_hashes, tokenize

_U = np.uint64
_EMPTY = np.uint32(0xFFFFFFFF)  # marks an empty OPH bin (a real minimum equal to it is a 2^-32 event)
_LOW_HALF = 0 if sys.byteorder == "little" else 1  # which uint32 of a uint64 holds its low bits
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], np.uint8)  # set bits of each byte value


# ------------------------------------------------------------------------------------------------
# Signatures


@functools.lru_cache(maxsize=8)
def _probe_table(num_perm: int, seed: int) -> np.ndarray:
    """probes[t, j] = the t-th bin probed for empty bin j: j itself, then the other bins in a
    seeded random order (the densification probe order)."""
    rng = np.random.default_rng([seed, num_perm, 0xD5])
    table = np.empty((num_perm, num_perm), np.int64)
    for j in range(num_perm):
        others = np.delete(np.arange(num_perm), j)
        table[j, 0] = j
        table[j, 1:] = rng.permutation(others)
    probes = np.ascontiguousarray(table.T)
    probes.setflags(write=False)
    return probes


def _densify(sig: np.ndarray, seed: int) -> None:
    """Fill empty bins in place (optimal densification, Shrivastava 2017).

    An empty bin j copies the value of the first non-empty bin in probe order j, P[j,1], P[j,2], ...
    The order depends only on (j, seed), so for two sets the first bin non-empty for their union
    decides: both copy the same value iff that bin's minimum lies in the intersection, which keeps
    Pr[sig_A[j] == sig_B[j]] = J(A, B). Expected probes per empty bin: k / (non-empty bins + 1).
    """
    n, k = sig.shape
    flat = sig.reshape(-1)
    empty = flat == _EMPTY
    todo = np.flatnonzero(empty)  # flat cell indices still empty
    if not len(todo):
        return
    probes = _probe_table(k, seed)
    mask = k - 1 if (k & (k - 1)) == 0 else 0  # k a power of two: col = todo & (k-1)
    for step in range(1, k):
        col = todo & mask if mask else todo % k
        src = todo - col
        src += probes[step][col]
        miss = empty[src]
        hit = np.flatnonzero(~miss)
        flat[todo[hit]] = flat[src[hit]]
        if len(hit) == len(todo):
            return
        todo = todo[miss]


class MinHashes(NamedTuple):
    """Signatures plus what exact verification of short texts needs (`minhash_signatures` with
    details=True; see `pair_similarity`).

    A text with at most num_perm shingles ("small") leaves most bins holding one shingle each;
    the signature keeps each bin's minimum, and `hidden_*` lists the shingles that lost their
    bin to a smaller one (about shingles^2 / (2 num_perm) of them), so signature + hidden list
    is the text's whole shingle set (32-bit values within their bins).
    """

    signatures: np.ndarray  # (n, num_perm) uint32, densified
    filled: np.ndarray  # (n, ceil(num_perm / 8)) uint8, np.packbits of "a shingle fell in this bin"
    small: np.ndarray  # (n,) bool: the text has at most num_perm shingles, its hidden list is kept
    hidden_offsets: np.ndarray  # (n + 1,) int64: text i's hidden shingles are hidden_*[o[i]:o[i+1]]
    hidden_bins: np.ndarray  # int64 bin of each distinct hidden shingle (sorted by bin, value)
    hidden_values: np.ndarray  # uint32 value of each hidden shingle


def _sign_batch(data, offs, num_perm, ngram, seed, normalize):
    """Signatures of one batch: one-permutation hashing (Li, Owen & Zhang 2012), then densify.
    Also returns the filled bins (packed), the small texts and their hidden shingles (MinHashes)."""
    h, word_offs = tokenize(data, offs, normalize)
    sh, doc = ngram_hashes(h, word_offs, ngram, seed)
    n = len(offs) - 1
    sig = np.full((n, num_perm), _EMPTY, np.uint32)
    # Bin from the top 32 bits (Lemire's multiply-shift range reduction), value = the low 32 bits.
    bins = (((sh >> _U(32)) * _U(num_perm)) >> _U(32)).view(np.int64)
    bins += doc * num_perm
    values = sh.view(np.uint32)[_LOW_HALF::2]
    flat = sig.reshape(-1)
    np.minimum.at(flat, bins, values)
    filled = np.packbits(sig != _EMPTY, axis=1)
    n_long = np.maximum(np.diff(word_offs) - ngram + 1, 0)  # texts of >= ngram words come first, in order
    small = n_long <= num_perm
    start = np.cumsum(n_long) - n_long
    reps = np.where(small & (n_long > 1), n_long, 0)  # a text of one shingle hides none
    mine = np.repeat(start - np.cumsum(reps) + reps, reps) + np.arange(reps.sum())
    lost = mine[flat[bins[mine]] != values[mine]]
    # One entry per distinct hidden shingle, sorted by text, bin and value.
    cell, value = bins[lost], values[lost]
    if n * num_perm < 1 << 31:  # (text * num_perm + bin) << 32 | value fits: one plain sort
        key = _unique(cell << 32 | value)
        cell, value = key >> 32, (key & 0xFFFFFFFF).astype(np.uint32)
    else:
        order = np.lexsort((value, cell))
        cell, value = cell[order], value[order]
        new = np.r_[True, (cell[1:] != cell[:-1]) | (value[1:] != value[:-1])]
        cell, value = cell[new], value[new]
    hidden_doc = cell // num_perm
    hidden = (np.bincount(hidden_doc, minlength=n), cell - hidden_doc * num_perm, value)
    _densify(sig, seed)
    return sig, filled, small, hidden


def _n_jobs(n_jobs: int | None) -> int:
    return max(1, n_jobs or os.cpu_count() or 1)


def minhash_signatures(
    texts: Sequence[str] | pl.Series,
    num_perm: int = 128,
    ngram: int = 5,
    seed: int = 1,
    normalize: bool = True,
    n_jobs: int | None = None,
    details: bool = False,
) -> np.ndarray | MinHashes:
    """MinHash signatures, shape (len(texts), num_perm), dtype uint32.

    The fraction of equal positions between two rows estimates the Jaccard similarity of the two
    texts' word-`ngram` shingle sets (see `estimate_jaccard`). Batches run on `n_jobs` threads
    (numpy releases the GIL); the result does not depend on n_jobs. details=True returns
    `MinHashes`: the signatures plus the filled bins and the hidden shingles of small texts,
    which `pair_similarity` needs.
    """
    if num_perm < 1 or ngram < 1:
        raise ValueError("num_perm and ngram must be >= 1")
    data, offs = arrow_strings(texts)
    n = len(offs) - 1
    sig = np.empty((n, num_perm), np.uint32)
    filled = np.empty((n, (num_perm + 7) // 8), np.uint8)
    small = np.empty(n, bool)
    hidden: dict[int, tuple] = {}

    def run(span):
        lo, hi = span
        batch = data[offs[lo] : offs[hi]]
        sig[lo:hi], filled[lo:hi], small[lo:hi], hidden[lo] = _sign_batch(
            batch, offs[lo : hi + 1] - offs[lo], num_perm, ngram, seed, normalize
        )

    spans = batches(offs)
    jobs = min(_n_jobs(n_jobs), len(spans))
    if jobs > 1:
        with ThreadPoolExecutor(jobs) as pool:
            list(pool.map(run, spans))
    else:
        for span in spans:
            run(span)
    if not details:
        return sig
    parts = [hidden[lo] for lo, _ in spans]
    hidden_offsets = np.zeros(n + 1, np.int64)
    if parts:
        np.cumsum(np.concatenate([p[0] for p in parts]), out=hidden_offsets[1:])
    hidden_bins = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
    hidden_values = np.concatenate([p[2] for p in parts]) if parts else np.zeros(0, np.uint32)
    return MinHashes(sig, filled, small, hidden_offsets, hidden_bins, hidden_values)


def estimate_jaccard(signatures: np.ndarray, a, b, filled: np.ndarray | None = None) -> np.ndarray:
    """Estimated Jaccard of row pairs (a[i], b[i]).

    Without `filled`: the fraction of equal signature positions. Each position matches with
    probability J (Broder 1997), so the estimate has standard deviation sqrt(J(1-J)/num_perm);
    but for texts with fewer shingles than bins most positions are copies made by densification,
    and there the error is larger (bench/bench_dedup_accuracy.py). With `filled`
    (`MinHashes.filled`, from `minhash_signatures(..., details=True)`): equal minima among the
    bins that either text filled, N_match / (num_perm - N_both_empty), the one-permutation
    estimator of Li, Owen & Zhang (2012). For texts with fewer shingles than bins its only error
    is shingles sharing a bin, so it is less noisy than the plain fraction; for texts that fill
    every bin the two are equal.
    """
    matches, bins = _bin_matches(signatures, a, b, filled)
    return (matches / np.maximum(bins, 1)).astype(np.float32)


def _bin_matches(signatures: np.ndarray, a, b, filled: np.ndarray | None = None, chunk: int = 1 << 15):
    """(equal positions, positions compared) of row pairs: all positions, or with `filled` the
    bins either text filled (equal minima counted where both filled them)."""
    a = np.asarray(a, np.int64).reshape(-1)
    b = np.asarray(b, np.int64).reshape(-1)
    k = signatures.shape[1]
    matches = np.empty(len(a), np.int64)
    bins = np.full(len(a), k, np.int64)
    for i in range(0, len(a), chunk):
        ia, ib = a[i : i + chunk], b[i : i + chunk]
        eq = signatures[ia] == signatures[ib]
        if filled is None:
            matches[i : i + chunk] = eq.sum(axis=1)
            continue
        fa, fb = filled[ia], filled[ib]
        eq &= np.unpackbits(fa & fb, axis=1, count=k).view(bool)
        matches[i : i + chunk] = eq.sum(axis=1)
        bins[i : i + chunk] = _POPCOUNT[fa | fb].sum(axis=1, dtype=np.int64)
    return matches, bins


def _hidden(m: MinHashes, docs: np.ndarray):
    """The hidden shingles of texts `docs`: (index into docs, bin, value) of each."""
    start = m.hidden_offsets[docs]
    reps = m.hidden_offsets[docs + 1] - start
    idx = np.repeat(start - np.cumsum(reps) + reps, reps) + np.arange(reps.sum())
    return np.repeat(np.arange(len(docs)), reps), m.hidden_bins[idx], m.hidden_values[idx]


def exact_jaccard(m: MinHashes, a, b, matches: np.ndarray | None = None) -> np.ndarray:
    """Exact Jaccard of the shingle sets of pairs of small texts (both m.small), from their
    signatures and hidden shingles; no text is read again. `matches`: the pairs' equal filled
    bins, if already counted (`_bin_matches`).

    Each filled bin holds one shingle that is not hidden; so |A| = filled bins + hidden
    shingles, and a shared shingle is either the minimum of its bin in both texts (equal
    signature values), hidden in one text and the minimum in the other, or hidden in both.
    Shingles are compared by their 32-bit value within their bin: two different shingles pass
    for one with probability 2^-32 per pair of shingles in one bin.
    """
    a = np.asarray(a, np.int64).reshape(-1)
    b = np.asarray(b, np.int64).reshape(-1)
    sig = m.signatures
    k = sig.shape[1]
    inter = _bin_matches(sig, a, b, m.filled)[0] if matches is None else np.array(matches, np.int64)
    hidden = np.diff(m.hidden_offsets)
    size_a = _POPCOUNT[m.filled[a]].sum(axis=1, dtype=np.int64) + hidden[a]
    size_b = _POPCOUNT[m.filled[b]].sum(axis=1, dtype=np.int64) + hidden[b]
    pa, bin_a, val_a = _hidden(m, a)
    pb, bin_b, val_b = _hidden(m, b)
    flat = sig.reshape(-1)
    # Hidden in one text, the bin's minimum in the other.
    inter += np.bincount(pa[flat[b[pa] * k + bin_a] == val_a], minlength=len(a))
    inter += np.bincount(pb[flat[a[pb] * k + bin_b] == val_b], minlength=len(a))
    # Hidden in both. Each side's (pair, bin, value) keys are sorted (hidden lists are sorted by
    # bin and value within a text), so one binary search per key finds the common ones.
    key_a = (pa * k + bin_a) << 32 | val_a
    key_b = (pb * k + bin_b) << 32 | val_b
    if len(key_a) and len(key_b):
        pos = np.minimum(np.searchsorted(key_b, key_a), len(key_b) - 1)
        inter += np.bincount(pa[key_b[pos] == key_a], minlength=len(a))
    return inter / (size_a + size_b - inter)


def pair_similarity(m: MinHashes, a, b, threshold: float, margin: float = 0.1) -> np.ndarray:
    """Jaccard of candidate pairs as verification needs it: the filled-bin estimate
    (`estimate_jaccard` with `filled`), replaced by the exact Jaccard (`exact_jaccard`) for
    pairs of small texts whose estimate is within `margin` of threshold.

    For small texts the estimate's error comes only from shingles sharing a bin (RMSE ~0.03 on
    GPTeacher prompts, rarely above 0.1), but pairs of templated prompts crowd the threshold, so
    even small errors flip many: on GPTeacher prompts at 0.8 the estimate alone gives pair
    precision 0.66, with the exact Jaccard near the threshold 1.000 (bench/bench_dedup_accuracy.py).
    Texts with more shingles than bins keep the estimate (std sqrt(J(1-J)/num_perm)): an exact
    answer would cost memory and time in proportion to their length.
    """
    a = np.asarray(a, np.int64).reshape(-1)
    b = np.asarray(b, np.int64).reshape(-1)
    matches, bins = _bin_matches(m.signatures, a, b, m.filled)
    sim = matches / np.maximum(bins, 1)
    near = np.flatnonzero((np.abs(sim - threshold) < margin) & m.small[a] & m.small[b])
    step = max(1, (1 << 31) // m.signatures.shape[1])  # (pair * num_perm + bin) stays below 2^31
    for i in range(0, len(near), step):
        chunk = near[i : i + step]
        sim[chunk] = exact_jaccard(m, a[chunk], b[chunk], matches[chunk])
    return sim


# ------------------------------------------------------------------------------------------------
# LSH banding and clustering


@functools.lru_cache(maxsize=64)
def lsh_params(threshold: float, num_perm: int, fn_weight: float = 0.95) -> tuple[int, int]:
    """(bands, rows) with bands*rows <= num_perm minimising (1-w)*FP + w*FN, where
    FP = integral_0^t P(s) ds, FN = integral_t^1 (1 - P(s)) ds and P(s) = 1 - (1 - s^rows)^bands.

    datasketch weighs both 0.5, which at t=0.8 / 128 permutations gives (9, 13): pairs at true
    Jaccard 0.84 then collide only 63% of the time. A missed duplicate is lost for good while a
    false candidate costs one signature comparison (and is dropped by verification), so the
    default favours recall: w=0.95 gives (16, 8), which catches 95% of pairs at 0.8 and 99% at 0.84.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), not {threshold}")
    s_lo = np.linspace(0.0, threshold, 400)
    s_hi = np.linspace(threshold, 1.0, 400)
    best, best_cost = (1, 1), np.inf
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            fp = np.trapezoid(1 - (1 - s_lo**rows) ** bands, s_lo)
            fn = np.trapezoid((1 - s_hi**rows) ** bands, s_hi)
            cost = (1 - fn_weight) * fp + fn_weight * fn
            if cost < best_cost:
                best, best_cost = (bands, rows), cost
    return best


def collision_probability(s, bands: int, rows: int):
    """Pr[two sets with Jaccard s share at least one LSH band] = 1 - (1 - s^rows)^bands."""
    return 1 - (1 - np.asarray(s, float) ** rows) ** bands


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit key per (document, band): a hash of the band's `rows` signature values."""
    n, k = signatures.shape
    if bands * rows > k:
        raise ValueError(f"bands*rows = {bands * rows} exceeds num_perm = {k}")
    sig = signatures[:, : bands * rows]
    if rows % 2 == 0 and sig.dtype == np.uint32:
        # two 32-bit values per word (a copy only when bands*rows < num_perm); the same words for
        # any number of rows, so keys made batch by batch meet
        block = np.ascontiguousarray(sig).view(_U).reshape(n, bands, rows // 2)
    else:
        block = sig.reshape(n, bands, rows).astype(_U)
    mult = fmix64(np.arange(1, block.shape[2] + 1, dtype=_U) * GOLDEN64) | _U(1)
    keys = block[:, :, 0] * mult[0]
    for i in range(1, block.shape[2]):  # explicit adds: numpy's sum over a short axis is slow
        keys += block[:, :, i] * mult[i]  # wraps mod 2^64
    keys ^= np.arange(bands, dtype=_U) * GOLDEN64  # keys of different bands never meet
    return fmix64(keys)


def _unique(codes: np.ndarray) -> np.ndarray:
    """Sorted distinct values (a plain sort: faster here than np.unique's hash table)."""
    codes = np.sort(codes)
    return codes[np.r_[True, codes[1:] != codes[:-1]]] if len(codes) else codes


def _bucket(band_key: np.ndarray):
    """One band's buckets: (docs sorted by key, flags marking each bucket's first slot, the
    smallest doc of the slot's bucket)."""
    order = np.argsort(band_key)
    ks = band_key[order]
    first = np.empty(len(ks), bool)
    first[:1] = True
    first[1:] = ks[1:] != ks[:-1]
    starts = np.flatnonzero(first)
    head = np.minimum.reduceat(order, starts)[np.cumsum(first) - 1] if len(order) else order
    return order, first, head


def _band_buckets(signatures: np.ndarray, bands: int, rows: int):
    """`_bucket` of each band. One band at a time: the extra memory is O(n), not O(n * bands)."""
    keys = band_keys(np.ascontiguousarray(signatures), bands, rows).T.copy()
    for band_key in keys:
        yield _bucket(band_key)


def candidate_edges(signatures: np.ndarray, bands: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """LSH candidates as star edges: each document to the first document of every bucket it is in.

    Returns unique (later, earlier) index pairs. A bucket is a clique of candidates, so linking
    each member to the bucket's first member gives the same connected components with O(n*bands)
    edges, however large a bucket grows (a thousand copies of one prompt stay a thousand edges).
    """
    keys = band_keys(np.ascontiguousarray(signatures), bands, rows)
    return edges_from_band_keys(len(signatures), (keys[:, b] for b in range(bands)))


def edges_from_band_keys(n: int, bands: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """`candidate_edges` from the band keys of n documents, given one band at a time (a global
    step's state holds the keys, not the signatures: 8 bytes a band instead of 4 a permutation)."""
    found = [star_edges(band_key) for band_key in bands]
    return unique_edges(n, np.concatenate([np.zeros(0, np.int64), *(a for a, _ in found)]),
                        np.concatenate([np.zeros(0, np.int64), *(b for _, b in found)]))


def star_edges(band_key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One band's candidate edges: (later, earlier) positions, each document to the first
    document of its bucket (documents alone in their bucket have none)."""
    docs, _, head = _bucket(np.ascontiguousarray(band_key))
    member = docs != head
    return docs[member], head[member]


def unique_edges(n: int, later: np.ndarray, earlier: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Edges among n documents without repeats, sorted by (later, earlier) (the bands of a pair
    of near duplicates give it several times)."""
    pair = _unique(np.asarray(later, np.int64) * n + np.asarray(earlier, np.int64))
    return pair // max(n, 1), pair % max(n, 1)


def candidate_pairs(signatures: np.ndarray, bands: int, rows: int, max_pairs: int = 50_000_000) -> np.ndarray:
    """All pairs (i < j) sharing at least one band, shape (m, 2): what MinHashLSH.query reports.

    For analysis and benchmarks; clustering needs only `candidate_edges`. Quadratic in bucket size.
    """
    n = len(signatures)
    out, total = [np.zeros(0, np.int64)], 0
    for docs, first, _ in _band_buckets(signatures, bands, rows):
        starts = np.flatnonzero(first)
        sizes = np.diff(np.append(starts, len(docs)))
        starts, sizes = starts[sizes > 1], sizes[sizes > 1]
        total += int((sizes * (sizes - 1) // 2).sum())
        if total > max_pairs:
            raise ValueError("too many candidate pairs; use candidate_edges")
        for offset in range(1, int(sizes.max(initial=1))):  # slot i with slot i+offset, same bucket
            sel = sizes > offset
            s, reps = starts[sel], sizes[sel] - offset
            i = np.repeat(s, reps) + (np.arange(reps.sum()) - np.repeat(np.cumsum(reps) - reps, reps))
            a, b = docs[i], docs[i + offset]
            out.append(np.minimum(a, b) * n + np.maximum(a, b))
    pair = _unique(np.concatenate(out))
    return np.stack([pair // n, pair % n], axis=1)


def connected_components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Label of each of n nodes = the smallest node index in its component (edges a[i]-b[i]).

    Vectorised union-find: hook every root to the smallest root it is linked to, then shortcut
    pointers to roots (pointer jumping); each round at least halves the number of roots touching
    an unresolved edge. Pointers only ever decrease, so the root of a component is its minimum.
    """
    parent = np.arange(n, dtype=np.int64)
    a = np.asarray(a, np.int64)
    b = np.asarray(b, np.int64)
    while len(a):
        pa, pb = parent[a], parent[b]
        diff = pa != pb
        if not diff.any():
            break
        a, b, pa, pb = a[diff], b[diff], pa[diff], pb[diff]
        np.minimum.at(parent, np.maximum(pa, pb), np.minimum(pa, pb))
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
    return parent


def cluster(
    texts: Sequence[str] | pl.Series | None = None,
    *,
    signatures: np.ndarray | None = None,
    threshold: float = 0.8,
    num_perm: int = 128,
    bands: int | None = None,
    rows: int | None = None,
    ngram: int = 5,
    seed: int = 1,
    normalize: bool = True,
    verify: bool = True,
    n_jobs: int | None = None,
) -> np.ndarray:
    """Near-duplicate clusters: for each text, the index of the first text of its cluster.

    Rows where label == index are the ones to keep. verify=True keeps a candidate pair when its
    `pair_similarity` reaches threshold. Pass `signatures` to skip hashing (verification then
    uses the plain signature estimate, noisier on short texts: see `estimate_jaccard`).
    """
    details = None
    if signatures is None:
        if texts is None:
            raise ValueError("pass texts or signatures")
        details = minhash_signatures(texts, num_perm, ngram, seed, normalize, n_jobs, details=True)
        signatures = details.signatures
    bands, rows = resolve_bands(threshold, signatures.shape[1], bands, rows)
    later, earlier = candidate_edges(signatures, bands, rows)
    if verify:
        if details is None:
            sim = estimate_jaccard(signatures, later, earlier)
        else:
            sim = pair_similarity(details, later, earlier, threshold)
        later, earlier = later[sim >= threshold], earlier[sim >= threshold]
    return connected_components(len(signatures), later, earlier)


def resolve_bands(threshold: float, num_perm: int, bands: int | None, rows: int | None) -> tuple[int, int]:
    """LSH bands x rows: the given ones (one may be derived from the other), else `lsh_params`."""
    if bands is None and rows is None:
        return lsh_params(threshold, num_perm)
    if bands is None:
        bands = num_perm // rows
    if rows is None:
        rows = num_perm // bands
    if bands < 1 or rows < 1 or bands * rows > num_perm:
        raise ValueError(f"need bands*rows <= num_perm ({num_perm}); got {bands}x{rows}")
    return bands, rows


def concat_minhashes(parts: list[MinHashes]) -> MinHashes:
    """One MinHashes of texts signed in several batches, in order."""
    if len(parts) == 1:
        return parts[0]
    ends = np.cumsum([p.hidden_offsets[-1] for p in parts])
    offsets = [np.zeros(1, np.int64)] + [p.hidden_offsets[1:] + (ends[i] - p.hidden_offsets[-1]) for i, p in enumerate(parts)]
    return MinHashes(np.concatenate([p.signatures for p in parts]), np.concatenate([p.filled for p in parts]),
                     np.concatenate([p.small for p in parts]), np.concatenate(offsets),
                     np.concatenate([p.hidden_bins for p in parts]), np.concatenate([p.hidden_values for p in parts]))
