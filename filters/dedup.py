"""Exact and near-duplicate removal: `ExactDedup` and `MinHashDedup`.

Both are global filters (they must see the whole dataset) and both keep the *first* row in input
order of each duplicate group, so the result does not depend on hashing details.

Near-duplicates are found with MinHash + LSH banding (`filters.minhash`, where the method, its
sources and its measured accuracy are described).
"""

from __future__ import annotations

import hashlib
from typing import ClassVar

import numpy as np
import polars as pl
from pydantic import Field as Setting

from curate.records import frame_digest, message_text
from curate.states import Fetch, Resolved, States
from curate.steps import STATE, Context, Filter, reasons
from curate.text import GOLDEN64, TextPart, fmix64, hashed_words, shingles, words  # noqa: F401  words, shingles: importable from here
from filters.minhash import (  # noqa: F401  the MinHash functions stay importable from here (bench/bench_dedup_revisions.py)
    MinHashes,
    band_keys,
    candidate_edges,
    candidate_pairs,
    cluster,
    edges_from_band_keys,
    collision_probability,
    concat_minhashes,
    connected_components,
    estimate_jaccard,
    exact_jaccard,
    lsh_params,
    minhash_signatures,
    pair_similarity,
    resolve_bands,
    star_edges,
    unique_edges,
)

_U = np.uint64

def _document_keys(texts: pl.Series) -> np.ndarray:
    """64-bit key of each text's normalised word sequence (equal iff the word lists are equal,
    up to 64-bit hash collisions: ~n^2 / 2^65, i.e. 1e-10 for a million rows)."""
    out = np.empty(len(texts), _U)
    for lo, hi, h, word_offs in hashed_words(texts):
        n_words = np.diff(word_offs)
        pos = np.arange(len(h), dtype=_U) - np.repeat(word_offs[:-1], n_words).astype(_U)
        terms = h * (fmix64(pos + _U(1)) | _U(1))  # position-dependent odd multipliers
        sums = np.zeros(hi - lo, _U)
        some = n_words > 0
        if some.any():
            sums[some] = np.add.reduceat(terms, word_offs[:-1][some])  # wraps mod 2^64
        out[lo:hi] = fmix64(sums ^ (n_words.astype(_U) * GOLDEN64))
    return out


def _text_keys(texts: pl.Series) -> np.ndarray:
    """64-bit key of each raw text (blake2b of its UTF-8 bytes; equal iff the texts are, up to
    64-bit collisions)."""
    return np.fromiter((int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8).digest(), "little")
                        for t in texts.fill_null("").to_list()), _U, len(texts))


def _ids(df: pl.DataFrame, rows: np.ndarray | None = None) -> pl.Series:
    """The rows' ids; a frame without ids names its rows by number (`rows`: their numbers)."""
    if "id" in df.columns:
        return df["id"].cast(pl.String)
    rows = np.arange(len(df)) if rows is None else rows
    return pl.Series("id", [str(i) for i in rows.tolist()], dtype=pl.String)


def _fetch_ids(fetch: Fetch, rows: np.ndarray) -> pl.Series:
    """The ids of rows `rows` (sorted), read back by number."""
    got = [(frame["row"].to_numpy(), _ids(frame.drop("row"), frame["row"].to_numpy())) for frame in fetch(rows, ["id"])]
    return pl.concat([ids for _, ids in got]) if got else pl.Series("id", [], dtype=pl.String)


def _keyed(rows: np.ndarray, values: pl.Series, at: np.ndarray) -> pl.Series:
    """values[i] belongs to rows[i] (sorted): the values of rows `at`."""
    return values.gather(np.searchsorted(rows, at))


