"""Self-Instruct novelty filter (ROUGE-L < 0.7 against the pool): ours vs the naive pairwise loop.

    python bench/bench_rouge.py [--n 10000] [--prefix 1000] [--threshold 0.7] [--seed 0] [--repeat 3]

Data (real instructions, tests/benchmarks only - several sets are CC BY-NC): the pool starts with the
175 Self-Instruct seed tasks; the N candidates are real instructions (AlpacaEval 805, Self-Instruct
user-oriented 252, Vicuna 80, MT-Bench 80, WizardLM test 218, GPTeacher code seeds 21, Cherry
Alpaca 3,111, Alpaca-GPT4 9,038), exact duplicates removed, with ~15% of them replaced by lightly
perturbed copies of other instructions (a word dropped, inserted or swapped; deterministic with
--seed) so that near-duplicates exist, as in a real generation loop. Shuffled with the seed.

Baselines, same process, same candidates:
- naive: every (candidate, pool item) pair, pre-tokenized, DP LCS, rouge_score's P/R/F formula
  (`synth.rouge.novel_mask_naive`; what Stanford Alpaca's generate_instruction.py does, minus its
  process pool). Timed on the first --prefix candidates; the full-N time is extrapolated from its
  pairs/s and the exact number of pairs the naive loop would score on N (known from the decisions,
  which are identical).
- rouge_score (if installed): RougeScorer(["rougeL"]).score per pair, as Self-Instruct's own code
  does; timed on a smaller prefix. Its scores are also compared with ours on a random sample.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synth.rouge import NoveltyFilter, novel_mask_naive, rouge_l, tokenize

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _jsonl(path: Path):
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def load_instructions() -> tuple[list[str], list[str]]:
    """(seed instructions, other real instructions), exact duplicates removed."""
    seeds = [r["instruction"] for r in _jsonl(DATA / "seed_tasks" / "selfinstruct_seed_tasks_175.jsonl")]
    ep = DATA / "eval_prompts"
    others = [r["instruction"] for r in _jsonl(ep / "alpaca_eval_805.jsonl")]
    others += [r["instruction"] for r in _jsonl(ep / "selfinstruct_user_oriented_252.jsonl")]
    others += [r["turns"][0] for r in _jsonl(ep / "vicuna_bench_question_80.jsonl")]
    others += [r["turns"][0] for r in _jsonl(ep / "mt_bench_question_80.jsonl")]
    others += [r["Instruction"] for r in _jsonl(ep / "wizardlm_testset_218.jsonl")]
    others += [r["instruction"] for r in _jsonl(DATA / "seed_tasks" / "gpteacher_code_seed_tasks_21.jsonl")]
    others += [r["instruction"] for r in _jsonl(DATA / "quality_cherry_alpaca_ifd" / "cherry_alpaca_5_percent.jsonl")]
    others += [r["instruction"] for r in _jsonl(DATA / "nuggets_alpaca_gpt4" / "alpaca_gpt4_bad_scored.jsonl")]
    seen = set(seeds)
    uniq = []
    for t in others:
        if t and t not in seen:
            seen.add(t)
            uniq.append(t)
    return seeds, uniq


FILLERS = ["the", "a", "please", "new", "short", "given", "following", "simple", "some", "detailed"]


def perturb(text: str, rng: random.Random) -> str:
    words = text.split()
    for _ in range(rng.choice([1, 1, 2, 3])):
        op = rng.random()
        if op < 0.35 and len(words) > 3:
            del words[rng.randrange(len(words))]
        elif op < 0.7:
            words.insert(rng.randrange(len(words) + 1), rng.choice(FILLERS))
        elif len(words) > 2:
            i = rng.randrange(len(words) - 1)
            words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


def build(n: int, seed: int) -> tuple[list[str], list[str]]:
    seeds, real = load_instructions()
    rng = random.Random(seed)
    rng.shuffle(real)
    n_pert = int(0.15 * n)
    base = real[: n - n_pert]
    if len(base) < n - n_pert:
        raise SystemExit(f"only {len(real)} real instructions; use --n <= {int(len(real) / 0.85)}")
    perturbed = [perturb(rng.choice(base + seeds), rng) for _ in range(n_pert)]
    cands = base + perturbed
    rng.shuffle(cands)
    return seeds, cands


def naive_pairs(pool_size: int, keep: list[bool]) -> int:
    """Pairs the naive loop scores: each candidate against the pool plus every earlier kept one."""
    total, size = 0, pool_size
    for k in keep:
        total += size
        size += k
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--prefix", type=int, default=1000, help="candidates the naive loop is timed on")
    ap.add_argument("--rs-prefix", type=int, default=300, help="candidates rouge_score is timed on")
    ap.add_argument("--threshold", type=float, default=0.7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3, help="runs of ours; the fastest is reported")
    args = ap.parse_args()

    seeds, cands = build(args.n, args.seed)
    toks = [len(tokenize(c)) for c in cands]
    print(f"pool: {len(seeds)} seed tasks; candidates: {len(cands)} "
          f"(tokens/instruction: mean {sum(toks) / len(toks):.1f}, max {max(toks)}), threshold {args.threshold}")

    # --- ours, full N (best of --repeat: the machine may be shared) ----------------------------
    t_ours = float("inf")
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        nf = NoveltyFilter(seeds, args.threshold)
        keep = nf.filter(cands)
        t_ours = min(t_ours, time.perf_counter() - t0)
    pairs_full = naive_pairs(len(seeds), keep)
    print(f"ours   full {len(cands):>6}: {t_ours:8.2f} s  kept {sum(keep)}  "
          f"(pairs a naive loop scores: {pairs_full:,}; LCS computed by ours: {nf.pairs_checked:,})")

    # --- same prefix: ours vs naive -------------------------------------------------------------
    p = min(args.prefix, len(cands))
    t_ours_p = float("inf")
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        keep_ours_p = NoveltyFilter(seeds, args.threshold).filter(cands[:p])
        t_ours_p = min(t_ours_p, time.perf_counter() - t0)
    t0 = time.perf_counter()
    keep_naive_p = novel_mask_naive(cands[:p], seeds, args.threshold)
    t_naive_p = time.perf_counter() - t0
    pairs_p = naive_pairs(len(seeds), keep_naive_p)
    same = keep_naive_p == keep_ours_p == keep[:p]
    rate = pairs_p / t_naive_p
    print(f"prefix {p:>6}: naive {t_naive_p:8.2f} s ({pairs_p:,} pairs, {rate:,.0f} pairs/s)  "
          f"ours {t_ours_p:6.3f} s  speed-up {t_naive_p / t_ours_p:,.0f}x  identical decisions: {same}")
    t_naive_full = pairs_full / rate
    print(f"naive full {len(cands):>6} (extrapolated at {rate:,.0f} pairs/s): {t_naive_full:,.0f} s "
          f"= {t_naive_full / 60:.1f} min  -> ours is {t_naive_full / t_ours:,.0f}x faster")

    # --- rouge_score, the library Self-Instruct called ---------------------------------------
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        print("rouge_score not installed: skipped its timing and score comparison (pip install rouge_score)")
    else:
        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
        q = min(args.rs_prefix, len(cands))
        t0 = time.perf_counter()
        pool, keep_rs = list(seeds), []
        for c in cands[:q]:
            ok = all(scorer.score(c, x)["rougeL"].fmeasure < args.threshold for x in pool)
            keep_rs.append(ok)
            if ok:
                pool.append(c)
        t_rs = time.perf_counter() - t0
        pairs_q = naive_pairs(len(seeds), keep_rs)
        rs_rate = pairs_q / t_rs
        print(f"rouge_score prefix {q}: {t_rs:.2f} s ({rs_rate:,.0f} pairs/s), identical decisions: "
              f"{keep_rs == keep[:q]}; extrapolated full {len(cands)}: {pairs_full / rs_rate / 60:,.1f} min")
        rng = random.Random(args.seed + 1)
        sample = [(rng.choice(cands), rng.choice(cands + seeds)) for _ in range(20_000)]
        sample += [(c, perturb(c, rng)) for c in rng.sample(cands, 2000)]  # high-score pairs too
        diff = sum(scorer.score(a, b)["rougeL"].fmeasure != rouge_l(a, b) for a, b in sample)
        print(f"scores vs rouge_score on {len(sample):,} pairs: {diff} differ (exact float equality)")


if __name__ == "__main__":
    main()
