"""Verified chain-of-thought on a sample of GSM8K train with the embedded model, uniform vs Prop2Diff.

    python bench/eval_cot_gsm8k.py [--questions 20 --k 4 --max-samples 8 --quota 2 --max-tokens 256]
                                   [--rationalize] [--threads N] [--out DIR] [--seed 0] [--data FILE]

Data: ../shared/data/gsm8k_train/train.jsonl (openai/grade-school-math, MIT; `final_answer` is the
gold number); `--questions` rows drawn at random with `--seed`. `--data FILE` takes another file of
the same shape instead, e.g. recipes/data/math_word_problems.jsonl (8 easy problems the embedded
model sometimes solves, so that Prop2Diff has different difficulties to work with).

What runs: the `verified_cot` step (synth/cot.py) twice on the same questions and the same teacher,
once with quota_mode=uniform (`--quota` correct rationales per question) and once with
quota_mode=prop2diff and the same total budget (`--quota` x questions). Both share one response
cache, so the second mode reuses the first round's samples (same prompts and seeds) and only pays
for the extra rounds. Printed per mode: the pass rate of every question and their distribution,
the quota fill (correct rationales kept / quota), questions full / capped / empty, rows written
(to --out/<mode>.jsonl), teacher requests, tokens and time. A throughput probe runs first and the
expected time of the first round is printed before it starts.

The embedded teacher is SmolLM2-135M-Instruct: it solves very few GSM8K problems, so expect pass
rates near 0 and little quota fill. The numbers show the loop and its bookkeeping, not a dataset.

`--threads N` loads the model with N llama.cpp threads instead of the library default (all
cores). On a loaded machine one thread is several times faster than two (threads spin waiting for
each other while other jobs hold the cores); the printed probe shows what you get.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import polars as pl

from curate.io import read_records
from curate.llm import LLM, Request
from curate.llm.cache import ResponseCache
from curate.steps import Context
from synth.cot import VerifiedCoT

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k_train" / "train.jsonl"


def load_questions(path: Path, n: int, seed: int) -> pl.DataFrame:
    df = read_records(path, source=path.stem, gold="final_answer")
    idx = sorted(random.Random(seed).sample(range(df.height), min(n, df.height)))
    return df[idx]


def make_backend(threads: int | None):
    from curate.llm.embedded import EmbeddedBackend

    if threads:
        os.environ["CURATE_THREADS"] = str(threads)  # read when the backend loads the model
    return EmbeddedBackend()


def probe(llm: LLM, max_tokens: int) -> float:
    """Completion tokens per second on one GSM8K-like prompt (uncached)."""
    req = Request.chat([{"role": "user", "content": "Solve step by step: Ann has 12 apples and gives 5 away, "
                         "then buys 3. How many apples does she have? End with 'The answer is N'."}],
                       max_tokens=min(64, max_tokens), temperature=0.7, seed=int(time.time()))
    t0 = time.perf_counter()
    resp = llm.backend.complete(req)
    dt = time.perf_counter() - t0
    return (resp.completion_tokens or 1) / dt


def show(mode: str, result, seconds: float, out: Path, df: pl.DataFrame) -> dict:
    cot = result.stats["cot"]
    llm = result.stats["llm"]
    kept = result.kept
    path = out / f"{mode}.jsonl"
    kept.select([c for c in ("messages", "reasoning", "answer", "gold", "source", "score_cot_pass_rate", "cot_samples",
                             "cot_correct", "cot_quota", "rationalized") if c in kept.columns]).write_ndjson(path)
    print(f"\n== {mode} ==")
    ids = df["id"].to_list()
    print(f"{'question':>10} {'pass':>6} {'samples':>7} {'correct':>7} {'quota':>5} {'kept':>4} {'rat':>3}")
    for q in cot["per_question"]:
        print(f"{ids[q['row']][:10]:>10} {q['pass_rate']:>6.2f} {q['samples']:>7} {q['correct']:>7} {q['quota']:>5} "
              f"{q['kept']:>4} {q['rationalized']:>3}")
    pr = cot["pass_rate"]
    print(f"pass rate: mean {pr['mean']}, solved {pr['solved_questions']}/{cot['questions']}, "
          f"histogram {json.dumps(pr['histogram'])}")
    qf = cot["quota"]
    print(f"quota ({mode}, setting {qf['setting']}): filled {qf['filled']}/{qf['total']} = {qf['fill_rate']} "
          f"(first try {qf['filled_first_try']}); full {qf['questions_full']}, capped {qf['questions_capped']}, "
          f"empty {qf['questions_empty']}; rounds {cot['rounds']}")
    if cot["rationalization"]["enabled"]:
        print(f"rationalization: {json.dumps(cot['rationalization'])}")
    dropped = result.rejected.group_by("reason").len().sort("len", descending=True).rows() if result.rejected is not None else []
    print(f"rows written: {kept.height} -> {path}; rejects: {dict(dropped)}")
    print(f"teacher: {llm['requests']} requests ({llm['sent']} sent, {llm['cache_hits']} cached), "
          f"{llm['completion_tokens']} completion tokens; {seconds:.1f} s")
    return {"mode": mode, "rows": kept.height, "fill": qf["fill_rate"], "filled": qf["filled"], "total": qf["total"],
            "pass_mean": pr["mean"], "sent": llm["sent"], "seconds": round(seconds, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--questions", type=int, default=20)
    ap.add_argument("--k", type=int, default=4, help="samples per question per round")
    ap.add_argument("--max-samples", type=int, default=8, help="cap on samples per question")
    ap.add_argument("--quota", type=int, default=2, help="uniform: per question; prop2diff gets quota x questions")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--rationalize", action="store_true", help="STaR hints for never-solved questions")
    ap.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: the library's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="folder for the rows and the response cache (default: a temp dir)")
    ap.add_argument("--data", type=Path, default=DATA,
                    help="another GSM8K-shaped jsonl (question, final_answer), e.g. recipes/data/math_word_problems.jsonl")
    args = ap.parse_args()
    if not args.data.exists():
        sys.exit(f"{args.data} not found (GSM8K is in the shared data folder beside the repository)")

    out = Path(args.out or tempfile.mkdtemp(prefix="eval_cot_gsm8k_"))
    out.mkdir(parents=True, exist_ok=True)
    df = load_questions(args.data, args.questions, args.seed)
    llm = LLM(make_backend(args.threads), cache=ResponseCache(out / "cache.sqlite"), show_progress=False)
    rate = probe(llm, args.max_tokens)
    first_round = df.height * min(args.k, args.max_samples)
    print(f"{df.height} questions from {args.data.name} (seed {args.seed}); embedded model {llm.model}, "
          f"threads {args.threads or os.cpu_count()}; throughput probe {rate:.1f} completion tok/s")
    print(f"first round: {first_round} samples x <= {args.max_tokens} tokens: up to "
          f"{first_round * args.max_tokens / rate / 60:.1f} min at that rate (later rounds only for questions not full)")

    rows = []
    for mode, quota in (("uniform", args.quota), ("prop2diff", args.quota * df.height)):
        step = VerifiedCoT(k=args.k, temperature=args.temperature, max_tokens=args.max_tokens, quota_mode=mode,
                           quota=quota, max_samples=args.max_samples, style="gsm8k", rationalize=args.rationalize,
                           rationalize_samples=1)
        t0 = time.perf_counter()
        result = step.run(df, Context(llm=llm, seed=args.seed, show_progress=False))
        rows.append(show(mode, result, time.perf_counter() - t0, out, df))
    llm.close()

    print("\n== summary ==")
    print(f"{'mode':<10} {'pass mean':>9} {'quota fill':>14} {'rows':>5} {'sent':>5} {'seconds':>8}")
    for r in rows:
        print(f"{r['mode']:<10} {r['pass_mean']:>9} {r['filled']:>6}/{r['total']:<3} {r['fill']!s:>4} {r['rows']:>5} "
              f"{r['sent']:>5} {r['seconds']:>8}")


if __name__ == "__main__":
    main()