class ExactDedup(Filter):
    """Drop rows whose text equals an earlier row's; the first row of each group is kept.

    normalize=True compares word sequences after NFKC and lowercasing, with whitespace and
    punctuation as word separators (so "Hello,  World!" == "hello world"; see `words`);
    normalize=False compares the raw strings.
    Columns: `score_<name>_dup_of` (id of the kept row, null on kept rows) and
    `score_<name>_group_size` (rows sharing this text).
    """

    kind: ClassVar[str] = "exact_dedup"
    concurrent_parts: ClassVar[bool] = True
    code_version: ClassVar[int] = 1
    # Global through its state: a 64-bit key of each row's text (and a content hash for the fingerprint).
    execution: ClassVar[str] = STATE

    field: TextPart = "text"
    normalize: bool = True

    def score_columns(self) -> list[str]:
        return [f"{self.column}_dup_of", f"{self.column}_group_size"]

    def compute_scores(self, df: pl.DataFrame) -> pl.DataFrame:
        return self.resolved_scores(df, np.arange(df.height), self.resolve_frame(df))

    def state(self, batch: pl.DataFrame) -> pl.DataFrame:
        text = message_text(batch, self.field)
        key = _document_keys(text) if self.normalize else _text_keys(text)
        return pl.DataFrame({"key": pl.Series(key, dtype=pl.UInt64), "content": self.content_hashes(batch)})

    def resolve(self, state: States, ctx: Context, fetch: Fetch) -> Resolved:
        """Groups of equal keys (the engine's group-by); every row of a group of two or more gets
        its size, the later ones also the id of the group's first row (read back for those rows only)."""
        dup_col, size_col = self.score_columns()
        groups = state.groups(["key"], first_of_groups).sort("row")
        firsts = np.unique(groups["first"].to_numpy())
        of = _keyed(firsts, _fetch_ids(fetch, firsts), groups["first"].to_numpy())
        later = groups["row"] != groups["first"]
        rows = groups.select(
            "row",
            pl.when(later).then(of).otherwise(None).alias(dup_col),
            pl.col("size").cast(pl.Int64).alias(size_col),
        ).with_columns(pl.when(later).then(pl.lit("exact duplicate")).alias("reason"))  # details: `explain`
        return Resolved(rows, shared={"fingerprint": self.resolved_fingerprint(state.chunks("content"), fetch)})

    def resolved_scores(self, batch: pl.DataFrame, rows: np.ndarray, resolved: Resolved) -> pl.DataFrame:
        dup_col, size_col = self.score_columns()
        got = resolved.aligned(rows, {dup_col: pl.String, size_col: pl.Int64})
        return batch.with_columns(got[dup_col], got[size_col].fill_null(1))

    def decide(self, df: pl.DataFrame) -> tuple[pl.Series, pl.Series]:
        dup_col, _ = self.score_columns()
        return reasons(df[dup_col].is_null(), "exact duplicate")

    def explain(self, df: pl.DataFrame) -> pl.Series:
        dup_col, size_col = self.score_columns()
        return pl.select(pl.format("duplicate of {} (group of {})", df[dup_col], df[size_col])).to_series()


def first_of_groups(frame: pl.DataFrame) -> pl.DataFrame:
    """ExactDedup's group-by (`States.groups`): each row of a group of two or more equal keys,
    with its group's first row and size."""
    groups = frame.select("row", pl.col("row").min().over("key").alias("first"),
                          pl.len().over("key").cast(pl.Int64).alias("size"))
    return groups.filter(pl.col("size") > 1)


def band_edges(frame: pl.DataFrame) -> pl.DataFrame:
    """MinHashDedup's group-by over one band (`States.groups`): each row sharing the band's
    bucket with an earlier row, linked to the bucket's first row."""
    later, earlier = star_edges(frame["key"].to_numpy())
    rows = frame["row"].to_numpy()
    return pl.DataFrame({"later": rows[later], "earlier": rows[earlier]}, schema={"later": pl.Int64, "earlier": pl.Int64})


_LINK = pl.Struct({"row": pl.Int64, "sim": pl.Float32})


