"""NUGGETS golden score: template, early stopping, anchors, thresholds; fast route == naive route."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import polars as pl
import pytest

from curate.records import make_frame
from curate.text import hashing_embeddings
from filters.nuggets import (
    GoldenScores,
    Nuggets,
    golden_scores,
    golden_scores_naive,
    prepare_anchors,
    prepare_candidates,
    record_parts,
    render,
    representatives,
    wins_needed,
)

# Handmade anchors and candidates (short, so model tests stay quick).
ANCHORS = [
    ("Name the three states of matter.", "", "The three states of matter are solid, liquid and gas."),
    ("What is the capital of Japan?", "", "The capital of Japan is Tokyo."),
    ("Translate to French.", "Good morning", "Bonjour"),
    ("Give the opposite of the word.", "hot", "cold"),
    ("How many days are in a week?", "", "There are seven days in a week."),
    ("Sort the numbers in ascending order.", "3, 1, 2", "1, 2, 3"),
]
GARBAGE = ("qz xv kk", "", "zzq !! ## 0x7f 0x7f vvv plk plk plk ###")


def frame(parts):
    rows = []
    for ins, inp, out in parts:
        user = f"{ins}\n\n{inp}" if inp else ins
        rows.append({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": out}]})
    return make_frame(rows)


class FakeScorer:
    """Deterministic pseudo-random log-probs per (context, target): enough to test the counting,
    the early-stopping rule and the two routes' bookkeeping without a model."""

    def tokenize(self, text):
        return [b % 97 for b in text.encode()]

    def score_ids(self, context, target):
        digest = hashlib.blake2b(repr((list(context), list(target))).encode(), digest_size=8).digest()
        seed = int.from_bytes(digest, "little")
        return -np.random.default_rng(seed).uniform(0, 3, size=len(target))

    def score_ids_after_prefix(self, prefix, pairs, *, parallel=1, stop=None):
        out = []
        for ctx, tgt in pairs:
            out.append(self.score_ids(list(prefix) + list(ctx), tgt))
            if stop is not None and stop(out):
                break
        return out


# ------------------------------------------------------------------------------------------------
# Without a model


def test_template_is_the_repos():
    assert render("Do X.", "", " Y ") == "Instruction:\nDo X.\nResponse:\nY"
    assert render(" Do X.", "the input ", "Y") == "Instruction:\nDo X.\nInput:\nthe input\nResponse:\nY"


def test_record_parts_put_the_prompt_in_the_instruction():
    turns = [("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello")]
    df = make_frame([{"messages": [{"role": r, "content": c} for r, c in turns]}])
    assert record_parts(df) == [("Be brief.\nHi", "", "Hello")]


def test_wins_needed_matches_the_strict_comparison():
    assert wins_needed(0.5, 20) == 11
    assert wins_needed(0.7, 20) == 15  # 14/20 == 0.7 is not > 0.7
    assert wins_needed(0.0, 5) == 1
    assert wins_needed(1.0, 5) == 6  # nothing is > 1
    for k in (1, 7, 20, 100):
        for t in np.linspace(0, 1, 41):
            w = wins_needed(float(t), k)
            assert (w > k or w / k > t) and (w == 0 or (w - 1) / k <= t)


def test_fake_routes_agree_and_golden_score_has_granularity_one_over_k():
    s = FakeScorer()
    anchors = prepare_anchors(s, ANCHORS)
    prefixes = prepare_candidates(s, ANCHORS + [GARBAGE])
    fast, naive = golden_scores(s, prefixes, anchors), golden_scores_naive(s, prefixes, anchors)
    np.testing.assert_array_equal(fast.one_shot, naive.one_shot)
    np.testing.assert_array_equal(fast.wins, naive.wins)
    k = len(anchors)
    assert ((fast.score >= 0) & (fast.score <= 1)).all()
    np.testing.assert_allclose(fast.score * k, np.round(fast.score * k))
    assert (fast.low == fast.high).all() and (fast.evaluated == k).all()


def test_early_stop_never_changes_the_decision():
    s = FakeScorer()
    rng = np.random.default_rng(1)
    # Varied lengths: early stopping scores the shortest anchors first.
    anchors = [(list(rng.integers(0, 97, rng.integers(1, 9))), list(rng.integers(0, 97, rng.integers(1, 9))))
               for _ in range(9)]
    prefixes = [list(rng.integers(0, 97, 8)) for _ in range(60)]
    exact = golden_scores(s, prefixes, anchors)
    saved = 0
    for t in np.linspace(0, 1, 21):
        early = golden_scores(s, prefixes, anchors, stop_at=float(t))
        np.testing.assert_array_equal(early.low > t, exact.score > t)
        np.testing.assert_array_equal(early.high > t, exact.score > t)  # settled on the same side
        assert ((early.low <= exact.score) & (exact.score <= early.high)).all()
        assert ((early.score > t) == (exact.score > t)).all()
        saved += int((early.evaluated < len(anchors)).sum())
    assert saved > 0


