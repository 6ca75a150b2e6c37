"""MinHash near-dedup accuracy on short texts: ours against datasketch and the exact all-pairs join.

    python bench/bench_dedup_accuracy.py [--thresholds 0.7 0.8] [--limit N] [--sets gpteacher_prompt ...]

Data sets (texts as `MinHashDedup` sees them, word 5-grams, 128 permutations):
- gpteacher_prompt / gpteacher_text: the `prompt` (instruction + input) and `text` (prompt +
  response) fields of ../shared/data/dedup_gpteacher_toolformer (7,673 rows);
- t0_10_40: the 55k T0 prompts of ../shared/data/dedup_t0_templates, each cut to its first k
  words, k uniform in 10..40 (seed 0): at most 36 shingles each.

For each set and threshold t, pairs are scored against the exact all-pairs join (pairs with exact
shingle-set Jaccard >= t; prefix filtering, bench_minhash.ShingleSets):
- datasketch 2.0: MinHash(128) + MinHashLSH(threshold=t) with its own banding, the pairs its
  query reports (what a datasketch user gets);
- ours, before: LSH candidates at our banding, kept when the densified signature estimate is
  >= t (what `verify=True` did before this change);
- ours: the pairs `cluster` links, scored as it scores them (`dedup.pair_similarity`: the
  one-permutation estimate over the bins either text fills, and exact Jaccard for pairs of texts
  with fewer shingles than bins whose estimate lies near t).
It also prints the RMSE of each estimate against exact Jaccard by shingle count. Speed:
bench/bench_dedup_revisions.py (this tree against a revision, one process).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_minhash import ShingleSets  # noqa: E402
from curate import text as T  # noqa: E402
from curate.records import make_frame, message_text  # noqa: E402
from filters import minhash as D  # noqa: E402

GPTEACHER = Path("/work/shared/data/dedup_gpteacher_toolformer/toolformer_labeled.jsonl")
T0 = Path("/work/shared/data/dedup_t0_templates/t0_train_50k_per_template.jsonl.gz")


def gpteacher(part: str) -> pl.Series:
    rows = [json.loads(line) for line in GPTEACHER.open()]
    df = make_frame([
        {"messages": [{"role": "user", "content": r["instruction"] + ("\n" + r["input"] if r["input"] else "")},
                      {"role": "assistant", "content": r["response"]}]}
        for r in rows
    ])
    return message_text(df, part)


def t0_truncated(lo: int = 10, hi: int = 40, seed: int = 0) -> pl.Series:
    texts = pl.read_ndjson(T0)["prompt"].to_list()
    ks = np.random.default_rng(seed).integers(lo, hi + 1, len(texts))
    return pl.Series("text", [" ".join(t.split()[:k]) for t, k in zip(texts, ks)])


SETS = {"gpteacher_prompt": lambda: gpteacher("prompt"), "gpteacher_text": lambda: gpteacher("text"),
        "t0_10_40": t0_truncated}


def datasketch_pairs(texts: list[str], t: float, num_perm: int, seed: int) -> set[tuple[int, int]]:
    import datasketch

    lsh = datasketch.MinHashLSH(threshold=t, num_perm=num_perm)
    pairs = set()
    for i, x in enumerate(texts):
        m = datasketch.MinHash(num_perm=num_perm, seed=seed)
        m.update_batch([s.encode() for s in T.shingles(x, 5)])
        for j in lsh.query(m):
            pairs.add((j, i))
        lsh.insert(i, m)
    return pairs


def as_set(a, b) -> set[tuple[int, int]]:
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    return set(zip(lo.tolist(), hi.tolist()))


def score(found: set, truth: set, jac: dict, t: float) -> tuple[float, float, int]:
    prec = np.mean([jac[p] >= t - 1e-9 for p in found]) if found else float("nan")
    rec = len(found & truth) / len(truth) if truth else float("nan")
    return rec, prec, len(found)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    ap.add_argument("--thresholds", nargs="+", type=float, default=[0.7, 0.8])
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    k, seed = 128, args.seed
    print(f"{os.cpu_count()} cores, load average at start {os.getloadavg()[0]:.2f}")

    for name in args.sets:
        texts = SETS[name]()
        if args.limit:
            texts = texts.head(args.limit)
        text_list = texts.to_list()
        n = len(texts)
        exact = ShingleSets(*T.shingle_hashes(texts, 5, seed))
        sizes = exact.sizes
        print(f"\n== {name}: {n:,} texts; distinct shingles per text: median {int(np.median(sizes))}, "
              f"{(sizes < k).mean():.0%} under {k}")
        details = D.minhash_signatures(texts, k, 5, seed, details=True)
        sig = details.signatures
        rows = []
        for t in args.thresholds:
            bands, rows_ = D.lsh_params(t, k)
            cand = D.candidate_pairs(sig, bands, rows_)
            a, b = cand[:, 0], cand[:, 1]
            before = D.estimate_jaccard(sig, a, b)
            est = D.estimate_jaccard(sig, a, b, details.filled)
            now = D.pair_similarity(details, a, b, t)
            ds = datasketch_pairs(text_list, t, k, seed)
            named = {
                "datasketch (its LSH pairs)": ds,
                "ours before (densified estimate)": as_set(a[before >= t], b[before >= t]),
                "ours (pair_similarity)": as_set(a[now >= t], b[now >= t]),
            }
            prefix = exact.prefix_candidates(t)
            union = sorted(set(map(tuple, prefix.tolist())).union(*named.values()))
            jac = dict(zip(union, exact.jaccard(np.array(union, np.int64).reshape(-1, 2))))
            truth = {p for p, j in jac.items() if j >= t - 1e-9}
            for method, found in named.items():
                rows.append((t, method, *score(found, truth, jac, t), len(truth)))
            if t == args.thresholds[0]:  # estimate error against exact Jaccard, on the LSH candidates
                ex = exact.jaccard(cand)
                small = np.minimum(sizes[a], sizes[b])
                print(f"RMSE against exact Jaccard on {len(cand):,} LSH candidate pairs (t={t}), by the smaller set's "
                      "shingles: densified estimate (before), filled-bin estimate, pair_similarity (now)")
                for lo, hi in ((0, 16), (16, 32), (32, 64), (64, 128), (128, 10**9)):
                    sel = (small >= lo) & (small < hi)
                    if sel.sum():
                        r0, r1, r2 = (np.sqrt(np.mean((x[sel] - ex[sel]) ** 2)) for x in (before, est, now))
                        print(f"  {lo:>4}-{min(hi, 9999):<5} {sel.sum():>9,} pairs: before {r0:.4f}, filled {r1:.4f}, now {r2:.4f}")
        print(f"{'t':>4} {'method':34} {'recall':>7} {'precision':>9} {'pairs':>9} {'true pairs':>10}")
        for t, method, rec, prec, m, nt in rows:
            print(f"{t:4.2f} {method:34} {rec:7.3f} {prec:9.3f} {m:9,} {nt:10,}")


if __name__ == "__main__":
    main()