class MinHashDedup(Filter):
    """Drop near-duplicates: rows whose word-shingle Jaccard similarity to another row reaches
    `threshold`, found with MinHash + LSH. Of each cluster (connected component of similar
    pairs) the first row in input order is kept.

    Defaults: 128 permutations (estimate std <= 0.044, 0.035 at J=0.8); bands x rows chosen by
    `lsh_params` for recall ((16, 8) at 0.8); word 5-gram shingles: a one-word edit changes at
    most 5 shingles (a 60-word text keeps J = 51/61 = 0.84), while every word that differs
    between two fill-ins of one prompt template costs 5 shingles. On the T0 sample, 3-grams
    merge prompts that differ only in the entity filled into a template (two dbpedia titles in
    the same 40-word question), which 5-grams keep apart. For short texts judged by word overlap
    use ngram=1 (bag of words). verify=True keeps an LSH candidate pair only if its Jaccard
    (`pair_similarity`: estimated from the signatures, exact for pairs of short texts near the
    threshold) is >= threshold, so `threshold` means what it says instead of the banding's soft
    S-curve (at (16, 8), pairs at J=0.6 collide 24% of the time). On the T0 sample this lifts the
    precision of dropped rows from 0.76 to 0.97 at recall 0.98 (bench).

    Columns (`score_<name>_...`): `cluster` (id of the cluster's kept row), `cluster_size`,
    `row` (position at scoring time) and `links` (the earlier rows this row shares an LSH bucket
    with, and their Jaccard as verification saw it). keep() re-clusters from `links`, so another
    threshold needs no rescoring as long as it implies the same banding (give `bands` and `rows` to
    keep the banding fixed); a threshold that implies another banding finds other links, so split()
    rescores.
    """

    kind: ClassVar[str] = "minhash_dedup"
    concurrent_parts: ClassVar[bool] = True
    code_version: ClassVar[int] = 1
    # Global through its state: each row's LSH band keys (and a content hash for the fingerprint);
    # the texts of candidate pairs are read back once, to verify them.
    execution: ClassVar[str] = STATE
    # The threshold decides (keep() re-clusters from the stored links); it shapes the scores only
    # through the banding it implies, which scoring_settings() holds.
    decide_settings: ClassVar[tuple[str, ...]] = ("threshold", "bands", "rows", "verify")

    field: TextPart = "text"
    normalize: bool = True
    num_perm: int = Setting(128, ge=1)
    threshold: float = Setting(0.8, gt=0.0, lt=1.0)
    bands: int | None = Setting(None, ge=1)
    rows: int | None = Setting(None, ge=1)
    ngram: int = Setting(5, ge=1)
    seed: int = 1
    verify: bool = True

    def score_columns(self) -> list[str]:
        return [f"{self.column}_{c}" for c in ("cluster", "cluster_size", "row", "links")]

    def lsh(self) -> tuple[int, int]:
        """The (bands, rows) this filter uses."""
        return resolve_bands(self.threshold, self.num_perm, self.bands, self.rows)

    def scoring_settings(self) -> dict:
        return {**super().scoring_settings(), "lsh": list(self.lsh())}

    def compute_scores(self, df: pl.DataFrame) -> pl.DataFrame:
        return self.resolved_scores(df, np.arange(df.height), self.resolve_frame(df))

    def state(self, batch: pl.DataFrame) -> pl.DataFrame:
        sig = minhash_signatures(message_text(batch, self.field), self.num_perm, self.ngram, self.seed, self.normalize)
        keys = band_keys(sig, *self.lsh())
        return pl.DataFrame({**{f"band_{b}": keys[:, b] for b in range(keys.shape[1])},
                             "content": self.content_hashes(batch)})

    def resolve(self, state: States, ctx: Context, fetch: Fetch) -> Resolved:
        """Candidate pairs from the band keys (the engine's group-by, band by band); then the
        candidates' texts are read back and signed again (with what exact verification needs) to
        verify the pairs."""
        edges = state.groups([f"band_{b}" for b in range(self.lsh()[0])], band_edges)
        later, earlier = unique_edges(state.rows, edges["later"].to_numpy(), edges["earlier"].to_numpy())

        def similarity(later: np.ndarray, earlier: np.ndarray) -> np.ndarray:
            rows = np.unique(np.concatenate([later, earlier]))
            parts = [minhash_signatures(message_text(f, self.field), self.num_perm, self.ngram, self.seed,
                                        self.normalize, details=True) for f in fetch(rows, ["messages"])]
            at = lambda x: np.searchsorted(rows, x)  # noqa: E731
            return pair_similarity(concat_minhashes(parts), at(later), at(earlier), self.threshold)

        return self._resolved(later, earlier, similarity, lambda rows: _fetch_ids(fetch, rows),
                              self.resolved_fingerprint(state.chunks("content"), fetch))

    def resolve_frame(self, df: pl.DataFrame, ctx: Context | None = None) -> Resolved:
        """In memory each text is signed once, with what verification needs."""
        details = minhash_signatures(message_text(df, self.field), self.num_perm, self.ngram, self.seed,
                                     self.normalize, details=True)
        later, earlier = candidate_edges(details.signatures, *self.lsh())
        fingerprint = self._whole_mark(frame_digest(df.select(self.reads(df))))
        return self._resolved(later, earlier, lambda a, b: pair_similarity(details, a, b, self.threshold),
                              lambda rows: _ids(df).gather(rows), fingerprint)

    def _resolved(self, later: np.ndarray, earlier: np.ndarray, similarity, ids_of, fingerprint: str) -> Resolved:
        """The scores of every row in a candidate pair (links, cluster, size) and the decisions:
        of each cluster of verified pairs, the first row is kept."""
        c_cluster, c_size, _, c_links = self.score_columns()
        sim = similarity(later, earlier) if len(later) else np.zeros(0)
        edges = pl.DataFrame({"later": later, "row": earlier, "sim": pl.Series(sim, dtype=pl.Float32)})
        # as keep() re-clusters from stored links: their Float32 sims against the threshold
        verified = edges.filter(pl.col("sim") >= self.threshold) if self.verify else edges
        rows = np.unique(np.concatenate([later, earlier]))
        at = lambda x: np.searchsorted(rows, x)  # noqa: E731
        label = connected_components(len(rows), at(verified["later"].to_numpy()), at(verified["row"].to_numpy()))
        size = np.bincount(label, minlength=len(rows))[label]
        rep = rows[label]  # the cluster's first row (rows are sorted, so the smallest rank is the first row)
        reps = np.unique(rep)
        links = edges.group_by("later", maintain_order=True).agg(pl.struct("row", "sim").alias(c_links))
        out = (
            pl.DataFrame({"row": rows, c_cluster: _keyed(reps, ids_of(reps), rep), c_size: size})
            .join(links.rename({"later": "row"}), on="row", how="left", maintain_order="left")
            .with_columns(pl.col(c_links).cast(pl.List(_LINK)))
        )
        dropped = pl.Series(rep != rows)
        out = out.with_columns(pl.when(dropped).then(pl.lit("near duplicate")).alias("reason"),
                               pl.when(dropped).then(_near_duplicate_of(out[c_cluster], out[c_size])).alias("detail"))
        return Resolved(out, shared={"fingerprint": fingerprint})

    def resolved_scores(self, batch: pl.DataFrame, rows: np.ndarray, resolved: Resolved) -> pl.DataFrame:
        c_cluster, c_size, c_row, c_links = self.score_columns()
        got = resolved.aligned(rows, {c_cluster: pl.String, c_size: pl.Int64, c_links: pl.List(_LINK)})
        return batch.with_columns(
            pl.coalesce(got[c_cluster], _ids(batch, rows)).alias(c_cluster),
            got[c_size].fill_null(1),
            pl.Series(c_row, np.asarray(rows, np.int64)),
            got[c_links],
        )

    def _clusters(self, df: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(position of each row's representative, cluster size) from the stored links."""
        _, _, c_row, c_links = self.score_columns()
        keys = df[c_row].to_numpy()
        edges = (
            df.select(pl.col(c_row).alias("later"), pl.col(c_links))
            .explode(c_links)
            .drop_nulls(c_links)
            .unnest(c_links)
        )
        if self.verify:
            edges = edges.filter(pl.col("sim") >= self.threshold)
        later, earlier = edges["later"].to_numpy(), edges["row"].to_numpy()
        # Work in scoring order: rows may have been filtered or reordered since scoring, and a
        # link to a row that is gone no longer counts.
        order = np.argsort(keys, kind="stable")
        slot = np.full(int(max(keys.max(initial=-1), earlier.max(initial=-1))) + 1, -1, np.int64)
        slot[keys[order]] = np.arange(len(keys))
        a, b = slot[later], slot[earlier]
        ok = (a >= 0) & (b >= 0)
        label = connected_components(len(keys), a[ok], b[ok])
        size = np.bincount(label, minlength=len(keys))[label]
        rep = np.empty(len(keys), np.int64)
        rep[order] = order[label]
        sizes = np.empty(len(keys), np.int64)
        sizes[order] = size
        return rep, sizes

    def _kept_at_scoring(self, df: pl.DataFrame) -> pl.Series | None:
        """The rows scoring kept, read off the cluster columns it wrote: the first row of each
        cluster. None when two clusters share a label (the caller gave rows of both one id)."""
        c_cluster, c_size = self.score_columns()[:2]
        labels = df.select(pl.col(c_cluster).is_first_distinct().alias("first"),
                           (pl.len().over(c_cluster) == pl.col(c_size)).alias("whole"))
        return labels["first"] if labels["whole"].all() else None

    def decide(self, df: pl.DataFrame) -> tuple[pl.Series, pl.Series]:
        rep, _ = self._clusters(df)
        return reasons(pl.Series(rep == np.arange(len(df))), "near duplicate")

    def explain(self, df: pl.DataFrame) -> pl.Series:
        rep, size = self._clusters(df)
        return _near_duplicate_of(_ids(df).gather(rep), pl.Series(size))

    def decide_and_explain(self, df: pl.DataFrame, just_scored: bool = False) -> tuple[pl.Series, pl.Series, pl.Series]:
        """One clustering per split: right after scoring, the clusters scoring stored are this
        threshold's and are read as they are; on stored scores (another threshold, maybe) the
        links are clustered once, for both the mask and the details."""
        c_cluster, c_size = self.score_columns()[:2]
        kept = self._kept_at_scoring(df) if just_scored else None
        if kept is None:
            rep, size = self._clusters(df)
            kept, of, size = pl.Series(rep == np.arange(len(df))), _ids(df).gather(rep), pl.Series(size)
        else:
            of, size = df[c_cluster], df[c_size]
        mask, reason = reasons(kept, "near duplicate")
        return mask, reason, _near_duplicate_of(of.filter(~mask), size.filter(~mask))


def _near_duplicate_of(rep_id: pl.Series, cluster_size: pl.Series) -> pl.Series:
    """MinHashDedup's detail: the id of the row kept in the cluster and the cluster's size."""
    return pl.select(pl.format("near duplicate of {} (cluster of {})", rep_id, cluster_size)).to_series()


__all__ = [
    "ExactDedup",
    "MinHashDedup",
    "minhash_signatures",
    "MinHashes",
    "estimate_jaccard",
    "exact_jaccard",
    "pair_similarity",
    "cluster",
    "candidate_edges",
    "candidate_pairs",
    "connected_components",
    "lsh_params",
    "collision_probability",
    "band_keys",
]
