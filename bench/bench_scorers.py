"""The three token-log-prob scorers (llama.cpp, transformers, vLLM): agreement and speed, one process.

    python bench/bench_scorers.py [--rows 50 --data FILE --anchor-rows 7,11,22 --speed-rows 20 --rounds 3]
                                  [--threads 1 --only llama_cpp,transformers,vllm --nuggets 4x8]  (0 skips)

Rows (CC BY-NC, read, never copied): the first --rows rows of --data, by default the 100
Alpaca-GPT4 rows of ../shared/data/nuggets_alpaca_gpt4's anchor file (tests/test_vllm.py scores 5
of the first 50); NUGGETS' anchors are the --anchor-rows rows of that anchor file (the test's).
The speed rounds use the first --speed-rows rows of Cherry Alpaca (../shared/data/quality_cherry_alpaca_ifd).

Agreement: each likelihood filter at its call site (`Perplexity`, `IFD` Cherry and Superfiltering,
`Nuggets` with the anchor file) on every scorer, against llama.cpp's scores: the largest and the
95th-percentile difference over the rows, measured as tests/test_vllm.py measures them (the test's
tolerances come from this table), and the per-token |difference| of the log-probs on the token
ids llama.cpp gives the Perplexity pairs.
llama.cpp runs the Q4_1 GGUF, the other two the dequantized float32 HF folder
(curate.llm.hf_model), so they differ by the quantization.

Speed: `Perplexity(scorer=...).score(df)` on --speed-rows rows (a response pass after the chat
prompt, then a whole-text pass), in rounds that rotate which scorer goes first; the rate counts
the tokens the scorer evaluates (prompt + response, then the text; the three tokenize alike) and
is given as a ratio to llama.cpp's. With --nuggets, `golden_scores` on C candidates x K anchors
(llama.cpp decodes each candidate once for its K anchors; transformers and vLLM recompute it with
every anchor).

Threads: --threads N for all three (llama.cpp `set_threads`, `torch.set_num_threads`, and vLLM's
worker bound to cores 0..N-1 through VLLM_CPU_OMP_THREADS_BIND unless that is set). vLLM runs in
worker processes: rates are wall-clock, and "CPU s / wall s" counts the CPU time of this process
and its children (how many cores each really kept busy). Record `uptime` with any figure (printed
per round).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bench.rounds import in_turns, load_avg
from curate.io import read_records  # noqa: E402
from curate.records import message_text  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
ROWS = DATA / "quality_cherry_alpaca_ifd" / "cherry_alpaca_5_percent.jsonl"
ANCHORS = DATA / "nuggets_alpaca_gpt4" / "alpaca_gpt4_kmeans_100_anchor.json"
VLLM_OPTIONS = {"max_model_len": 2048}


def cpu_seconds() -> float:
    """CPU time of this process and its live descendants (vLLM's engine core and worker)."""
    import psutil

    procs = [psutil.Process()] + psutil.Process().children(recursive=True)
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def options(kind: str) -> dict:
    return VLLM_OPTIONS if kind == "vllm" else {}


def likelihood_filters(kind: str, anchors: str, scorer_options: dict) -> dict:
    """Every likelihood filter on one scorer (NUGGETS against the `anchors` file), with the
    settings a recipe would give them."""
    from filters import IFD, Nuggets, Perplexity

    common = {"scorer": kind, "scorer_options": scorer_options}
    return {
        "perplexity": Perplexity(**common),
        "ifd_cherry": IFD(variant="cherry", **common),
        "ifd_superfiltering": IFD(variant="superfiltering", **common),
        "nuggets": Nuggets(anchors=anchors, threshold=0.5, **common),
    }


def write_anchor_file(rows: list[int], folder: Path) -> Path:
    """These rows of the NUGGETS anchor file as a JSONL file in `folder` (a scratch copy)."""
    raw = json.loads(ANCHORS.read_text())
    path = folder / "anchors.jsonl"
    path.write_text("".join(json.dumps(raw[i]) + "\n" for i in rows))
    return path


def differences(got: dict, ref: dict) -> dict[str, np.ndarray]:
    """Per row, each filter's scores against llama.cpp's, as tests/test_vllm.py measures them:
    perplexities and the Superfiltering ratio (a ratio of two perplexities) relatively, mean NLLs,
    Cherry IFD and NUGGETS' GS absolutely."""

    def col(name, column):
        return got[name][column].to_numpy(), ref[name][column].to_numpy()

    out = {}
    for part in ("response", "text"):
        a, b = col("perplexity", f"score_perplexity_{part}")
        out[f"perplexity {part}: |ratio - 1|"] = np.abs(a / b - 1)
    for variant in ("cherry", "superfiltering"):
        for which in ("cond", "direct"):
            a, b = col(f"ifd_{variant}", f"score_ifd_nll_{which}")
            out[f"IFD {variant} nll_{which}: |difference|"] = np.abs(a - b)
    a, b = col("ifd_cherry", "score_ifd")
    out["IFD cherry: |difference|"] = np.abs(a - b)
    a, b = col("ifd_superfiltering", "score_ifd")
    out["IFD superfiltering: |ratio - 1|"] = np.abs(a / b - 1)
    a, b = col("nuggets", "score_nuggets")
    out["NUGGETS GS: |difference|"] = np.abs(a - b)
    return out


def perplexity_pairs(scorer, df) -> list[tuple[str, str]]:
    """The (context, target) pairs `Perplexity()` scores (chat template, max_length 1024)."""
    from filters.perplexity import Perplexity, fit_target

    flt = Perplexity()
    prompts, responses = message_text(df, "prompt").to_list(), message_text(df, "response").to_list()
    texts = message_text(df, "text").to_list()
    pairs = []
    for prompt, response in zip(prompts, responses):
        context = scorer.chat_prompt([{"role": "user", "content": prompt}])
        pairs.append((context, fit_target(scorer, context, response, flt.max_length)[0]))
    return pairs + [("", fit_target(scorer, "", t, flt.max_length)[0]) for t in texts]


def token_agreement(name: str, ref: list[np.ndarray], got: list[np.ndarray]) -> None:
    diff = np.abs(np.concatenate([g - r for g, r in zip(got, ref)]))
    print(f"  per token, {name:9s}: |diff| mean {diff.mean():.3f}, p95 {np.percentile(diff, 95):.3f}, "
          f"max {diff.max():.3f} nat ({diff.size} tokens)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=50, help="rows for the agreement (0 skips it)")
    ap.add_argument("--data", default=str(ANCHORS), help="rows for the agreement (any format curate reads)")
    ap.add_argument("--anchor-rows", default="7,11,22", help="rows of the anchor file that NUGGETS scores against")
    ap.add_argument("--speed-rows", type=int, default=20, help="rows for the speed rounds (0 skips them)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", default="llama_cpp,transformers,vllm")
    ap.add_argument("--nuggets", default="4x8", help="CxK: candidates x anchors for golden_scores; 0 skips it")
    args = ap.parse_args()
    kinds = ["llama_cpp"] + [k for k in args.only.split(",") if k != "llama_cpp"]
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{args.threads - 1}" if args.threads > 1 else "0")

    import tempfile

    import torch

    from curate.llm.scorers import get_scorer
    from filters.nuggets import golden_scores, prepare_anchors, prepare_candidates, record_parts
    from filters.perplexity import Perplexity

    torch.set_num_threads(args.threads)
    print(f"{load_avg()}; loading {', '.join(kinds)}", flush=True)
    scorers = {}
    for kind in kinds:
        started = time.perf_counter()
        scorers[kind] = get_scorer(kind, **options(kind))
        if kind == "llama_cpp":
            scorers[kind].set_threads(args.threads)
        print(f"  {kind}: ready in {time.perf_counter() - started:.1f}s", flush=True)
    ref_scorer = scorers["llama_cpp"]
    hi = [{"role": "user", "content": "hi"}]
    assert all(s.chat_prompt(hi) == ref_scorer.chat_prompt(hi) for s in scorers.values())

    # Agreement ----------------------------------------------------------------------------------
    if args.rows:
        df = read_records(args.data, source="agreement").head(args.rows)
        anchor_rows = [int(i) for i in args.anchor_rows.split(",")]
        anchor_file = write_anchor_file(anchor_rows, Path(tempfile.mkdtemp()))
        pairs = perplexity_pairs(ref_scorer, df)
        ids = [(ref_scorer.tokenize(c), ref_scorer.tokenize(t)) for c, t in pairs]
        texts = {part: message_text(df, part).to_list() for part in ("prompt", "response", "text")}
        ref_texts = {part: [ref_scorer.tokenize(t) for t in v] for part, v in texts.items()}
        scores, seconds = {}, {}
        for kind, s in scorers.items():
            same = sum(sum(s.tokenize(t) == x for t, x in zip(texts[p], ref_texts[p])) for p in texts)
            started = time.perf_counter()
            scores[kind] = {name: flt.score(df) for name, flt in likelihood_filters(kind, str(anchor_file), options(kind)).items()}
            seconds[kind] = time.perf_counter() - started
            print(f"  {kind}: the four filters in {seconds[kind]:.0f}s; {same}/{3 * len(df)} prompt, response "
                  f"and text strings tokenized as by llama.cpp ({load_avg()})", flush=True)
        print(f"\nAgreement with llama.cpp, {len(df)} rows of {Path(args.data).name}, NUGGETS on {len(anchor_rows)} anchors:")
        ref = ref_scorer.score_ids_after_prefix([], ids)
        for kind in kinds[1:]:
            print(f"{kind}: {'largest':>8s} {'p95':>8s}")
            for what, d in differences(scores[kind], scores["llama_cpp"]).items():
                print(f"  {what:42s} {np.nanmax(d):8.4f} {np.nanpercentile(d, 95):8.4f}")
            got = scorers[kind].score_ids_after_prefix([], ids)
            token_agreement("responses", ref[: len(df)], got[: len(df)])
            token_agreement("texts", ref[len(df):], got[len(df):])

    # Speed: Perplexity().score ----------------------------------------------------------------------
    if args.speed_rows:
        df = read_records(ROWS, source="cherry-alpaca").head(args.speed_rows)
        evaluated = sum(len(ref_scorer.tokenize(c)) + len(ref_scorer.tokenize(t)) for c, t in perplexity_pairs(ref_scorer, df))
        filters = {kind: Perplexity(scorer=kind, scorer_options=options(kind)) for kind in scorers}
        for flt in filters.values():
            flt.score(df.head(2))  # warm-up
        def timed_score(kind: str) -> tuple[float, float]:
            """(wall seconds, CPU seconds of this process and its children) of one Perplexity().score."""
            started, cpu0 = time.perf_counter(), cpu_seconds()
            filters[kind].score(df)
            return time.perf_counter() - started, cpu_seconds() - cpu0

        runs = in_turns(args.rounds, {kind: lambda r, kind=kind: timed_score(kind) for kind in scorers},
                        lambda kind, v: f"{kind} {evaluated / v[0]:.0f} tok/s")
        times = {kind: [wall for wall, _ in v] for kind, v in runs.items()}
        cpu = {kind: sum(c for _, c in v) for kind, v in runs.items()}
        base = sum(times["llama_cpp"])
        print(f"\nPerplexity().score on {len(df)} rows ({evaluated} tokens evaluated), {args.rounds} rounds, "
              f"{args.threads} thread(s) each")
        print(f"{'scorer':14s} {'tokens/s':>9s} {'vs llama.cpp':>12s} {'CPU s / wall s':>14s} {'tokens/CPU s':>12s} {'vs llama.cpp':>12s}")
        for kind, t in times.items():
            per_cpu = evaluated * len(t) / cpu[kind]
            print(f"{kind:14s} {evaluated * len(t) / sum(t):9.1f} {base / sum(t):12.3f} {cpu[kind] / sum(t):14.2f} "
                  f"{per_cpu:12.1f} {per_cpu / (evaluated * len(t) / cpu['llama_cpp']):12.3f}")

    # Speed: NUGGETS golden scores -------------------------------------------------------------------
    if args.nuggets != "0":
        c, k = (int(x) for x in args.nuggets.split("x"))
        parts = record_parts(read_records(ROWS, source="cherry-alpaca").slice(args.speed_rows, c + k))
        cand_parts, anchor_parts = parts[:c], parts[c:]
        res, secs = {}, {}
        for kind, s in scorers.items():
            anchors, prefixes = prepare_anchors(s, anchor_parts), prepare_candidates(s, cand_parts)
            started = time.perf_counter()
            res[kind] = golden_scores(s, prefixes, anchors)
            secs[kind] = time.perf_counter() - started
        tokens = sum(len(p) + len(q) + len(a) for p in prefixes for q, a in anchors)
        print(f"\nNUGGETS golden_scores, {c} candidates x {k} anchors ({tokens} tokens as full sequences), {load_avg()}")
        print(f"{'scorer':14s} {'seconds':>8s} {'vs llama.cpp':>12s} {'same GS':>8s} {'same win/loss':>13s}")
        ref = res["llama_cpp"]
        for kind in scorers:
            same = int((res[kind].wins == ref.wins).sum())
            flips = (res[kind].one_shot > res[kind].zero_shot[None, :]) != (ref.one_shot > ref.zero_shot[None, :])
            print(f"{kind:14s} {secs[kind]:8.1f} {secs['llama_cpp'] / secs[kind]:12.3f} {same:>6d}/{c} "
                  f"{flips.size - int(flips.sum()):>9d}/{flips.size}")


if __name__ == "__main__":  # vLLM spawns processes that re-import __main__
    main()
