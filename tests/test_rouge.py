"""Tests of synth.rouge: ROUGE-L values and the Self-Instruct novelty filter (fast == naive)."""

from __future__ import annotations

import json
import random
from fractions import Fraction

import pytest

from synth.rouge import (
    NoveltyFilter,
    _rouge_dp,
    lcs_length_dp,
    lcs_length,
    novel_mask,
    novel_mask_naive,
    rouge_l,
    rouge_l_tokens,
    tokenize,
)
from tests.conftest import shared


def f_exact(lcs, la, lb):
    return float(Fraction(2 * lcs, la + lb))


# (a, b, LCS, |a|, |b|) counted by hand
PAIRS = [
    ("the cat sat on the mat", "the cat sat on the mat", 6, 6, 6),
    ("the cat sat on the mat", "the cat on the mat", 5, 6, 5),
    ("the cat sat on the mat", "on the mat the cat sat", 3, 6, 6),
    ("Write a poem about the sea.", "Write a short poem about the ocean!", 5, 6, 7),
    ("Give me 3 examples", "give ME three examples", 3, 4, 4),  # case-insensitive, digits are tokens
    ("a b c d e", "e d c b a", 1, 5, 5),
    ("x y", "z w", 0, 2, 2),
    ("It's well-known", "it s well known", 4, 4, 4),  # punctuation separates
    ("the the the", "the", 1, 3, 1),
    ("a b a b a b", "b a b a", 4, 6, 4),
]


@pytest.mark.parametrize("a,b,lcs,la,lb", PAIRS)
def test_rouge_l_by_hand(a, b, lcs, la, lb):
    ta, tb = tokenize(a), tokenize(b)
    assert (len(ta), len(tb)) == (la, lb)
    assert lcs_length(ta, tb) == lcs
    assert rouge_l(a, b) == pytest.approx(f_exact(lcs, la, lb), abs=1e-15)
    assert rouge_l(a, b) == rouge_l(b, a)  # the float formula is symmetric too


def test_rouge_l_edge_cases():
    assert rouge_l("", "anything") == 0.0
    assert rouge_l("!!!", "???") == 0.0  # no tokens
    assert tokenize("Café déjà-vu 2024") == ["caf", "d", "j", "vu", "2024"]  # non-ASCII letters split
    assert tokenize("snake_case CamelCase") == ["snake", "case", "camelcase"]
    # F = 2PR/(P+R) in floats, as rouge_score computes it; exactly 0.7 here
    a, b = "w1 w2 w3 w4 w5 w6 w7 a1 a2 a3", "w1 w2 w3 w4 w5 w6 w7 b1 b2 b3"
    assert rouge_l(a, b) == 0.7


def test_lcs_bit_parallel_matches_dp():
    rng = random.Random(0)
    for i in range(300):
        k = rng.randint(1, 6)
        a = [rng.randrange(k) for _ in range(rng.randint(0, 90))]  # > 64 symbols: big ints
        b = [rng.randrange(k) for _ in range(rng.randint(0, 90))]
        lcs = lcs_length(a, b)
        assert lcs_length_dp(a, b) == lcs
        if a and b and i < 50:  # the module's DP reference scores the same
            assert _rouge_dp(a, b) == pytest.approx(f_exact(lcs, len(a), len(b)), abs=1e-15)


# ---- novelty filter: identical decisions -------------------------------------------------------

WORDS = ["a", "b", "c", "d", "the", "of", "to", "x", "y", "z"]


def naive_bitparallel(cands, pool, threshold):
    """The naive all-pairs loop with the bit-parallel LCS (checked against the DP above): the same
    decisions as novel_mask_naive, fast enough for fuzzing the pruning logic."""
    return novel_mask_naive(cands, pool, threshold, rouge=rouge_l_tokens)


def _random_text(rng):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 14)))


