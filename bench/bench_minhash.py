"""MinHash near-duplicate detection: ours (filters.dedup) against datasketch and rensa, same process.

    python bench/bench_minhash.py [--limit N] [--threshold 0.8] [--ngram 5]

Data: the 55k T0 prompts in /work/shared/data/dedup_t0_templates (`prompt` field). Every method
is timed end to end, text in -> duplicate pairs (or clusters) out, shingling included, with the
same shingles (`curate.text.shingles` is the Python twin of our vectorised shingler), the same
num_perm and the same bands x rows. Imports and a warm-up run stay outside the timed regions.

Baselines:
- datasketch, per record: MinHash + `update` per shingle + MinHashLSH query/insert. It runs at a
  few hundred docs/s, so it is timed on a random subsample (--ds-sample docs).
- datasketch, per record with `update_batch` (its fastest per-record path), on all docs.
- rensa, per record: RMinHash.update(shingles) + RMinHashLSH query/insert, on all docs.
- rensa's bulk core fed with *our* vectorised shingle hashes (flat digest matrix + one-shot LSH
  flags): not an end-user path without our tokenizer, shown to locate where the time goes.
Python shingling is measured once and added to each Python-shingling baseline.

Quality: the true pairs (exact Jaccard of shingle sets >= threshold) over the whole corpus come from
an exact all-pairs similarity join with prefix filtering (Chaudhuri et al. 2006): sort each set's
shingles rarest first; two sets with J >= t must share one of their first |x| - ceil(t|x|) + 1.
Every candidate pair of every method is checked against exact Jaccard, giving precision and recall.
(Needs scipy, for the sparse set algebra.)
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curate import text as T  # noqa: E402
from filters import minhash as D  # noqa: E402
from filters.dedup import MinHashDedup  # noqa: E402

DATA = Path("/work/shared/data/dedup_t0_templates/t0_train_50k_per_template.jsonl.gz")


def best_of(fn, repeat):
    """(min seconds, last result) over `repeat` runs."""
    best, out = math.inf, None
    for _ in range(repeat):
        gc.collect()
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def as_set(pairs: np.ndarray) -> set[tuple[int, int]]:
    return set(map(tuple, np.sort(pairs, axis=1).tolist()))


class ShingleSets:
    """Exact shingle sets of all docs as a sparse 0/1 matrix (docs x distinct shingles).

    Built from our 64-bit shingle hashes: the tokenizer test shows they are the Python shingle
    sets (`curate.text.shingles`) element for element; distinct shingles collide with
    probability ~2^-64 per pair.
    """

    def __init__(self, hashes: np.ndarray, offsets: np.ndarray):
        from scipy import sparse

        n = len(offsets) - 1
        doc = np.repeat(np.arange(n), np.diff(offsets))
        vocab, col = np.unique(hashes, return_inverse=True)
        x = sparse.csr_matrix((np.ones(len(col), np.float32), (doc, col)), shape=(n, len(vocab)))
        x.sum_duplicates()
        x.data[:] = 1
        self.x = x
        self.sizes = np.diff(x.indptr)

    def jaccard(self, pairs: np.ndarray, chunk: int = 20_000) -> np.ndarray:
        out = np.empty(len(pairs))
        for i in range(0, len(pairs), chunk):
            a, b = pairs[i : i + chunk, 0], pairs[i : i + chunk, 1]
            inter = np.asarray(self.x[a].multiply(self.x[b]).sum(axis=1)).ravel()
            out[i : i + chunk] = inter / (self.sizes[a] + self.sizes[b] - inter)
        return out

    def prefix_candidates(self, t: float) -> np.ndarray:
        """A superset of the pairs with Jaccard >= t (prefix filtering, Chaudhuri et al. 2006):
        with each set's shingles sorted rarest first, two sets with J >= t share one of their
        first |x| - ceil(t|x|) + 1 shingles."""
        from scipy import sparse

        x = self.x
        n, v = x.shape
        freq = np.bincount(x.indices, minlength=v).astype(np.int64)
        row = np.repeat(np.arange(n, dtype=np.int64), self.sizes)
        rank = freq[x.indices] * v + x.indices  # rarest first, ties by shingle id
        order = np.argsort(row * (int(rank.max(initial=0)) + 1) + rank, kind="stable")
        pos = np.arange(len(order)) - np.repeat(x.indptr[:-1], self.sizes)
        size = self.sizes[row]
        keep = pos < size - np.ceil(size * t - 1e-9) + 1
        cols = x.indices[order][keep]
        p = sparse.csr_matrix((np.ones(len(cols), np.float32), (row[keep], cols)), shape=(n, v))
        c = sparse.triu(p @ p.T, k=1).tocoo()
        a, b = c.row.astype(np.int64), c.col.astype(np.int64)
        lo, hi = np.minimum(self.sizes[a], self.sizes[b]), np.maximum(self.sizes[a], self.sizes[b])
        ok = lo >= t * hi - 1e-9  # J <= min/max
        return np.stack([a[ok], b[ok]], axis=1)


def components_dropped(n, pairs) -> set[int]:
    p = np.asarray(sorted(pairs), np.int64).reshape(-1, 2)
    label = D.connected_components(n, p[:, 1], p[:, 0])
    return set(np.flatnonzero(label != np.arange(n)).tolist())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit", type=int, default=None, help="use the first N prompts")
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--num-perm", type=int, default=128)
    ap.add_argument("--ngram", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--ds-sample", type=int, default=2000, help="docs for the per-shingle datasketch loop")
    ap.add_argument("--repeat", type=int, default=3, help="runs of our method (best is reported)")
    args = ap.parse_args()

    import datasketch
    import rensa

    t_all = time.perf_counter()
    df = pl.read_ndjson(DATA)
    if args.limit:
        df = df.head(args.limit)
    texts = df["prompt"]
    text_list = texts.to_list()
    n = len(texts)
    t, k, ng, seed = args.threshold, args.num_perm, args.ngram, args.seed
    bands, rows = D.lsh_params(t, k)
    print(f"{n} prompts, {texts.str.len_bytes().sum() / 1e6:.1f} MB; threshold {t}, {k} perms, "
          f"LSH {bands}x{rows}, word {ng}-grams, seed {seed}")
    print(f"{os.cpu_count()} cores, load average at start {os.getloadavg()[0]:.2f} "
          "(other processes' load slows every row alike)")
    print("collision probability at J = 0.5/0.7/0.8/0.9: "
          + "/".join(f"{p:.2f}" for p in D.collision_probability([0.5, 0.7, 0.8, 0.9], bands, rows)))

    # Warm-up (imports, caches, the probe table) outside every timed region.
    D.cluster(texts.head(2000), threshold=t, num_perm=k, ngram=ng, seed=seed)
    warm = [T.shingles(x, ng) for x in text_list[:200]]
    m = datasketch.MinHash(num_perm=k, seed=seed)
    m.update_batch([s.encode() for s in warm[0]])
    rensa.RMinHash(k, seed).update(list(warm[0]))

    results = {}  # name -> dict(seconds, docs, pairs)

    # --- ours -------------------------------------------------------------------------------
    def ours_clusters():
        return D.cluster(texts, threshold=t, num_perm=k, ngram=ng, seed=seed)

    def ours_pairs():
        sig = D.minhash_signatures(texts, k, ng, seed)
        return sig, D.candidate_pairs(sig, bands, rows)

    sec_c, labels = best_of(ours_clusters, args.repeat)
    sec_p, (sig, our_pairs) = best_of(ours_pairs, args.repeat)
    one_thread = lambda: D.cluster(texts, threshold=t, num_perm=k, ngram=ng, seed=seed, n_jobs=1)  # noqa: E731
    sec_1, _ = best_of(one_thread, args.repeat)
    details = D.minhash_signatures(texts, k, ng, seed, details=True)
    sim = D.pair_similarity(details, our_pairs[:, 0], our_pairs[:, 1], t)  # what verify=True keeps
    our_verified = our_pairs[sim >= t]
    results["ours: text -> clusters (verified)"] = dict(seconds=sec_c, docs=n, pairs=None)
    results["ours: text -> clusters, 1 thread"] = dict(seconds=sec_1, docs=n, pairs=None)
    results["ours: text -> all LSH pairs"] = dict(seconds=sec_p, docs=n, pairs=as_set(our_pairs))

    from curate.records import make_frame

    frame = make_frame([{"messages": [{"role": "user", "content": x}]} for x in text_list])
    flt = MinHashDedup(threshold=t, num_perm=k, ngram=ng, seed=seed, field="prompt")
    sec_f, scored = best_of(lambda: flt.score(frame), args.repeat)
    results["ours: MinHashDedup.score (records)"] = dict(seconds=sec_f, docs=n, pairs=None)

    # --- Python shingling, shared by the baselines ------------------------------------------
    sec_sh, sets = best_of(lambda: [T.shingles(x, ng) for x in text_list], 1)
    sh_per_doc = sec_sh / n
    print(f"Python shingling (same shingles as ours): {n / sec_sh:,.0f} docs/s; added to each baseline")

    # --- datasketch, update per shingle, on a subsample ------------------------------------
    rng = np.random.default_rng(0)
    sub = np.sort(rng.choice(n, min(args.ds_sample, n), replace=False))

    def ds_loop(idx, batch):
        lsh = datasketch.MinHashLSH(threshold=t, num_perm=k, params=(bands, rows))
        pairs = set()
        for i in idx:
            mh = datasketch.MinHash(num_perm=k, seed=seed)
            if batch:
                mh.update_batch([s.encode() for s in sets[i]])
            else:
                for s in sets[i]:
                    mh.update(s.encode())
            for j in lsh.query(mh):
                pairs.add((j, int(i)))
            lsh.insert(int(i), mh)
        return pairs

    sec, _ = best_of(lambda: ds_loop(sub, batch=False), 1)
    results[f"datasketch: update per shingle ({len(sub)} docs)"] = dict(
        seconds=sec + sh_per_doc * len(sub), docs=len(sub), pairs=None
    )
    sec, ds_pairs = best_of(lambda: ds_loop(range(n), batch=True), 1)
    results["datasketch: update_batch"] = dict(seconds=sec + sec_sh, docs=n, pairs=ds_pairs)

    # --- rensa ------------------------------------------------------------------------------
    def rensa_loop():
        lsh = rensa.RMinHashLSH(t, k, bands)
        pairs = set()
        for i, s in enumerate(sets):
            mh = rensa.RMinHash(k, seed)
            mh.update(list(s))
            for j in lsh.query(mh):
                pairs.add((j, i))
            lsh.insert(i, mh)
        return pairs

    sec, rensa_pairs = best_of(rensa_loop, 1)
    results["rensa: RMinHash + RMinHashLSH"] = dict(seconds=sec + sec_sh, docs=n, pairs=rensa_pairs)

    def rensa_core_on_our_shingles():
        hashes, offsets = T.shingle_hashes(texts, ng, seed)
        mat = rensa.RMinHash.digest_matrix_from_flat_token_hashes(hashes, offsets.astype(np.uint64), k, seed)
        return rensa.RMinHashLSH(t, k, bands).query_duplicate_flags_matrix_one_shot(mat)

    sec_rc, rensa_flags = best_of(rensa_core_on_our_shingles, args.repeat)
    results["rensa bulk core on OUR shingle hashes*"] = dict(seconds=sec_rc, docs=n, pairs=None)

    # --- quality against exact Jaccard -----------------------------------------------------
    t0 = time.perf_counter()
    exact = ShingleSets(*T.shingle_hashes(texts, ng, seed))
    cand = exact.prefix_candidates(t)
    named = {
        "ours LSH pairs": as_set(our_pairs),
        "ours verified (pair_similarity)": as_set(our_verified),
        "datasketch (update_batch)": ds_pairs,
        "rensa": rensa_pairs,
    }
    union = sorted(set(map(tuple, cand.tolist())).union(*named.values()))
    jac = dict(zip(union, exact.jaccard(np.array(union, np.int64).reshape(-1, 2))))
    truth = {p for p, j in jac.items() if j >= t - 1e-9}
    print(f"exact all-pairs join: {len(truth):,} pairs with J >= {t} ({len(cand):,} prefix candidates; "
          f"{len(union):,} pairs checked, {time.perf_counter() - t0:.1f} s)")

    # --- report -----------------------------------------------------------------------------
    ours_rate = n / results["ours: text -> clusters (verified)"]["seconds"]
    print()
    print(f"{'method (text in -> dups out)':44} {'seconds':>8} {'docs/s':>10} {'ours x':>7} {'pairs':>9}")
    for name, r in results.items():
        rate = r["docs"] / r["seconds"]
        pairs = f"{len(r['pairs']):,}" if r["pairs"] is not None else ""
        print(f"{name:44} {r['seconds']:8.2f} {rate:10,.0f} {ours_rate / rate:7.1f} {pairs:>9}")
    print("  'ours x' = our text->clusters docs/s divided by that row's docs/s. * not an end-user path:")
    print(f"    it needs our tokenizer; it flags {sum(rensa_flags):,} rows with a candidate vs "
          f"{len(np.unique(our_pairs)):,} for ours.")

    print()
    print(f"{'pairs vs exact Jaccard >= ' + str(t):34} {'pairs':>9} {'precision':>9} {'recall':>7} "
          f"{'rows dropped':>12} {'rows P':>7} {'rows R':>7}")
    truth_drop = components_dropped(n, truth)
    for name, p in named.items():
        prec = np.mean([jac[x] >= t - 1e-9 for x in p]) if p else float("nan")
        rec = len(p & truth) / len(truth) if truth else float("nan")
        drop = components_dropped(n, p)
        rp = len(drop & truth_drop) / len(drop) if drop else float("nan")
        rr = len(drop & truth_drop) / len(truth_drop) if truth_drop else float("nan")
        print(f"{name:34} {len(p):9,} {prec:9.3f} {rec:7.3f} {len(drop):12,} {rp:7.3f} {rr:7.3f}")
    print(f"{'exact (truth)':34} {len(truth):9,} {1:9.3f} {1:7.3f} {len(truth_drop):12,}")
    print("  rows dropped = all but the first row of each connected component of the pairs;")
    print("  rows P/R = precision/recall of those rows against the same rule on the exact pairs.")

    print()
    a, b, c = named["ours LSH pairs"], named["datasketch (update_batch)"], named["rensa"]
    print(f"agreement of LSH pair sets (Jaccard): ours~datasketch {len(a & b) / len(a | b):.3f}, "
          f"ours~rensa {len(a & c) / len(a | c):.3f}, datasketch~rensa {len(b & c) / len(b | c):.3f}")
    kept = int(flt.keep(scored)[0].sum())
    keep_fn = labels == np.arange(n)
    print(f"filter: MinHashDedup keeps {kept:,} rows (function API keeps {int(keep_fn.sum()):,})")
    print(f"total bench time {time.perf_counter() - t_all:.0f} s")


if __name__ == "__main__":
    main()
