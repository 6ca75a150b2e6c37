"""Do perplexity, IFD and an LLM judge track response quality? Self-Instruct's 252 user-oriented instructions,
answered by 8 GPT-3 models whose human-rated order is known (Wang et al. 2022, Self-Instruct, Fig. 6):

    davinci < davinci-t0-ft < davinci-superni-ft < davinci-self-instruct
    < davinci-self-instruct-and-superni-ft < text-davinci-001 < text-davinci-002 < text-davinci-003

Every row is scored with the embedded model (SmolLM2-135M-Instruct) by `filters.Perplexity`
(response given the instruction, chat template), `filters.IFD` (both the
Cherry and the Superfiltering variant) and `filters.Judge` (DEITA-style expected score: method
"expected", aspect "quality", scale 6 as DEITA, the shipped quality prompt; the same embedded model
through its llama.cpp chat backend). The judge costs a chat-templated pass over instruction + response
per row, so `--judge-limit` can run it on a subset of the instructions; every score is then also
reported on that subset, so all scores can be compared on the same rows. Printed: per-model means, the Spearman correlation between
per-model means and the human order, and the per-instruction pairwise accuracy of text-davinci-003
vs davinci (how often the score prefers 003). Score distributions go to --out as JSON.

Direction ("better" in the sense each method uses): lower perplexity is better (fluent, expected
text), higher IFD is better (the rows IFD selection keeps), a higher judge score is better. A score
that works has a negative Spearman for perplexity and a positive one for IFD and the judge.

    python bench/eval_selfinstruct_quality.py [--limit N] [--scorer llama_cpp|transformers]
        [--max-length 512] [--judge-limit N] [--out report.json] [--compare-scorers 24]

On a busy 2-core machine the scores can run as separate processes and be merged (same --limit/--seed):

    python bench/eval_selfinstruct_quality.py --only perplexity --only judge --scores-out a.parquet ...
    python bench/eval_selfinstruct_quality.py --only ifd_cherry --scores-out b.parquet ...
    python bench/eval_selfinstruct_quality.py --merge a.parquet b.parquet ...
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from curate.records import make_frame  # noqa: E402
from filters.ifd import IFD  # noqa: E402
from filters.judge import Judge  # noqa: E402
from filters.perplexity import Perplexity, ccnet_buckets  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "quality_selfinstruct_252x8" / "predictions_8_models.jsonl"
HUMAN_ORDER = [
    "davinci", "davinci-t0-ft", "davinci-superni-ft", "davinci-self-instruct",
    "davinci-self-instruct-and-superni-ft", "text-davinci-001", "text-davinci-002", "text-davinci-003",
]
# score column -> +1 if higher is better, -1 if lower is better
SCORES = {
    "score_perplexity_response": -1,
    "score_ifd_cherry": +1,
    "score_ifd_superfiltering": +1,
    # free by-products of the IFD passes: PPL(A | Q) under the other two templates, and PPL(A) alone
    "ppl_alpaca_template": -1,  # exp(score_ifd_cherry_nll_cond)
    "ppl_plain_template": -1,  # exp(score_ifd_superfiltering_nll_cond)
    "ppl_response_alone": -1,  # exp(score_ifd_superfiltering_nll_direct)
    "score_judge_quality": +1,  # DEITA expected quality score, 1..6
}


def load(limit: int | None, seed: int) -> pl.DataFrame:
    """Records for the chosen instructions (all 8 models each). The user turn is the instruction,
    a blank line and the instance input if any; the response is stripped (GPT-3 outputs start with
    a space after "Output:")."""
    raw = pl.read_ndjson(DATA)
    instructions = raw.select(pl.col("prompt").unique(maintain_order=True)).to_series().to_list()
    if limit is not None and limit < len(instructions):
        instructions = random.Random(seed).sample(instructions, limit)
    raw = raw.filter(pl.col("prompt").is_in(instructions))
    rows = []
    for r in raw.iter_rows(named=True):
        user = r["instruction"].strip() + (f"\n\n{r['input'].strip()}" if (r["input"] or "").strip() else "")
        rows.append({
            "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": r["response"].strip()}],
            "source": r["model"],
            "model": r["model"],
            "instance": r["prompt"],
        })
    return make_frame(rows)


def rank(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties averaged."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    for v in np.unique(x):
        tie = x == v
        ranks[tie] = ranks[tie].mean()
    return ranks


def spearman(a, b) -> float | None:
    """Spearman's rho over the pairs where both values are present."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = ~(np.isnan(a) | np.isnan(b))
    if ok.sum() < 3:
        return None
    return float(np.corrcoef(rank(a[ok]), rank(b[ok]))[0, 1])


