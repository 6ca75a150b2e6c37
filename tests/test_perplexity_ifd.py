"""Perplexity and IFD filters on handmade rows whose right answer is known.

Model-free tests feed stored score columns to decide(); the slow ones score with the embedded model.
"""

import math
import random
import string

import polars as pl
import pytest

from curate.records import make_frame
from filters.ifd import IFD, ifd_value, templates
from filters.perplexity import Perplexity, ccnet_buckets, fit_target


def row(q, a):
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


def with_ppl(values, col="score_perplexity_response"):
    """Made-up perplexities, stamped as the default Perplexity filter's own (so keep() accepts them)."""
    df = make_frame([row(f"q{i}", f"a{i}") for i in range(len(values))])
    other = "score_perplexity_text" if col == "score_perplexity_response" else "score_perplexity_response"
    return Perplexity().stamp(df.with_columns(
        pl.Series(col, values, dtype=pl.Float64), pl.Series(other, values, dtype=pl.Float64),
        pl.lit(10, dtype=pl.Int64).alias("score_perplexity_response_tokens"),
        pl.lit(12, dtype=pl.Int64).alias("score_perplexity_text_tokens"),
    ))


# model-free: decisions from stored scores ------------------------------------------------------
def test_percentile_thresholds_keep_the_right_count():
    df = with_ppl([float(v) for v in range(1, 101)])
    mask, reason = Perplexity(max_percentile=80).keep(df)
    assert mask.sum() == 80 and set(reason.drop_nulls()) == {"perplexity too high"}
    mask, reason = Perplexity(min_percentile=10, max_percentile=90).keep(df)
    assert mask.sum() == 80
    assert reason.value_counts().sort("reason").to_dicts() == [
        {"reason": None, "count": 80}, {"reason": "perplexity too high", "count": 10}, {"reason": "perplexity too low", "count": 10}]
    assert Perplexity(max_percentile=80).is_global and not Perplexity(max=50).is_global


def test_absolute_thresholds_and_the_tighter_bound_wins():
    df = with_ppl([float(v) for v in range(1, 101)])
    assert Perplexity(max=30).keep(df)[0].sum() == 30
    assert Perplexity(min=5, max=30).keep(df)[0].sum() == 26
    assert Perplexity(max=30, max_percentile=50).keep(df)[0].sum() == 30  # p50 = 50.5, absolute 30 is tighter
    assert Perplexity().keep(df)[0].all()  # no threshold: scores only, nothing dropped


def test_rethreshold_never_rescores(monkeypatch):
    import filters.perplexity as mod

    monkeypatch.setattr(mod, "get_scorer", lambda *a, **k: pytest.fail("rescored"))
    df = with_ppl([1.0, 5.0, None, 50.0, 500.0])
    kept, rejected = Perplexity(max=100).split(df)
    assert kept.height == 3 and rejected["reason"].to_list() == ["no perplexity score", "perplexity too high"]
    assert rejected["filter"].unique().to_list() == ["perplexity"] and rejected["detail"][1].startswith("perplexity 500")
    kept, _ = Perplexity(max=10).split(df)
    assert kept.height == 2


def test_threshold_on_text_column():
    df = with_ppl([1.0, 2.0, 3.0, 4.0], col="score_perplexity_text").with_columns(
        pl.Series("score_perplexity_response", [9.0, 9.0, 9.0, 9.0]))  # a score column edited: still stamped
    assert Perplexity(on="text", max=2.5).keep(df)[0].to_list() == [True, True, False, False]


def test_ccnet_buckets():
    values = pl.Series([float(v) for v in range(10)] + [None])
    b = ccnet_buckets(values)
    assert b.to_list() == ["head"] * 3 + ["middle"] * 3 + ["tail"] * 4 + [None]  # cut at p30 and p60
    report = Perplexity().report(with_ppl([float(v) for v in range(10)]))
    assert report["response"]["buckets"] == {"head": 3, "middle": 3, "tail": 4}


def with_ifd(values, variant="cherry"):
    """Made-up IFD scores, stamped as those of an IFD filter of `variant`."""
    df = make_frame([row(f"q{i}", f"a{i}") for i in range(len(values))])
    return IFD(variant=variant).stamp(df.with_columns(
        pl.Series("score_ifd", values, dtype=pl.Float64), pl.lit(variant).alias("score_ifd_variant"),
        pl.lit(1.0).alias("score_ifd_nll_cond"), pl.lit(1.0).alias("score_ifd_nll_direct"),
        pl.lit(5, dtype=pl.Int64).alias("score_ifd_tokens"),
    ))


def test_ifd_drops_ge_1_then_keeps_top_fraction():
    values = [0.5, 0.9, 1.0, 1.3, None, 0.7, 0.95, 0.2, 0.8, 0.6]
    df = with_ifd(values)
    mask, reason = IFD(fraction=0.3).keep(df)  # 3 of 10 rows: the highest IFD below 1
    assert [v for v, m in zip(values, mask) if m] == [0.9, 0.95, 0.8]
    assert reason.to_list() == ["below top fraction", None, "ifd >= 1", "ifd >= 1", "no ifd score",
                                "below top fraction", None, "below top fraction", None, "below top fraction"]
    assert IFD(top_k=2).keep(df)[0].sum() == 2
    assert IFD().keep(df)[0].sum() == 7  # no fraction: every row with IFD < 1
    assert IFD(fraction=1.0).keep(df)[0].sum() == 7