def test_k_means_representatives_are_distinct_rows_one_per_cluster():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(5, 8)) * 20
    x = np.concatenate([c + rng.normal(size=(30, 8)) for c in centers])
    rows = representatives(x, 5, seed=0)
    assert len(rows) == len(set(rows)) == 5
    assert sorted(r // 30 for r in rows) == [0, 1, 2, 3, 4]
    assert representatives(x, 5, seed=0) == rows
    eligible = np.zeros(len(x), dtype=bool)
    eligible[::2] = True
    assert all(r % 2 == 0 for r in representatives(x, 5, seed=0, eligible=eligible))
    assert representatives(x[:4], 10) == [0, 1, 2, 3]  # fewer rows than K: all of them
    # duplicated points: still K distinct rows
    dup = np.repeat(x[:3], 10, axis=0)
    assert len(set(representatives(dup, 6))) == 6


def test_hashing_vectors_are_unit_and_deterministic():
    v = hashing_embeddings(["the cat sat", "the cat sat", "quantum flux capacitor", ""])
    np.testing.assert_allclose(np.linalg.norm(v[:3], axis=1), 1, rtol=1e-5)
    np.testing.assert_array_equal(v[0], v[1])
    assert float(v[0] @ v[2]) < 0.5 and not v[3].any()


def stored(scores, low=None, high=None, n=None, k=10):
    """Made-up golden scores, stamped as a Nuggets filter's own (so keep() accepts them)."""
    low = scores if low is None else low
    high = scores if high is None else high
    return Nuggets().stamp(pl.DataFrame({
        "score_nuggets": scores, "score_nuggets_low": low, "score_nuggets_high": high,
        "score_nuggets_anchors": n or [k] * len(scores),
    }))


def test_rethreshold_without_rescoring(monkeypatch):
    monkeypatch.setattr(Nuggets, "load_scorer", lambda self: pytest.fail("decide must not score"))
    df = stored([0.1, 0.5, 0.6, 0.9])
    assert Nuggets(threshold=0.5).keep(df)[0].to_list() == [False, False, True, True]
    assert Nuggets(threshold=0.8).keep(df)[0].to_list() == [False, False, False, True]
    mask, reason = Nuggets(threshold=0.0).keep(df)
    assert mask.to_list() == [True] * 4 and reason.null_count() == 4
    mask, reason = Nuggets(fraction=0.5).keep(df)
    assert mask.to_list() == [False, False, True, True]
    assert reason.to_list()[:2] == ["below the top fraction of golden scores"] * 2
    assert Nuggets(fraction=0.3).keep(df)[0].sum() == 2  # ceil(0.3 * 4)
    with pytest.raises(ValueError, match="score\\(\\) first"):
        Nuggets().keep(df.drop("score_nuggets_low"))


def test_early_stopped_rows_rethreshold_only_when_settled():
    # Row 0: GS in [0.2, 0.4] (dropped at 0.5); row 1: GS in [0.6, 0.8] (kept at 0.5).
    df = stored([0.2 / 0.7, 0.6 / 0.8], low=[0.2, 0.6], high=[0.4, 0.8], n=[7, 8])
    assert Nuggets(threshold=0.5).keep(df)[0].to_list() == [False, True]
    assert Nuggets(threshold=0.1).keep(df)[0].to_list() == [True, True]
    with pytest.raises(ValueError, match="either side"):
        Nuggets(threshold=0.3).keep(df)
    with pytest.raises(ValueError, match="no exact GS"):
        Nuggets(fraction=0.5).keep(df)
    assert "early stop after 7 anchors" in Nuggets().explain(df)[0]


def test_settings_are_checked():
    with pytest.raises(ValueError, match="not both"):
        Nuggets(threshold=0.6, fraction=0.2)
    with pytest.raises(ValueError, match="early_stop"):
        Nuggets(threshold=None, fraction=0.2, early_stop=True)
    assert Nuggets(fraction=0.2).fraction == 0.2  # the default threshold steps aside


# ------------------------------------------------------------------------------------------------
# With the embedded model


@pytest.fixture(scope="module")
def scorer():
    pytest.importorskip("llama_cpp")
    from curate.llm.scorers import get_scorer

    s = get_scorer("llama_cpp")
    # One thread: on a busy machine llama.cpp's threads wait on each other at every op barrier.
    threads = s.llm.context_params.n_threads
    s.set_threads(1)
    yield s
    s.set_threads(threads)


@pytest.mark.slow
def test_fast_route_equals_scoring_from_scratch(scorer):
    prefix = prepare_candidates(scorer, [ANCHORS[1]])[0]
    pairs = prepare_anchors(scorer, ANCHORS[:3]) + [([], scorer.tokenize("Hello there, world."))]
    ref = [scorer.score_ids(prefix + q, a) for q, a in pairs]
    # One sequence at a time gives the same bits on this build; parallel sequences change the
    # ubatch shapes and so llama.cpp's kernel tiling (seen: 6e-4 nats on one token).
    for parallel, atol in ((1, 1e-5), (3, 3e-3)):
        got = scorer.score_ids_after_prefix(prefix, pairs, parallel=parallel)
        for r, g in zip(ref, got):
            assert len(r) == len(g)
            np.testing.assert_allclose(g, r, atol=atol)
    zero = scorer.score_ids_after_prefix([], pairs)
    for (q, a), z in zip(pairs, zero):
        np.testing.assert_allclose(z, scorer.score_ids(q, a), atol=1e-4)
    # string API unchanged: score == score_ids on the pieces
    np.testing.assert_array_equal(scorer.score("Q: hi\nA:", " hello"),
                                  scorer.score_ids(scorer.tokenize("Q: hi\nA:"), scorer.tokenize(" hello")))


@pytest.mark.slow
def test_copy_of_the_anchor_wins_and_garbage_does_not(scorer):
    anchors = prepare_anchors(scorer, ANCHORS)
    prefixes = prepare_candidates(scorer, ANCHORS + [GARBAGE])
    res = golden_scores(scorer, prefixes, anchors)
    naive = golden_scores_naive(scorer, [prefixes[0], prefixes[-1]], anchors)
    np.testing.assert_allclose(res.one_shot[[0, -1]], naive.one_shot, atol=1e-3)
    np.testing.assert_array_equal(res.wins[[0, -1]], naive.wins)
    # The demonstration that *is* anchor k's answer makes that answer more likely.
    k = len(ANCHORS)
    assert all(res.one_shot[i, i] > res.zero_shot[i] for i in range(k))
    garbage = res.score[k]
    assert garbage <= 0.5
    assert garbage < res.score[:k].mean()


@pytest.mark.slow
def test_filter_end_to_end_with_an_anchor_file(scorer, tmp_path):
    path = tmp_path / "anchors.jsonl"
    rows = [{"instruction": i, "input": n, "output": o} for i, n, o in ANCHORS[:4]]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    df = frame(ANCHORS[4:] + [GARBAGE])
    exact = Nuggets(anchors=str(path), threshold=0.5).score(df)
    s = exact["score_nuggets"].to_numpy()
    assert ((s >= 0) & (s <= 1)).all() and np.allclose(s * 4, np.round(s * 4))
    assert (exact["score_nuggets_anchors"] == 4).all()
    for t in (0.25, 0.5):
        early = Nuggets(anchors=str(path), threshold=t, early_stop=True)
        kept_early = early.keep(early.score(df))[0]
        assert kept_early.to_list() == Nuggets(anchors=str(path), threshold=t).keep(exact)[0].to_list()


@pytest.mark.slow
def test_anchors_from_the_pool_are_distinct_rows(scorer):
    parts = ANCHORS + [GARBAGE, ("Say hi.", "", "Hi!"), ("Count to three.", "", "1, 2, 3")]
    df = frame(parts)
    for embedding in ("model", "hashing"):
        chosen = Nuggets(num_anchors=4, embedding=embedding).anchor_parts(df, scorer)
        pool = record_parts(df)
        assert len(chosen) == 4 and len(set(chosen)) == 4 and all(c in pool for c in chosen)
    e = scorer.embed(["hello", "hello", "a different text"])
    assert e.shape == (3, scorer.llm.n_embd())
    assert np.array_equal(e[0], e[1]) and not np.array_equal(e[0], e[2])


def test_golden_scores_bounds_bracket():
    g = GoldenScores(np.array([2, 5]), np.array([4, 10]), 10, np.zeros((2, 10)), np.zeros(10))
    np.testing.assert_allclose(g.low, [0.2, 0.5])
    np.testing.assert_allclose(g.high, [0.8, 0.5])
    np.testing.assert_allclose(g.score, [0.5, 0.5])
