"""NUGGETS golden score: our route against scoring every (candidate, anchor) pair from scratch.

    python bench/bench_nuggets.py [--candidates 6 --anchors 20 --rank 12 --threads 1]

Data: ../shared/data/nuggets_alpaca_gpt4 (NUGGETS' own 100 k-means anchors and the 9,038 Alpaca-GPT4
examples its LLaMA-7B scorer gave GS <= 0.5; CC BY-NC, read here, never copied). Anchors: the first
`--anchors` rows of the anchor file (shuffled with --seed). Candidates: "bad" rows, and as "non-bad"
the held-out anchors that are not in the bad file (drawn from the same pool, GS > 0.5 under the
original). Same model (the embedded SmolLM2-135M), same token ids, same process, interleaved per
candidate so that the machine's load hits both routes alike.

Part 1, speed: naive = `LlamaCppScorer.score_ids(candidate + Q_k, A_k)` per pair (logits at every
position), zero-shot once per anchor; ours = `filters.nuggets.golden_scores` exact, and with early
stopping at --threshold. Prints per-candidate GS from each route, the max |difference| of the summed
log-probs, and the time ratios.
Part 2, ranking: our exact GS for --rank bad and --rank non-bad candidates (including part 1's):
distributions, AUC of GS for non-bad vs bad, Spearman of GS with the original score on the bad rows,
and the same numbers for output length as a baseline (bad rows are much shorter).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curate.llm.scoring_llama import LlamaCppScorer
from filters.nuggets import (
    golden_scores,
    golden_scores_naive,
    prepare_anchors,
    prepare_candidates,
    zero_shot,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "nuggets_alpaca_gpt4"


def parts(row: dict) -> tuple[str, str, str]:
    return row["instruction"], row.get("input") or "", row["output"]


def ranks(x: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (for Spearman)."""
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(len(x))
    for v in np.unique(x):
        tie = x == v
        r[tie] = r[tie].mean()
    return r


