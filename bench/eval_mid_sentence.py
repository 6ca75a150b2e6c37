"""How well `filters.heuristics.mid_sentence` tells cut responses from finished ones, on real data.

    python bench/eval_mid_sentence.py [--show 10] [--model 60 --max-tokens 64 --threads 1]

- False flags: the share of whole answers flagged, in public datasets whose answers are finished
  (Alpaca-GPT4 rows from NUGGETS, the AlpacaEval outputs of 7 models, Cherry Alpaca) and in this
  project's hand-written recipe data. Some flags there are right (degenerate outputs, a few Alpaca
  answers that text-davinci-003 itself ran out of tokens on); --show prints them to judge.
- Recall on simulated cuts: answers of 30 words or more cut at a random space (a token limit hit
  between words) and at a random character (inside a word).
- With --model N: the embedded model answers N Cherry Alpaca instructions at --max-tokens, cut
  answers kept (keep_truncated), and its finish reasons are the labels: recall on "length",
  false flags on "stop". Needs the `embedded` extra.

The data are non-commercial (Alpaca, AlpacaEval): used here only, never copied into the package.
An evaluation, not a speed race.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from curate.io import read_records  # noqa: E402
from curate.records import finish_reasons, message_text  # noqa: E402
import polars as pl  # noqa: E402

from filters.heuristics import mid_sentence  # noqa: E402

SHARED = Path(os.environ.get("CURATE_SHARED_DATA") or ROOT.parent / "shared" / "data")
SETS = {
    "Alpaca-GPT4 (NUGGETS rows)": SHARED / "nuggets_alpaca_gpt4" / "alpaca_gpt4_bad_scored.jsonl",
    "AlpacaEval, 7 models": SHARED / "quality_alpacaeval_outputs" / "alpaca_eval_gpt4_annotations_7models.jsonl.gz",
    "Cherry Alpaca 5%": SHARED / "quality_cherry_alpaca_ifd" / "cherry_alpaca_5_percent.jsonl",
    "recipes/data/existing_pairs": ROOT / "recipes" / "data" / "existing_pairs.jsonl",
    "recipes/data/howto_chats": ROOT / "recipes" / "data" / "howto_chats.jsonl",
}
MIN_WORDS = 30  # answers cut in the simulation


def pct(k: int, n: int) -> str:
    return f"{k}/{n} ({100 * k / n:.2f}%)" if n else "0/0"


def simulated_cuts(answers: list[str], rng: random.Random) -> tuple[int, int, int]:
    """(answers, flagged when cut at a random space, flagged when cut at a random character)."""
    long = [a.rstrip() for a in answers if len(a.split()) >= MIN_WORDS]
    at_space = [a[: rng.choice([m.start() for m in re.finditer(r"\s+", a)])] for a in long]
    at_char = [a[: rng.randrange(1, len(a))] for a in long]
    return len(long), sum(flagged(at_space)), sum(flagged(at_char))


def flagged(texts: list[str]) -> list[bool]:
    return mid_sentence(pl.Series(texts, dtype=pl.String)).to_list()


def per_model(path: Path, flags: list[bool]) -> str:
    """Flag counts per model of the AlpacaEval file (the weaker models' outputs are cut more often)."""
    models = [json.loads(line)["model"] for line in gzip.open(path, "rt", encoding="utf-8")]
    counts: dict[str, list[int]] = {}
    for model, flag in zip(models, flags):
        counts.setdefault(model, [0, 0])
        counts[model][0] += flag
        counts[model][1] += 1
    return ", ".join(f"{m} {k}/{n}" for m, (k, n) in counts.items())


def model_answers(n: int, max_tokens: int) -> None:
    from curate.llm import LLM
    from curate.llm.embedded import EmbeddedBackend
    from curate.steps import Context
    from synth.responses import Responses

    df = read_records(SETS["Cherry Alpaca 5%"]).head(n)
    llm = LLM(EmbeddedBackend(), show_progress=False)
    try:
        res = Responses(max_tokens=max_tokens, keep_truncated=True).run(df, Context(llm=llm, seed=0))
    finally:
        llm.close()
    texts, finish = message_text(res.kept, "response").to_list(), finish_reasons(res.kept).to_list()
    for reason in ("length", "stop"):
        flags = flagged([t for t, f in zip(texts, finish) if f == reason])
        print(f"  embedded model, max_tokens={max_tokens}, finish_reason {reason}: flagged {pct(sum(flags), len(flags))}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--show", type=int, default=0, help="print this many flagged whole answers per dataset")
    ap.add_argument("--model", type=int, default=0, help="also label N embedded-model answers by finish reason")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None, help="CURATE_THREADS for the embedded model")
    args = ap.parse_args()
    if args.threads:
        os.environ["CURATE_THREADS"] = str(args.threads)
    rng = random.Random(0)
    print("whole answers flagged | simulated cuts flagged (answers of >= 30 words): at a space, at a character")
    for name, path in SETS.items():
        if not path.exists():
            print(f"  {name}: {path} not found, skipped")
            continue
        answers = message_text(read_records(path), "response").to_list()
        flags = flagged(answers)
        n_long, at_space, at_char = simulated_cuts(answers, rng)
        print(f"  {name}: {pct(sum(flags), len(answers))} | {pct(at_space, n_long)}, {pct(at_char, n_long)}")
        if path.suffix == ".gz":
            print(f"    per model: {per_model(path, flags)}")
        for a in [a for a, f in zip(answers, flags) if f][: args.show]:
            print(f"    flagged: {a[-120:]!r}")
    if args.model:
        model_answers(args.model, args.max_tokens)


if __name__ == "__main__":
    main()