def pairwise(df: pl.DataFrame, col: str, sign: int, good="text-davinci-003", bad="davinci") -> dict:
    """Per instruction: does the score prefer `good`'s response over `bad`'s? Ties count half;
    instructions where either score is missing are left out."""
    wide = (
        df.filter(pl.col("model").is_in([good, bad]))
        .pivot(on="model", index="instance", values=col, aggregate_function="first")
        .drop_nulls([good, bad])
    )
    g, b = wide[good].to_numpy() * sign, wide[bad].to_numpy() * sign
    wins = float((g > b).sum() + 0.5 * (g == b).sum())
    return {"accuracy": wins / len(wide) if len(wide) else None, "n": len(wide)}


def distribution(values: pl.Series, log: bool) -> dict:
    v = values.drop_nulls().drop_nans().to_numpy()
    if not len(v):
        return {"count": 0}
    qs = [1, 5, 10, 25, 30, 50, 60, 75, 90, 95, 99]
    hv = np.log10(v) if log else v
    counts, edges = np.histogram(hv, bins=20)
    return {
        "count": int(len(v)),
        "mean": float(v.mean()),
        "percentiles": {str(q): float(np.percentile(v, q)) for q in qs},
        "histogram": {"scale": "log10" if log else "linear", "edges": edges.round(4).tolist(), "counts": counts.tolist()},
    }


def score_in_chunks(df: pl.DataFrame, steps, chunk: int) -> tuple[pl.DataFrame, dict]:
    """Score row chunks (filters score row by row; only their decisions are global) so progress
    and an ETA can be printed."""
    timings = {}
    for step in steps:
        t0, parts = time.time(), []
        for start in range(0, len(df), chunk):
            parts.append(step.compute_scores(df.slice(start, chunk)))
            done = min(start + chunk, len(df))
            el = time.time() - t0
            print(f"  {step.name or step.kind}: {done}/{len(df)} rows, {el:.0f}s, ETA {el / done * (len(df) - done):.0f}s",
                  file=sys.stderr, flush=True)
        df = pl.concat(parts, how="vertical_relaxed")
        timings[step.name or step.kind] = round(time.time() - t0, 1)
    return df, timings


def compare_scorers(n: int, seed: int) -> dict:
    """Speed and agreement of llama.cpp vs transformers on the same (chat prompt, response) pairs."""
    from curate.llm.scorers import get_scorer
    from filters.perplexity import fit_target

    df = load(None, seed).filter(pl.col("model") != "davinci").sample(n, seed=seed)
    lc, hf = get_scorer("llama_cpp"), get_scorer("transformers")
    pairs = []
    for msgs in df["messages"].to_list():
        ctx = lc.chat_prompt(msgs[:1])
        pairs.append((ctx, fit_target(lc, ctx, msgs[1]["content"], 512)[0]))
    n_tok = sum(len(lc.tokenize(c)) + len(lc.tokenize(t)) for c, t in pairs)
    out = {"pairs": n, "tokens": n_tok, "threads": os.cpu_count()}
    runs = {}
    for rep in range(2):  # interleaved, twice: the machine may be shared
        for name, scorer in (("llama_cpp", lc), ("transformers", hf)):
            t, c = time.time(), time.process_time()
            res = scorer.score_many(pairs)
            wall, cpu = time.time() - t, time.process_time() - c
            runs.setdefault(name, []).append({"tok_per_s": round(n_tok / wall, 1), "tok_per_cpu_s": round(n_tok / cpu, 1)})
            out[f"{name}_logprobs"] = res
    a, b = out.pop("llama_cpp_logprobs"), out.pop("transformers_logprobs")
    d = np.concatenate([x - y for x, y in zip(a, b)])
    item = np.array([abs(x.mean() - y.mean()) for x, y in zip(a, b) if len(x)])
    out["runs"] = runs
    out["agreement"] = {
        "token_abs_diff_mean": float(np.abs(d).mean()),
        "token_abs_diff_p95": float(np.percentile(np.abs(d), 95)),
        "token_abs_diff_max": float(np.abs(d).max()),
        "item_mean_nll_abs_diff_mean": float(item.mean()),
        "item_mean_nll_abs_diff_max": float(item.max()),
        "ppl_spearman_between_backends": spearman([-x.mean() for x in a if len(x)], [-y.mean() for y in b if len(y)]),
    }
    load_avg = os.getloadavg()
    out["load_average"] = [round(x, 1) for x in load_avg]
    return out