def spearman(a, b) -> float:
    a, b = ranks(np.asarray(a, float)), ranks(np.asarray(b, float))
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def auc(pos, neg) -> float:
    """P(a positive scores above a negative), ties count half (Mann-Whitney)."""
    pos, neg = np.asarray(pos, float)[:, None], np.asarray(neg, float)[None, :]
    return float(((pos > neg) + 0.5 * (pos == neg)).mean())


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--candidates", type=int, default=6, help="part 1: candidates, half bad, half non-bad")
    ap.add_argument("--anchors", type=int, default=20)
    ap.add_argument("--rank", type=int, default=12, help="part 2: candidates per group (0: skip)")
    ap.add_argument("--threshold", type=float, default=0.5, help="early-stopping threshold")
    ap.add_argument("--threads", type=int, default=None, help="llama.cpp threads for both routes")
    ap.add_argument("--parallel", type=int, default=1, help="anchors per decode in our route")
    ap.add_argument("--separator", default="\n\n")
    ap.add_argument("--max-anchor-tokens", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", type=Path, default=DATA)
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    anchor_rows = json.loads((args.data / "alpaca_gpt4_kmeans_100_anchor.json").read_text())
    bad_rows = [json.loads(line) for line in (args.data / "alpaca_gpt4_bad_scored.jsonl").open()]
    key = lambda r: (r["instruction"], r.get("input") or "", r["output"])
    bad_keys = {key(r) for r in bad_rows}
    anchor_rows = [anchor_rows[i] for i in rng.permutation(len(anchor_rows))]
    anchors_used, held_out = anchor_rows[: args.anchors], anchor_rows[args.anchors :]
    used_keys = {key(r) for r in anchors_used}
    nonbad = [r for r in held_out if key(r) not in bad_keys]
    bad = [bad_rows[i] for i in rng.permutation(len(bad_rows)) if key(bad_rows[i]) not in used_keys]

    scorer = LlamaCppScorer()
    if args.threads:
        scorer.set_threads(args.threads)
    threads = scorer.llm.context_params.n_threads
    anchors = prepare_anchors(scorer, [parts(r) for r in anchors_used], args.max_anchor_tokens)
    n_q = sum(len(q) for q, _ in anchors)
    n_a = sum(len(a) for _, a in anchors)
    print(f"model: embedded SmolLM2-135M (Q4_1 GGUF), llama.cpp, {threads} thread(s); "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"anchors: {len(anchors)} from the NUGGETS k-means set, mean {n_q / len(anchors):.0f} query + "
          f"{n_a / len(anchors):.0f} response tokens (cut at {args.max_anchor_tokens})")

    # ---------------------------------------------------------------------------------- part 1
    zero_fast = zero_shot(scorer, anchors)
    if args.candidates > 0:
        results = speed(args, scorer, anchors, bad, nonbad, zero_fast, n_q + n_a)
    else:
        results = []
    if args.rank > 0:
        ranking(args, scorer, anchors, bad, nonbad, zero_fast, results)


def speed(args, scorer, anchors, bad, nonbad, zero_fast, anchor_tokens):
    """Part 1: naive vs ours on the same candidates, interleaved; returns [(group, row, exact result)]."""
    n_bad = args.candidates // 2
    speed_rows = [("bad", r) for r in bad[:n_bad]] + [("non-bad", r) for r in nonbad[: args.candidates - n_bad]]
    prefixes = prepare_candidates(scorer, [parts(r) for _, r in speed_rows], args.separator)

    zero_naive, zw_n, zc_n = timed(lambda: np.array([scorer.score_ids(q, a).sum() for q, a in anchors]))
    _, zw_f, zc_f = timed(lambda: zero_shot(scorer, anchors))
    tot = {"naive": [zw_n, zc_n], "exact": [zw_f, zc_f], "early": [zw_f, zc_f]}
    results = {"naive": [], "exact": [], "early": []}
    runs = {
        "naive": lambda p: golden_scores_naive(scorer, [p], anchors, zero=zero_naive),
        "exact": lambda p: golden_scores(scorer, [p], anchors, zero=zero_fast, parallel=args.parallel),
        "early": lambda p: golden_scores(scorer, [p], anchors, zero=zero_fast, parallel=args.parallel,
                                         stop_at=args.threshold),
    }
    print(f"\npart 1: {len(prefixes)} candidates x {len(anchors)} anchors, interleaved "
          f"(times: wall s / cpu s)")
    print(f"{'group':8} {'tok':>4} {'GS naive':>8} {'GS ours':>8} {'max|dlogp|':>10} {'early: GS in':>15} "
          f"{'used':>5} {'naive':>11} {'ours':>11} {'early':>11}")
    tokens_naive = tokens_exact = tokens_early = 0
    for i, ((group, _), p) in enumerate(zip(speed_rows, prefixes)):
        order = ["naive", "exact", "early"] if i % 2 == 0 else ["early", "exact", "naive"]
        times = {}
        for name in order:
            res, w, c = timed(lambda run=runs[name], p=p: run(p))
            results[name].append(res)
            times[name] = (w, c)
            tot[name][0] += w
            tot[name][1] += c
        n, e, s = results["naive"][-1], results["exact"][-1], results["early"][-1]
        diff = float(np.abs(n.one_shot - e.one_shot).max())
        tokens_naive += sum(len(p) + len(q) + len(a) for q, a in anchors)
        tokens_exact += len(p) + sum(len(q) + len(a) for q, a in anchors)
        tokens_early += len(p) + sum(len(q) + len(a) for (q, a), v in zip(anchors, s.one_shot[0]) if not np.isnan(v))
        print(f"{group:8} {len(p):4d} {n.score[0]:8.3f} {e.score[0]:8.3f} {diff:10.2e} "
              f"{f'[{s.low[0]:.2f}, {s.high[0]:.2f}]':>15} {int(s.evaluated[0]):5d} "
              + " ".join(f"{times[k][0]:5.1f}/{times[k][1]:5.1f}" for k in ("naive", "exact", "early")))
    zero_diff = float(np.abs(zero_naive - zero_fast).max())
    same_gs = all(np.array_equal(a.wins, b.wins) for a, b in zip(results["naive"], results["exact"]))
    max_diff = max(float(np.abs(a.one_shot - b.one_shot).max()) for a, b in zip(results["naive"], results["exact"]))
    decisions = [(a.score[0] > args.threshold) == (b.low[0] > args.threshold)
                 for a, b in zip(results["naive"], results["early"])]
    print(f"\nidentical GS (naive vs ours, exact): {same_gs}; max |d summed logp| one-shot {max_diff:.2e}, "
          f"zero-shot {zero_diff:.2e}")
    print(f"early stopping at GS > {args.threshold}: same keep/drop as naive for {sum(decisions)}/{len(decisions)}; "
          f"anchors scored {sum(int(r.evaluated[0]) for r in results['early'])}/{len(anchors) * len(prefixes)}")
    (nw, nc), (ew, ec), (sw, sc) = tot["naive"], tot["exact"], tot["early"]
    print(f"time (incl. zero-shot): naive {nw:.1f} s wall / {nc:.1f} s cpu; ours exact {ew:.1f} / {ec:.1f}; "
          f"ours early-stop {sw:.1f} / {sc:.1f}")
    print(f"speed ratio naive/ours: exact {nw / ew:.2f}x wall, {nc / ec:.2f}x cpu; "
          f"early stop {nw / sw:.2f}x wall, {nc / sc:.2f}x cpu")
    print(f"tokens decoded: naive {tokens_naive} ({tokens_naive / nw:.0f}/s), ours {tokens_exact} "
          f"({tokens_exact / ew:.0f}/s), early stop {tokens_early}; token ratio naive/ours "
          f"{tokens_naive / tokens_exact:.2f}x (the exact route's ceiling without logits savings)")
    per_anchor = anchor_tokens / len(anchors)
    for group in ("bad", "non-bad"):
        idx = [i for i, (g, _) in enumerate(speed_rows) if g == group]
        if idx:
            c = np.mean([len(prefixes[i]) for i in idx])
            ceiling = (c + per_anchor) / (per_anchor + c / len(anchors))
            print(f"  {group}: mean candidate {c:.0f} tokens -> token-count ceiling {ceiling:.2f}x")
    return [(g, r, res) for (g, r), res in zip(speed_rows, results["exact"])]


def ranking(args, scorer, anchors, bad, nonbad, zero_fast, scored):
    """Part 2: how the original's "bad" rows rank under our exact GS, against held-out non-bad rows."""
    groups = {"bad": bad[: args.rank], "non-bad": nonbad[: args.rank]}
    known = {id(r): res.score[0] for _, r, res in scored}
    gs = {}
    t0 = time.perf_counter()
    for g, rows in groups.items():
        todo = [r for r in rows if id(r) not in known]
        res = golden_scores(scorer, prepare_candidates(scorer, [parts(r) for r in todo], args.separator),
                            anchors, zero=zero_fast, parallel=args.parallel)
        new = dict(zip(map(id, todo), res.score))
        gs[g] = np.array([known.get(id(r), new.get(id(r))) for r in rows])
    print(f"\npart 2: ranking ({time.perf_counter() - t0:.0f} s), our exact GS over {len(anchors)} anchors")
    length = {g: np.array([len(scorer.tokenize(r["output"])) for r in rows]) for g, rows in groups.items()}
    for g in groups:
        hist = np.histogram(gs[g], bins=np.linspace(0, 1, 6))[0]
        print(f"  {g:8} n={len(gs[g]):3d}  GS mean {gs[g].mean():.3f} median {np.median(gs[g]):.3f}  "
              f"share > {args.threshold}: {np.mean(gs[g] > args.threshold):.2f}  "
              f"hist[0-.2,.2-.4,.4-.6,.6-.8,.8-1]={hist.tolist()}  output tokens median {np.median(length[g]):.0f}")
    print(f"  AUC non-bad vs bad: GS {auc(gs['non-bad'], gs['bad']):.3f}; output length alone "
          f"{auc(length['non-bad'], length['bad']):.3f}")
    orig = np.array([r["score"] for r in groups["bad"]])
    print(f"  bad rows, Spearman with the original (LLaMA-7B, K=100) score: our GS {spearman(gs['bad'], orig):+.3f}; "
          f"output length {spearman(length['bad'], orig):+.3f}")
    short = length["non-bad"] <= np.percentile(length["bad"], 90)
    if short.sum() >= 3:
        print(f"  non-bad rows no longer than the bad rows' 90th percentile ({short.sum()}): "
              f"AUC vs bad {auc(gs['non-bad'][short], gs['bad']):.3f}")


if __name__ == "__main__":
    main()
