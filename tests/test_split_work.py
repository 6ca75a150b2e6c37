"""Filter.split does each piece of work once (issue 11 part 6): MinHash clusters once per split,
details are written for the rejected rows only, and every filter's details are still the ones
its explain() gives on the whole frame decide saw.

Filters that need a model or a teacher get stored scores made here and stamp()ed as their own, so
split() re-thresholds them the way it re-thresholds real scores (only decide and explain run)."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from curate.records import make_frame
from filters import dedup as D
from filters import (Decontaminate, Diversity, ExactDedup, FastTextClassifier, Heuristics, IFD, Judge, LanguageID,
                     MinHashDedup, Nuggets, Perplexity)

WORDS = ("the quick brown fox jumps over the lazy dog while the farmer watches from the old wooden porch and "
         "drinks a cup of hot coffee before starting the long day of work in the fields near the river").split()


def prompts(n: int = 24) -> list[str]:
    """Near-duplicate families: a 76-word text, two one-word edits of it (J ~ 0.84 to it, ~ 0.72 to
    each other: a chain), then an unrelated text."""
    rng = np.random.default_rng(3)
    out = []
    for family in range(n // 4):
        base = list(rng.permutation(WORDS * 2))
        out.append(" ".join(base))
        for edit in range(2):
            changed = list(base)
            changed[10 + 40 * edit] = f"edit{family}x{edit}"
            out.append(" ".join(changed))
        out.append(" ".join(rng.permutation(WORDS)[:12]) + f" unrelated {family}")
    return out


def frame(texts: list[str], responses: list[str] | None = None) -> pl.DataFrame:
    responses = responses or [f"Answer number {i} is short." if i % 3 else "No." for i in range(len(texts))]
    return make_frame([{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": r}]}
                       for p, r in zip(texts, responses)])


def with_stored(f, df: pl.DataFrame, columns: dict[str, pl.Series]) -> pl.DataFrame:
    return f.stamp(df.with_columns(**columns))


def cases(tmp_path) -> dict:
    """(filter, frame) for every filter in filters/, each rejecting some rows and keeping others."""
    df = frame(prompts())
    n = len(df)
    rng = np.random.default_rng(0)
    uniform = lambda lo=0.0, hi=1.0: pl.Series(rng.uniform(lo, hi, n))  # noqa: E731
    eval_set = tmp_path / "eval.jsonl"
    eval_set.write_text(json.dumps({"prompt": prompts()[0]}) + "\n")
    out = {
        "minhash": (MinHashDedup(field="prompt"), df),
        "exact": (ExactDedup(field="response"), df),
        "heuristics": (Heuristics(), df),
        "diversity": (Diversity(tau=0.5), df),
        "decontaminate": (Decontaminate(eval_sets=[str(eval_set)], field="prompt", ngram=8), df),
    }
    ppl = Perplexity(model_path="none.gguf", min_percentile=20, max_percentile=80)
    out["perplexity"] = (ppl, with_stored(ppl, df, {c: uniform(1, 50) for c in ppl.score_columns()}))
    ifd = IFD(model_path="none.gguf", fraction=0.5)
    out["ifd"] = (ifd, with_stored(ifd, df, {
        "score_ifd": uniform(0.3, 1.3), "score_ifd_variant": pl.Series(["cherry"] * n), "score_ifd_nll_cond": uniform(1, 3),
        "score_ifd_nll_direct": uniform(1, 3), "score_ifd_tokens": pl.Series([10] * n)}))
    nuggets = Nuggets(model_path="none.gguf", anchors=str(eval_set), threshold=0.5)
    gs = uniform()
    out["nuggets"] = (nuggets, with_stored(nuggets, df, {
        "score_nuggets": gs, "score_nuggets_low": gs, "score_nuggets_high": gs, "score_nuggets_anchors": pl.Series([7] * n)}))
    judge = Judge(min_score=3)
    score = pl.Series([None if i % 5 == 0 else float(i % 5) for i in range(n)], dtype=pl.Float64)
    out["judge"] = (judge, with_stored(judge, df, {
        "score_judge": score, "score_judge_rationale": pl.Series([f"reply {i}" for i in range(n)])}))
    fasttext = FastTextClassifier(model_path="none.bin")
    out["fasttext"] = (fasttext, with_stored(fasttext, df, {"score_fasttext": uniform()}))
    lid = LanguageID(model_path="none.bin")
    out["language_id"] = (lid, with_stored(lid, df, {
        "score_language_id_lang": pl.Series(rng.choice(["en", "fr"], n)), "score_language_id_prob": uniform()}))
    return out


FILTERS = ["minhash", "exact", "heuristics", "diversity", "decontaminate", "perplexity", "ifd", "nuggets", "judge",
           "fasttext", "language_id"]


@pytest.mark.parametrize("name", FILTERS)
def test_details_are_explain_on_the_whole_frame_for_the_rejected_rows(name, tmp_path):
    f, df = cases(tmp_path)[name]
    kept, rejected = f.split(df)
    assert len(kept) and len(rejected), "each case keeps some rows and rejects others"
    scored = f.score(df) if not f.owned(df).all() else df
    mask, reason = f.keep(scored)
    assert rejected["id"].to_list() == scored.filter(~mask)["id"].to_list()
    assert rejected["reason"].to_list() == reason.filter(~mask).to_list()
    assert rejected["detail"].to_list() == f.explain(scored).filter(~mask).to_list()


@pytest.mark.parametrize("name", FILTERS)
def test_explain_runs_on_the_rejected_rows_only(name, tmp_path, monkeypatch):
    f, df = cases(tmp_path)[name]
    explained = []
    explain = type(f).explain
    monkeypatch.setattr(type(f), "explain", lambda self, frame: explained.append(len(frame)) or explain(self, frame))
    _, rejected = f.split(df)
    assert explained in ([], [len(rejected)]), f"explain saw {explained} rows for {len(rejected)} rejected of {len(df)}"


def count_clusterings(monkeypatch) -> list[int]:
    calls = []
    real = D.connected_components
    monkeypatch.setattr(D, "connected_components", lambda n, a, b: calls.append(n) or real(n, a, b))
    return calls


def test_minhash_split_clusters_once(monkeypatch):
    df = frame(prompts())
    calls = count_clusterings(monkeypatch)
    kept, rejected = MinHashDedup(field="prompt").split(df)  # scores, then reads its clusters
    assert len(calls) == 1 and len(rejected) == 12
    assert rejected["detail"].str.starts_with("near duplicate of ").all()
    scored = MinHashDedup(field="prompt").score(df)
    calls.clear()
    # Stored scores, another threshold on the same banding: the links are clustered once for
    # both the mask and the details (they were clustered three times: score, decide, explain).
    stricter = MinHashDedup(field="prompt", threshold=0.99, bands=16, rows=8)
    kept, rejected = stricter.split(scored)
    assert len(calls) == 1 and len(rejected) == 0
    calls.clear()
    mask, _ = MinHashDedup(field="prompt").keep(scored)
    assert len(calls) == 1 and int((~mask).sum()) == 12


def test_minhash_split_with_one_id_for_different_clusters():
    """Cluster labels are the kept rows' ids; where the caller gave rows of different clusters one
    id, the labels cannot tell the clusters apart and split() clusters the links again."""
    df = frame(prompts())
    expected = MinHashDedup(field="prompt").split(df)
    same_id = df.with_columns(pl.lit("same").alias("id"))
    kept, rejected = MinHashDedup(field="prompt").split(same_id)
    assert kept["messages"].to_list() == expected[0]["messages"].to_list()
    assert rejected["detail"].to_list() == ["near duplicate of same (cluster of 3)"] * 12