def summarize(df: pl.DataFrame, cols: dict[str, int]) -> tuple[pl.DataFrame, dict]:
    """Per-model means and medians, Spearman against the human order, pairwise 003-vs-davinci
    accuracy and the distribution of each score column (nulls left out)."""
    human_rank = {m: i + 1 for i, m in enumerate(HUMAN_ORDER)}
    per_model = df.group_by("model").agg(
        *[pl.col(c).mean().alias(c) for c in cols],
        *[pl.col(c).median().alias(c + "_median") for c in cols],
        *[pl.col(c).is_not_null().sum().alias(c + "_n") for c in cols],
    ).with_columns(pl.col("model").replace_strict(human_rank).alias("human_rank")).sort("human_rank")
    results = {}
    for col, sign in cols.items():
        results[col] = {
            "better": "higher" if sign > 0 else "lower",
            "rows_scored": int(df[col].is_not_null().sum()),
            "per_model_mean": dict(zip(per_model["model"], per_model[col].to_list())),
            "per_model_median": dict(zip(per_model["model"], per_model[col + "_median"].to_list())),
            "spearman_mean_vs_human": spearman(per_model[col].to_numpy(), per_model["human_rank"].to_numpy()),
            "spearman_median_vs_human": spearman(per_model[col + "_median"].to_numpy(), per_model["human_rank"].to_numpy()),
            "pairwise_003_vs_davinci": pairwise(df, col, sign),
            "distribution": distribution(df[col], log="ppl" in col or "perplexity" in col),
        }
    return per_model, results