def test_ifd_refuses_scores_of_the_other_variant():
    with pytest.raises(ValueError, match="did not make"):  # the variant is a scoring setting
        IFD(variant="superfiltering").keep(with_ifd([0.5, 0.7], variant="cherry"))
    with pytest.raises(ValueError, match="variant"):  # and the stored variant is checked as well
        IFD(variant="superfiltering").keep(IFD(variant="superfiltering").stamp(with_ifd([0.5, 0.7], variant="cherry")))
    with pytest.raises(ValueError):
        IFD(fraction=0.1, top_k=3)


def test_ifd_formulas_and_templates():
    assert ifd_value("cherry", 1.0, 2.0) == 0.5  # loss ratio
    assert ifd_value("superfiltering", 1.0, 2.0) == pytest.approx(math.exp(-1.0))  # PPL ratio
    assert ifd_value("cherry", None, 2.0) is None
    cond, direct = templates("cherry", "Add 2 and 2.")
    assert cond.endswith("### Instruction:\nAdd 2 and 2.\n\n### Response:") and direct == "### Response:"
    assert templates("superfiltering", "Add 2 and 2.") == ("Add 2 and 2.\n", "")


def test_fit_target_cuts_at_the_budget():
    class WordTok:  # one token per word
        def tokenize(self, text):
            return text.split()

    text = "one two three four five six"
    assert fit_target(WordTok(), "a b", text, 5) == ("one two three ", True)
    assert fit_target(WordTok(), "a b", text, 50) == (text, False)
    assert fit_target(WordTok(), "a b c d e", text, 5) == ("", True)


# with the embedded model ------------------------------------------------------------------------
FLUENT = "The cat sat on the warm mat because the afternoon sun was shining through the window."


def _shuffled(text, seed=0):
    words = text.split()
    random.Random(seed).shuffle(words)
    return " ".join(words)


def _random_string(seed):
    rs = random.Random(seed)
    return " ".join("".join(rs.choice(string.ascii_lowercase) for _ in range(5)) for _ in range(6))


@pytest.fixture(scope="module")
def embedded():
    pytest.importorskip("llama_cpp", reason="needs the embedded extra: pip install -e '.[embedded]'")


@pytest.mark.slow
@pytest.mark.parametrize("template", ["chat", "plain"])
def test_shuffled_words_have_higher_perplexity(embedded, template):
    df = make_frame([row("Describe the cat.", FLUENT), row("Describe the cat.", _shuffled(FLUENT))])
    scored = Perplexity(template=template).score(df)
    resp, text = scored["score_perplexity_response"].to_list(), scored["score_perplexity_text"].to_list()
    assert resp[1] > 3 * resp[0] and text[1] > 3 * text[0]
    assert scored["score_perplexity_response_tokens"][0] == scored["score_perplexity_response_tokens"][1] > 10


@pytest.mark.slow
def test_ifd_repeat_instruction_is_far_below_one_unrelated_is_near_one(embedded):
    s1, s2 = _random_string(1), _random_string(2)
    df = make_frame([
        row(f"Repeat exactly: {s1}", s1), row("Name a fruit.", s1),
        row(f"Repeat exactly: {s2}", s2), row("What is the capital of France?", s2),
    ])
    cherry = IFD(variant="cherry").score(df)
    sf = IFD(variant="superfiltering").score(df)
    c, s = cherry["score_ifd"].to_list(), sf["score_ifd"].to_list()
    assert c[0] < 0.3 and c[2] < 0.3 and s[0] < 0.1 and s[2] < 0.1  # the instruction gives the answer away
    assert 0.8 < c[1] < 1.3 and 0.8 < c[3] < 1.3  # it does not help: loss ratio ~1
    assert s[1] > 0.8 and s[3] > 0.8  # PPL ratio = exp(difference): ~1 or above
    assert set(cherry["score_ifd_variant"]) == {"cherry"} and set(sf["score_ifd_variant"]) == {"superfiltering"}
    # the two passes score the same answer tokens (cond) and one fewer without context (superfiltering)
    kept, rejected = IFD(variant="cherry", top_k=1).split(cherry)
    assert kept.height == 1 and set(rejected["reason"]) <= {"ifd >= 1", "below top fraction"}


@pytest.mark.slow
def test_works_on_a_datasets_dataset(embedded):
    datasets = pytest.importorskip("datasets")
    df = make_frame([row("Describe the cat.", FLUENT), row("Describe the cat.", _shuffled(FLUENT))])
    ds = datasets.Dataset.from_polars(df)
    scored = Perplexity().score(ds)
    assert isinstance(scored, datasets.Dataset) and "score_perplexity_response" in scored.column_names
    kept, rejected = Perplexity(max_percentile=50).split(scored)
    assert isinstance(kept, datasets.Dataset) and len(kept) == 1 and rejected["reason"] == ["perplexity too high"]
    ifd_scored = IFD().score(ds)
    assert isinstance(ifd_scored, datasets.Dataset) and ifd_scored["score_ifd_variant"] == ["cherry", "cherry"]


@pytest.mark.slow
def test_long_response_is_cut_to_max_length(embedded):
    long = " ".join(["The cat sat on the mat."] * 200)
    scored = Perplexity(max_length=64, template="plain").score(make_frame([row("Describe the cat.", long)]))
    assert 40 < scored["score_perplexity_response_tokens"][0] <= 64
    assert scored["score_perplexity_text_tokens"][0] <= 63