@pytest.mark.parametrize("threshold", [0.7, 0.5, 0.9, 1.0, 0.3, 0.05, 0.0, 1.2, 2 / 3])
def test_novel_mask_equals_naive_small_vocab(threshold):
    """A 10-word vocabulary makes many pairs land near every threshold (ties included)."""
    rng = random.Random(int(threshold * 1000))
    for trial in range(25):
        pool = [_random_text(rng) for _ in range(rng.randint(0, 12))]
        cands = [_random_text(rng) for _ in range(40)]
        naive = novel_mask_naive if trial < 3 else naive_bitparallel
        assert novel_mask(cands, pool, threshold) == naive(cands, pool, threshold)


def _perturb(text, rng):
    words = text.split()
    op = rng.random()
    if op < 0.3 and len(words) > 2:
        del words[rng.randrange(len(words))]
    elif op < 0.6:
        words.insert(rng.randrange(len(words) + 1), rng.choice(["very", "the", "new", "please"]))
    elif len(words) > 1:
        i = rng.randrange(len(words) - 1)
        words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


def _seed_instructions():
    path = shared("seed_tasks", "selfinstruct_seed_tasks_175.jsonl")
    return [json.loads(line)["instruction"] for line in path.open(encoding="utf-8") if line.strip()]


@pytest.mark.parametrize("threshold", [0.7, 0.5, 0.85])
def test_novel_mask_equals_naive_on_real_instructions(threshold):
    seeds = _seed_instructions()
    rng = random.Random(1)
    cands = []
    for _ in range(300):  # real instructions and near-duplicates of them (chains of edits too)
        base = rng.choice(seeds + cands) if cands else rng.choice(seeds)
        cands.append(_perturb(base, rng) if rng.random() < 0.6 else base)
    pool = seeds[:40]
    fast = novel_mask(cands, pool, threshold)
    if threshold == 0.7:  # the DP reference once (slow); the bit-parallel one otherwise
        assert fast[:100] == novel_mask_naive(cands[:100], pool, threshold)
    assert fast == naive_bitparallel(cands, pool, threshold)
    assert 0 < sum(fast) < len(fast)  # both kept and dropped ones


def test_incremental_filter_equals_naive():
    rng = random.Random(2)
    nf = NoveltyFilter(threshold=0.7)
    naive_pool: list[str] = []
    for _ in range(25):
        batch = [_random_text(rng) for _ in range(rng.randint(0, 25))]
        if rng.random() < 0.2:
            nf.add(batch[:3])  # seeds join unconditionally
            naive_pool += batch[:3]
            batch = batch[3:]
        expected = naive_bitparallel(batch, naive_pool, 0.7)
        naive_pool += [b for b, k in zip(batch, expected) if k]
        assert nf.filter(batch) == expected
        assert len(nf) == len(naive_pool)


def test_threshold_semantics_and_blockers():
    a, b = "w1 w2 w3 w4 w5 w6 w7 a1 a2 a3", "w1 w2 w3 w4 w5 w6 w7 b1 b2 b3"  # F == 0.7 exactly
    assert novel_mask([b], [a], 0.7) == [False]  # >= threshold is dropped (the rule)
    assert novel_mask([b], [a], 0.7 + 1e-12) == [True]  # Self-Instruct's "> 0.7"
    nf = NoveltyFilter(["write a poem about the sea"], 0.7)
    keep = nf.filter(["write a poem about the sea", "", "", "explain tides", "explain the tides"])
    assert keep == [False, True, True, True, False]  # empty texts score 0: kept
    assert nf.last_matches[0] == (0, 1.0)
    assert nf.last_matches[4][0] == 3  # blocked by the kept "explain tides" (index 3 in the pool)
    assert nf.is_novel("a haiku about mountains") and not nf.is_novel("Explain tides!")
    assert nf.pool[-1] == "explain tides"


@pytest.mark.slow  # importing rouge_score pulls in nltk (seconds)
def test_scores_match_rouge_score_when_installed():
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    seeds = _seed_instructions()
    rng = random.Random(3)
    pairs = [(rng.choice(seeds), rng.choice(seeds)) for _ in range(300)]
    pairs += [(s, _perturb(s, rng)) for s in seeds]
    for a, b in pairs:
        assert rouge_l(a, b) == scorer.score(a, b)["rougeL"].fmeasure
