"""Text primitives shared by the filters: normalise, tokenise, shingle, hash, embed by hashing.

One home for how the project turns text into words and n-gram hashes, so that near-duplicate
detection (`filters.dedup`), decontamination (`filters.decontaminate`), diversity selection
(`filters.diversity`) and NUGGETS' anchor choice (`filters.nuggets`) see the same words.

Everything works on a batch of documents at once, on the UTF-8 bytes of an Arrow string column,
with numpy and no per-document Python loop (the MinHash bench, bench/bench_minhash.py, is what
this speed is for):

- `arrow_strings` gives the bytes and offsets of a column; `batches` cuts them into ~1 MB spans
  (memory is ~40 bytes per text byte while a batch is hashed); `hashed_words` does both and
  tokenises each batch.
- `tokenize`: NFKC, lowercase, split at whitespace and punctuation; each word hashed from its
  bytes, 8 bytes at a time (`hash_spans`). `words` is its one-text Python twin, for tests and for
  feeding other libraries the same words.
- Scripts written without spaces (Chinese, Japanese, Thai, Lao, Myanmar, Khmer) have no words to
  split at, so each of their characters is a token and a "word n-gram" there is a character
  n-gram: near-duplicate detection compares character 5-grams of Chinese as it compares word
  5-grams of English (two Chinese prompts two characters apart keep a Jaccard of ~0.85 instead
  of sharing no shingle), decontamination's 13-gram is 13 characters (~8 Chinese words: shorter
  than 13 English words, longer than the 8 GPT-3 used for short sets; a 13-character run rarely
  repeats by chance outside set phrases), and diversity's unigram + bigram TF-IDF becomes the
  character unigrams + bigrams usual for Chinese retrieval. Thai has no one-character words, so
  a Thai character n-gram spans fewer words than a Chinese one (5 characters ~ 1-2 Thai words);
  measured on bench/bench_multilingual.py. Korean is written with spaces and keeps its words.
- `ngram_hashes`: word n-gram hashes of a tokenised batch; `shingle_hashes` the same from texts;
  `shingles` the Python twin (n-grams as strings).
- `hashing_embeddings`: hashed TF-IDF vectors of word unigrams and bigrams (feature hashing).
- `fmix64` / `seed_mix` / `GOLDEN64`: the 64-bit mixing used by every hash above.
- `python_chars` / `char_class`: the characters Python's `str.isspace`, `isalnum`, ... accept, for
  polars expressions that must split, strip and classify text exactly as a Python rule does.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterator
from typing import Literal, Sequence

import numpy as np
import polars as pl

TextPart = Literal["text", "prompt", "response"]  # which text of a record (curate.records.message_text)

GOLDEN64 = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / golden ratio: an odd constant with well-spread bits
BATCH_BYTES = 1 << 20  # text bytes per batch: bounds memory (~40 bytes per text byte)

_U = np.uint64
_HIGH_BITS = _U(0x8080808080808080)
_BYTE_MASKS = np.array([(1 << (8 * i)) - 1 for i in range(9)], dtype=_U)  # the low i bytes


# ------------------------------------------------------------------------------------------------
# Hashing


def fmix64(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser: a bijection whose every output bit depends on every input bit."""
    x = x ^ (x >> _U(33))
    x *= _U(0xFF51AFD7ED558CCD)
    x ^= x >> _U(33)
    x *= _U(0xC4CEB9FE1A85EC53)
    x ^= x >> _U(33)
    return x


def seed_mix(seed: int, salt: int) -> np.uint64:
    """A 64-bit constant derived from (seed, salt)."""
    return fmix64(np.array([(seed * 0x100000001B3 + salt) & 0xFFFFFFFFFFFFFFFF], dtype=_U))[0]