def print_results(results: dict, title: str) -> None:
    print(f"\n{title}")
    print(f"{'score':<28} {'better':<7} {'rows':>5} {'spearman(mean)':>15} {'spearman(median)':>17} {'003>davinci':>12} {'n':>4}")
    rho = lambda x: "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:+.3f}"  # noqa: E731
    for col, r in results.items():
        pw = r["pairwise_003_vs_davinci"]
        acc = "n/a" if pw["accuracy"] is None else f"{pw['accuracy']:.3f}"
        print(f"{col:<28} {r['better']:<7} {r['rows_scored']:>5} {rho(r['spearman_mean_vs_human']):>15} "
              f"{rho(r['spearman_median_vs_human']):>17} {acc:>12} {pw['n']:>4}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=32, help="instructions to use (x8 rows); 0 = all 252")
    ap.add_argument("--judge-limit", type=int, default=None,
                    help="judge only this many of the chosen instructions (x8 rows); 0 = no judge; default all")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scorer", choices=["llama_cpp", "transformers"], default="transformers")
    ap.add_argument("--max-length", type=int, default=256,
                    help="tokens per scored sequence; responses are cut to fit (Cherry uses 512)")
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None,
                    help="llama.cpp threads (scorer and judge share the loaded model); 1 is faster on a busy machine")
    ap.add_argument("--out", type=Path, default=Path("selfinstruct_quality.json"))
    ap.add_argument("--only", action="append", choices=["perplexity", "ifd_cherry", "ifd_superfiltering", "judge"],
                    help="score only these (repeatable); default all")
    ap.add_argument("--scores-out", type=Path, help="also write the per-row scores (parquet) for --merge")
    ap.add_argument("--merge", type=Path, nargs="+", help="summarize --scores-out files instead of scoring")
    ap.add_argument("--compare-scorers", type=int, default=0, metavar="N",
                    help="also time llama.cpp vs transformers on N rows and report their agreement")
    args = ap.parse_args(argv)

    report: dict = {"data": str(DATA), "scorer": args.scorer, "max_length": args.max_length, "human_order": HUMAN_ORDER,
                    "load_average_start": [round(x, 2) for x in os.getloadavg()]}
    if args.compare_scorers:
        cmp = compare_scorers(args.compare_scorers, args.seed)
        report["compare_scorers"] = cmp
        print("llama.cpp vs transformers:", json.dumps(cmp, indent=1))

    if args.threads:
        from curate.llm.scorers import get_scorer

        get_scorer("llama_cpp").set_threads(args.threads)  # the same Llama serves the judge's backend
        report["threads"] = args.threads
    df = load(args.limit or None, args.seed)
    n_instr = df["instance"].n_unique()
    print(f"{len(df)} rows = {n_instr} instructions x 8 models; scorer {args.scorer}, max_length {args.max_length}")
    common = dict(scorer=args.scorer, max_length=args.max_length)
    steps = [
        Perplexity(template="chat", score_text=False, **common),  # the whole-text pass is not needed here
        IFD(variant="cherry", name="ifd_cherry", **common),
        IFD(variant="superfiltering", name="ifd_superfiltering", **common),
    ]
    only = set(args.only or ["perplexity", "ifd_cherry", "ifd_superfiltering", "judge"])
    t0 = time.time()
    timings: dict = {}
    if args.merge:  # scores from earlier partial runs, joined on (instruction, model)
        for path in args.merge:
            part = pl.read_parquet(path)
            df = df.join(part.drop([c for c in part.columns if c in df.columns and c not in ("instance", "model")]),
                         on=["instance", "model"], how="left")
            side = json.loads(path.with_suffix(".meta.json").read_text())
            timings.update(side["seconds_per_filter"])
            report.setdefault("partial_runs", {})[str(path)] = side
        only = set()
    else:
        df, timings = score_in_chunks(df, [s for s in steps if (s.name or s.kind) in only], args.chunk)

    # The judge: on the first --judge-limit of the chosen instructions (all 8 answers of each).
    instructions = df["instance"].unique(maintain_order=True).to_list()
    judged = instructions if args.judge_limit is None else instructions[: args.judge_limit]
    if "judge" not in only:
        judged = [] if "score_judge_quality" not in df.columns else \
            df.filter(pl.col("score_judge_quality").is_not_null())["instance"].unique(maintain_order=True).to_list()
    if judged and "judge" in only:
        from curate.llm import TeacherConfig, build_llm

        judge = Judge(method="expected", aspect="quality", scale=6, name="judge_quality")
        judge.use(build_llm(TeacherConfig(), cache_path=None, show_progress=False))
        sub = df.filter(pl.col("instance").is_in(judged))
        print(f"judge: {len(sub)} rows = {len(judged)} instructions x 8 models", file=sys.stderr)
        sub, jt = score_in_chunks(sub, [judge], args.chunk)
        timings.update(jt)
        df = df.join(sub.select("instance", "model", "score_judge_quality", "score_judge_quality_rationale"),
                     on=["instance", "model"], how="left")
    elapsed = time.time() - t0
    if args.scores_out:
        keep = ["instance", "model"] + [c for c in df.columns if c.startswith("score_")]
        args.scores_out.parent.mkdir(parents=True, exist_ok=True)
        df.select(keep).write_parquet(args.scores_out)
        args.scores_out.with_suffix(".meta.json").write_text(json.dumps(
            {"seconds": round(elapsed, 1), "seconds_per_filter": timings, "rows": len(df), "only": sorted(only),
             "load_average_start": report["load_average_start"], "load_average_end": [round(x, 2) for x in os.getloadavg()]}))
    # columns a partial run did not score stay null, so the summary below still runs
    for step in steps:
        for c in step.score_columns():
            if c not in df.columns:
                df = df.with_columns(pl.lit(None, dtype=pl.String if c.endswith("_variant") else pl.Float64).alias(c))
    if "score_judge_quality" not in df.columns:
        df = df.with_columns(pl.lit(None, dtype=pl.Float64).alias("score_judge_quality"))
    df = df.with_columns(
        pl.col("score_ifd_cherry_nll_cond").exp().alias("ppl_alpaca_template"),
        pl.col("score_ifd_superfiltering_nll_cond").exp().alias("ppl_plain_template"),
        pl.col("score_ifd_superfiltering_nll_direct").exp().alias("ppl_response_alone"),
    )
    report.update(rows=len(df), instructions=n_instr, judged_instructions=len(judged), seconds=round(elapsed, 1),
                  seconds_per_filter=timings, load_average_end=[round(x, 2) for x in os.getloadavg()])
    judged_rows = df.filter(pl.col("instance").is_in(judged))
    report["judge_unscored_rows"] = int(judged_rows["score_judge_quality"].is_null().sum()) if judged else None

    per_model, results = summarize(df, SCORES)
    per_model = per_model.join(
        df.group_by("model").agg(
            (pl.col("score_ifd_cherry") >= 1).mean().alias("share_ifd_cherry_ge_1"),
            (pl.col("score_ifd_superfiltering") >= 1).mean().alias("share_ifd_superfiltering_ge_1"),
            pl.col("score_perplexity_response_tokens").mean().alias("response_tokens"),
        ), on="model").sort("human_rank")
    if judged and len(judged) < n_instr:  # every score again on the judged instructions only
        _, report["scores_on_judged_subset"] = summarize(judged_rows, SCORES)
    # what the filters would keep: IFD < 1 and the top 30% (per variant); CCNet buckets of response PPL
    kept = {}
    for step in steps[1:]:
        if df[step.column].is_null().all():
            continue
        mask, _ = step.model_copy(update={"fraction": 0.3}).keep(df)
        kept[step.name] = df.filter(mask)["model"].value_counts().sort("model").to_dicts()
    buckets = df.with_columns(ccnet_buckets(df["score_perplexity_response"]).alias("bucket"))
    report["ccnet_buckets_by_model"] = buckets.group_by("model", "bucket").len().sort("model", "bucket").to_dicts()
    report["ifd_top30_kept_by_model"] = kept
    report["per_model"] = per_model.to_dicts()
    report["scores"] = results
    report["other_columns"] = {
        c: distribution(df[c], log=False)
        for c in ("score_ifd_cherry_nll_cond", "score_ifd_cherry_nll_direct", "score_ifd_superfiltering_nll_cond",
                  "score_ifd_superfiltering_nll_direct", "score_perplexity_response_tokens")
    }

    with pl.Config(tbl_rows=20, tbl_cols=20, tbl_width_chars=250, float_precision=3):
        print(per_model.select("human_rank", "model", *SCORES, "share_ifd_cherry_ge_1", "share_ifd_superfiltering_ge_1", "response_tokens"))
    print_results(results, f"all {n_instr} instructions (judge on {len(judged)}; "
                           f"{report['judge_unscored_rows']} judged rows had no digit among the top tokens)")
    if "scores_on_judged_subset" in report:
        print_results(report["scores_on_judged_subset"], f"the {len(judged)} judged instructions only")
    print(f"\n{len(df)} rows scored in {elapsed:.0f}s ({timings}); load average {report['load_average_start']} at the "
          f"start, {report['load_average_end']} at the end; report written to {args.out}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=lambda x: None if isinstance(x, float) and math.isnan(x) else str(x)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