def hash_spans(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hash the byte spans buf[s:s+len]; also flag spans holding a non-ASCII byte.

    Reads 8 bytes at a time through an unaligned uint64 view (buf must have 8 spare bytes at the
    end), so a typical word costs one load. Returns (hashes uint64, has_non_ascii bool).
    """
    n_bytes = len(buf) - 8
    view = np.ndarray(shape=(max(n_bytes, 0),), dtype="<u8", buffer=buf, offset=0, strides=(1,))
    lens = lengths.view(_U)  # non-negative int64, same bits
    first = view[starts]
    first &= _BYTE_MASKS[np.minimum(lengths, 8)]  # keep only the span's bytes
    non_ascii = (first & _HIGH_BITS) != 0
    state = first
    idx = np.flatnonzero(lengths > 8)
    k = 1
    while len(idx):  # longer spans: fold in one more 8-byte chunk per round (rarely more than 2)
        chunk = view[starts[idx] + 8 * k] & _BYTE_MASKS[np.minimum(lengths[idx] - 8 * k, 8)]
        non_ascii[idx] |= (chunk & _HIGH_BITS) != 0
        state[idx] = fmix64(state[idx]) ^ chunk
        k += 1
        idx = idx[lengths[idx] > 8 * k]
    return fmix64(state ^ (lens * GOLDEN64)), non_ascii


def hash_words(words: Sequence[str]) -> np.ndarray:
    """The hash `tokenize` gives each of these words (one text's words, e.g. from `words`)."""
    enc = [w.encode() for w in words]
    if not enc:
        return np.zeros(0, _U)
    buf = np.frombuffer(b"".join(enc) + b"\0" * 8, np.uint8)
    lens = np.fromiter((len(w) for w in enc), np.int64, len(enc))
    return hash_spans(buf, np.cumsum(lens) - lens, lens)[0]


# ------------------------------------------------------------------------------------------------
# Normalisation and tokenisation


class _UnicodeSeparators(dict):
    """str.translate table: separators (ASCII other than [a-z0-9_], Unicode whitespace and
    punctuation, i.e. categories Z* and P*) become a space, every other character maps to itself."""

    def __missing__(self, cp: int):
        ch = chr(cp)
        if cp < 128:
            sep = not (ch.isalnum() or ch == "_")
        else:
            sep = ch.isspace() or unicodedata.category(ch)[0] in "PZ"
        self[cp] = value = " " if sep else cp
        return value


_SEPARATORS = _UnicodeSeparators()


# Scripts written without spaces between words: Han, kana, Bopomofo (CJK) and Thai, Lao, Myanmar,
# Khmer. Each of their characters is one token, so a word n-gram is a character n-gram there.
_NO_SPACE = (
    "\u0E00-\u0EFF\u1000-\u109F\u1780-\u17FF"  # Thai, Lao, Myanmar, Khmer
    "\u2E80-\u2FDF\u3005-\u3007\u3021-\u3029\u3031-\u3035\u3038-\u303C"  # radicals, 々〆〇, kana marks
    "\u3040-\u30FF\u3100-\u312F\u31A0-\u31BF\u31F0-\u31FF"  # kana, Bopomofo
    "\u3400-\u4DBF\u4E00-\u9FFF\uF900-\uFAFF\U0001B000-\U0001B16F\U00020000-\U0003FFFF"  # Han
)
# Combining marks (vowel signs, tone marks, variation selectors) stay with the character before them.
_MARKS = "".join(
    chr(cp)
    for lo, hi in [(0x0300, 0x036F), (0x0E00, 0x0EFF), (0x1000, 0x109F), (0x1780, 0x17FF), (0x1AB0, 0x1AFF),
                   (0x1DC0, 0x1DFF), (0x20D0, 0x20FF), (0x3099, 0x309A), (0xFE00, 0xFE0F), (0xFE20, 0xFE2F),
                   (0xE0100, 0xE01EF)]
    for cp in range(lo, hi + 1)
    if unicodedata.category(chr(cp))[0] == "M"
)
_HAS_NO_SPACE = re.compile(f"[{_NO_SPACE}]")
_SEGMENTS = re.compile(f"[{_NO_SPACE}][{_MARKS}]*|[^{_NO_SPACE}]+")


@functools.lru_cache(maxsize=1 << 16)
def _normalize_run(run: str) -> tuple[str, ...]:
    """Words of one ASCII-delimited run holding non-ASCII characters: NFKC, lowercase, split at
    whitespace and punctuation, and each character of a script without spaces on its own."""
    text = unicodedata.normalize("NFKC", run).lower().translate(_SEPARATORS)
    if _HAS_NO_SPACE.search(text) is None:
        return tuple(text.split())
    return tuple(t for w in text.split() for t in _SEGMENTS.findall(w))


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_ASCII_RUNS = re.compile(r"[A-Za-z0-9_\x80-\U0010FFFF]+")  # split at ASCII non-word characters


def words(text: str, normalize: bool = True) -> list[str]:
    """The words of one text, exactly as the vectorised tokeniser sees them (reference, for tests
    and for feeding other MinHash libraries the same shingles).

    normalize=True: split at ASCII characters other than [A-Za-z0-9_], lowercase; a run holding
    non-ASCII characters is NFKC-normalised, lowercased and split again at Unicode whitespace and
    punctuation, and every character of a script written without spaces (Chinese, Japanese kana,
    Thai, Lao, Myanmar, Khmer; with its combining marks) is a word of its own, while Latin words
    and numbers inside such text stay whole ("用Python写" -> 用, python, 写). normalize=False:
    split at ASCII whitespace only, nothing else changes.
    """
    if not normalize:
        for ch in "\t\n\r\x0b\x0c":
            text = text.replace(ch, " ")
        return [w for w in text.split(" ") if w]
    out: list[str] = []
    for run in _ASCII_RUNS.findall(text.translate(_ASCII_LOWER)):
        if run.isascii():
            out.append(run)
        else:
            out.extend(_normalize_run(run))
    return out


def shingles(text: str, ngram: int = 5, normalize: bool = True) -> set[str]:
    """The shingle set of one text, as the vectorised path sees it (words joined by a space)."""
    w = words(text, normalize)
    if len(w) < ngram:
        return {" ".join(w)}
    return {" ".join(w[i : i + ngram]) for i in range(len(w) - ngram + 1)}


def tokenize(data: np.ndarray, offs: np.ndarray, normalize: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Word hashes of a batch of documents (the words of `words`, hashed as by `hash_words`).

    data: the documents' UTF-8 bytes back to back; offs: int64 document offsets into data
    (len n+1, offs[0] == 0). Returns (word hashes uint64, word offsets int64 of len n+1).
    """
    n_bytes = int(offs[-1])
    x = data[:n_bytes]
    buf = np.zeros(n_bytes + 8, np.uint8)  # 8 spare bytes for the unaligned 8-byte reads
    if normalize:
        upper = (x - np.uint8(65)) < 26  # ASCII A-Z
        np.bitwise_or(x, upper.view(np.uint8) << 5, out=buf[:n_bytes])
        low = buf[:n_bytes]
        is_word = ((low - np.uint8(97)) < 26) | ((x - np.uint8(48)) < 10) | (x == 95) | (x >= 128)
    else:
        buf[:n_bytes] = x
        is_word = ~((x == 32) | ((x - np.uint8(9)) < 5))  # not ASCII whitespace
    # Word boundaries = class changes; they alternate start, end, start, ...
    edges = np.flatnonzero(is_word[1:] != is_word[:-1]) + 1
    head = [0] if n_bytes and is_word[0] else []
    tail = [n_bytes] if n_bytes and is_word[-1] else []
    if head or tail:
        edges = np.concatenate([head, edges, tail]).astype(np.int64)
    inner = np.unique(offs[1:-1])  # empty documents repeat an offset
    inner = inner[(inner > 0) & (inner < n_bytes)]
    glued = inner[is_word[inner - 1] & is_word[inner]]  # a word must not run into the next document
    if len(glued):
        edges = np.insert(edges, np.repeat(np.searchsorted(edges, glued), 2), np.repeat(glued, 2))
    starts = edges[0::2]
    lengths = edges[1::2] - starts
    word_offs = np.searchsorted(starts, offs)
    hashes, non_ascii = hash_spans(buf, starts, lengths)
    if normalize:
        idx = np.flatnonzero(non_ascii)
        if len(idx):
            hashes, word_offs = _fix_non_ascii(buf, starts, lengths, hashes, word_offs, idx)
    return hashes, word_offs


def _fix_non_ascii(buf, starts, lengths, hashes, word_offs, idx):
    """Re-tokenise the words holding non-ASCII bytes with Python's Unicode tables (NFKC, lowercase,
    Unicode punctuation); each distinct such word is handled once, in Python, and the words it
    became are put in place by numpy (a word NFKC splits, "don’t", or empties, "—", included: a
    Python loop over those took ~1.3 s of held GIL at 1M rows)."""
    _, first, inverse = np.unique(hashes[idx], return_index=True, return_inverse=True)
    raw = buf.tobytes()  # slicing bytes is ~2x faster than making bytes of numpy slices
    pieces = [
        _normalize_run(raw[s : s + n].decode("utf-8", "replace"))
        for s, n in zip(starts[idx[first]].tolist(), lengths[idx[first]].tolist())
    ]
    counts = np.fromiter((len(p) for p in pieces), np.int64, len(pieces))
    new_hashes = hash_words([w for p in pieces for w in p])
    u_start = np.cumsum(counts) - counts
    hashes = hashes.copy()
    one = counts[inverse] == 1  # the usual case: one word in, one word out
    hashes[idx[one]] = new_hashes[u_start[inverse[one]]]
    if one.all():
        return hashes, word_offs
    # Each word's count of words out (1 but for the odd ones), where its words start in the output.
    out_count = np.ones(len(hashes), np.int64)
    out_count[idx] = counts[inverse]
    out_end = np.cumsum(out_count)
    out = np.empty(int(out_end[-1]), hashes.dtype)
    keep = out_count == 1
    out[(out_end - 1)[keep]] = hashes[keep]
    odd = np.flatnonzero(~one)
    sizes = counts[inverse[odd]]
    within = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    at = np.repeat(out_end[idx[odd]] - sizes, sizes) + within
    out[at] = new_hashes[np.repeat(u_start[inverse[odd]], sizes) + within]
    return out, np.concatenate([[0], out_end])[word_offs]


# ------------------------------------------------------------------------------------------------
# Python's character predicates, for polars expressions


# Unassigned planes hold no letter, digit or space: the scan skips them (a test checks the whole range).
_SCANNED = (range(0, 0x32400), range(0xE0000, 0xE1000))
_PREDICATES = ("isspace", "isalnum", "isalpha", "isupper", "islower", "istitle", "isdigit", "isdecimal")


@functools.cache
def python_chars(predicate: str) -> str:
    """Every character for which Python's one-character `str.<predicate>()` is true, e.g.
    python_chars("isspace") for `str.strip_chars`.

    polars' regex engine (Rust) and Python disagree at the edges: Python's whitespace includes
    the ASCII separators U+001C-U+001F, its `\\w` is `isalnum` plus "_" (no combining marks), the
    two follow different Unicode versions. A vectorised rule that must give what a Python one
    gives uses these sets instead of `\\s`, `\\w`, `\\d` or `\\p{...}`."""
    if predicate not in _PREDICATES:
        raise ValueError(f"predicate must be one of {_PREDICATES}, not {predicate!r}")
    test = getattr(str, predicate)
    return "".join(chr(c) for r in _SCANNED for c in r if test(chr(c)))


@functools.cache
def char_class(predicate: str) -> str:
    """`python_chars(predicate)` as the inside of a regex character class for polars ("[" + ... + "]"),
    written as ranges of code points. "isword" is Python's `\\w` (isalnum and "_")."""
    chars = python_chars("isalnum") + "_" if predicate == "isword" else python_chars(predicate)
    points = np.unique(np.frombuffer(chars.encode("utf-32-le"), np.uint32))
    breaks = np.flatnonzero(np.diff(points) != 1) + 1
    firsts, lasts = points[np.r_[0, breaks]], points[np.r_[breaks - 1, len(points) - 1]]
    return "".join(f"\\x{{{a:X}}}" + (f"-\\x{{{b:X}}}" if b > a else "") for a, b in zip(firsts.tolist(), lasts.tolist()))


# ------------------------------------------------------------------------------------------------
# Batches of Arrow strings


def text_series(texts) -> pl.Series:
    """A polars Series of a polars Series, an Arrow array or any sequence of strings."""
    import pyarrow as pa

    if isinstance(texts, pl.Series):
        return texts
    if isinstance(texts, (pa.Array, pa.ChunkedArray)):
        return pl.Series("text", texts)
    return pl.Series("text", list(texts), dtype=pl.String)


def arrow_strings(texts) -> tuple[np.ndarray, np.ndarray]:
    """(bytes, int64 offsets starting at 0) of a sequence of strings; nulls count as ''."""
    import pyarrow as pa

    arr = text_series(texts).cast(pl.String).fill_null("").rechunk().to_arrow()
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if arr.type != pa.large_string():
        arr = arr.cast(pa.large_string())
    offs = np.frombuffer(arr.buffers()[1], np.int64)[arr.offset : arr.offset + len(arr) + 1]
    data_buf = arr.buffers()[2]
    data = np.frombuffer(data_buf, np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    return data, offs


def batches(offs: np.ndarray, max_bytes: int | None = None) -> list[tuple[int, int]]:
    """Split documents into [lo, hi) ranges of about max_bytes (default BATCH_BYTES) of text, at
    least one document each."""
    max_bytes = max_bytes or BATCH_BYTES
    n = len(offs) - 1
    out, lo = [], 0
    while lo < n:
        hi = int(np.searchsorted(offs, offs[lo] + max_bytes, side="right")) - 1
        hi = min(max(hi, lo + 1), n)
        out.append((lo, hi))
        lo = hi
    return out


def hashed_words(texts, normalize: bool = True) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """Tokenise texts batch by batch: yields (lo, hi, word hashes, word offsets) for texts[lo:hi]
    (offsets relative to the batch: text lo + i has words[offsets[i]:offsets[i+1]])."""
    data, offs = arrow_strings(texts)
    for lo, hi in batches(offs):
        h, word_offs = tokenize(data[offs[lo] : offs[hi]], offs[lo : hi + 1] - offs[lo], normalize)
        yield lo, hi, h, word_offs


# ------------------------------------------------------------------------------------------------
# Shingles


def ngram_hashes(h: np.ndarray, word_offs: np.ndarray, ngram: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of the word n-grams of a tokenised batch and the document index of each.

    A shingle hashes to fmix(sum_t h[p+t] * K_t  xor  len * c  xor  seed) with fixed odd K_t:
    order-sensitive, and a document with fewer than `ngram` words (even zero) is one shingle.
    """
    n_docs = len(word_offs) - 1
    n_words = np.diff(word_offs)
    mult = fmix64(np.arange(1, ngram + 1, dtype=_U) * GOLDEN64) | _U(1)
    salt = seed_mix(seed, 1)
    tag = _U((ngram * int(GOLDEN64)) & 0xFFFFFFFFFFFFFFFF)
    W = len(h)
    m = max(W - ngram + 1, 0)
    acc = h[:m] * mult[0]
    for t in range(1, ngram):
        acc += h[t : t + m] * mult[t]
    valid = np.ones(m, bool)  # drop windows that cross the end of a document
    for t in range(1, ngram):
        last = word_offs[1:] - t
        last = last[(last >= word_offs[:-1]) & (last < m)]
        valid[last] = False
    long_docs = n_words >= ngram
    long_sh = fmix64(acc[valid] ^ tag ^ salt)
    long_doc = np.repeat(np.arange(n_docs), np.where(long_docs, n_words - ngram + 1, 0))
    short = np.flatnonzero(~long_docs)
    if not len(short):
        return long_sh, long_doc
    sacc = np.zeros(len(short), _U)
    for t in range(ngram - 1):
        sel = n_words[short] > t
        sacc[sel] += h[word_offs[short[sel]] + t] * mult[t]
    short_sh = fmix64(sacc ^ (n_words[short].astype(_U) * GOLDEN64) ^ salt)
    return np.concatenate([long_sh, short_sh]), np.concatenate([long_doc, short])


def shingle_hashes(
    texts: Sequence[str] | pl.Series, ngram: int = 5, seed: int = 1, normalize: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """The shingle hashes of every text, flat, and int64 offsets (len n+1): text i's shingles are
    hashes[offsets[i]:offsets[i+1]] (a shingle repeated in a text is listed each time).

    The vectorised tokeniser and shingler on their own, for feeding other MinHash libraries
    (e.g. rensa's `digest_matrix_from_flat_token_hashes`) the same shingles as `shingles()`.
    """
    parts, counts, n = [], [], 0
    for lo, hi, h, word_offs in hashed_words(texts, normalize):
        sh, doc = ngram_hashes(h, word_offs, ngram, seed)
        order = np.argsort(doc, kind="stable")
        parts.append(sh[order])
        counts.append(np.bincount(doc, minlength=hi - lo))
        n = hi
    hashes = np.concatenate(parts) if parts else np.zeros(0, _U)
    offsets = np.zeros(n + 1, np.int64)
    if counts:
        np.cumsum(np.concatenate(counts), out=offsets[1:])
    return hashes, offsets


# ------------------------------------------------------------------------------------------------
# Embedding by hashing


def hashing_embeddings(texts: pl.Series | Sequence[str], dim: int = 1024, seed: int = 7) -> np.ndarray:
    """Hashed TF-IDF vectors of word unigrams + bigrams, L2-normalised, shape (n, dim) float32.

    tf is sublinear (1 + log count), idf = log((1 + n) / (1 + df)) + 1 over the given texts, and
    each feature adds +-tfidf to one of `dim` buckets (sign from another hash bit: feature hashing,
    Weinberger et al. 2009), so inner products are unbiased estimates of the exact sparse TF-IDF
    cosine (error ~ 1/sqrt(dim)). Texts with no words get a zero vector (cosine 0 with everything).
    """
    s = text_series(texts)
    n = len(s)
    feats, docs = [], []
    for lo, _, h, word_offs in hashed_words(s):
        n_words = np.diff(word_offs)
        for g in (1, 2):
            sh, doc = ngram_hashes(h, word_offs, g, seed)
            ok = n_words[doc] >= g  # a text shorter than g words has no g-gram (not a whole-text shingle)
            feats.append(sh[ok])
            docs.append(doc[ok] + lo)
    if not feats:
        return np.zeros((n, dim), np.float32)
    tf = (
        pl.DataFrame({"doc": np.concatenate(docs), "f": np.concatenate(feats)})
        .group_by("doc", "f")
        .len()
    )
    df_count = tf.group_by("f").len().rename({"len": "df"})
    tf = tf.join(df_count, on="f")
    f = tf["f"].to_numpy()
    weight = (1.0 + np.log(tf["len"].to_numpy())) * (np.log((1.0 + n) / (1.0 + tf["df"].to_numpy())) + 1.0)
    mixed = fmix64(f ^ _U(0x2545F4914F6CDD1D))
    bucket = (mixed % _U(dim)).astype(np.int64)
    sign = np.where((mixed >> _U(63)) == 1, -1.0, 1.0)
    doc = tf["doc"].to_numpy().astype(np.int64)
    order = np.argsort(doc, kind="stable")
    doc, bucket, value = doc[order], bucket[order], (weight * sign)[order]
    out = np.zeros((n, dim), np.float32)
    step = max(1, (1 << 22) // dim)  # rows per chunk: bounds the float64 scratch to ~32 MB
    for lo in range(0, n, step):
        a, b = np.searchsorted(doc, [lo, lo + step])
        flat = (doc[a:b] - lo) * dim + bucket[a:b]
        hi = min(lo + step, n)
        out[lo:hi] = np.bincount(flat, weights=value[a:b], minlength=(hi - lo) * dim).reshape(hi - lo, dim)
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, norm, out=out, where=norm > 0)
    return out


__all__ = [
    "TextPart",
    "GOLDEN64",
    "BATCH_BYTES",
    "fmix64",
    "seed_mix",
    "hash_spans",
    "hash_words",
    "words",
    "shingles",
    "tokenize",
    "text_series",
    "arrow_strings",
    "batches",
    "hashed_words",
    "ngram_hashes",
    "shingle_hashes",
    "hashing_embeddings",
    "python_chars",
    "char_class",
]
