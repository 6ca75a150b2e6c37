"""Tests of filters.dedup: exact and MinHash near-duplicate removal."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from curate import text as T
from curate.records import make_frame
from filters import minhash as D
from filters.dedup import ExactDedup, MinHashDedup
from curate.steps import STATE

GPTEACHER = Path("/work/shared/data/dedup_gpteacher_toolformer/toolformer_labeled.jsonl")

# 60 words: a one-word edit changes at most 5 of its 56 word 5-grams (J = 51/61 = 0.84).
LONG = (
    "the quick brown fox jumps over the lazy dog while the farmer watches from the old wooden porch "
    "and drinks a cup of hot coffee before starting the long day of work in the fields near the river "
    "bank where the tall grass grows and the children play with a red kite until the sun goes down "
    "behind the hills"
)
LONG_EDITED = LONG.replace("coffee", "tea")
OTHER = (
    "a completely different prompt about writing python functions that parse json files and report "
    "errors with line numbers so that users can fix their configuration without reading a traceback"
)


def frame(prompts, responses=None):
    responses = responses or ["ok"] * len(prompts)
    return make_frame(
        [
            {"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": r}]}
            for p, r in zip(prompts, responses)
        ]
    )


def kept_prompts(df):
    return [m[0]["content"] for m in df["messages"].to_list()]


# --- tokenizer and shingles ------------------------------------------------------------------

TRICKY = [
    "",
    "   ",
    "Hello,  World!",
    "héllo WORLD ÉCOLE",
    "1685–1753 “quoted” ﬁne don’t",
    "a\u00a0b",
    "Ａｂｃ！ｄ",
    "日本語のテキスト。次の文",
    "e\u0301cole",
    "x" * 30 + " " + "y" * 17 + " " + "z" * 8 + " " + "w" * 9,
    "İstanbul ǅ",
    "tab\tsep\nline\r\nend",
    "emoji😀 ok",
    "snake_case and CamelCase 42",
    "ends with a word",
    "starts",
]


def _reference_hashes(text, normalize):
    return T.hash_words(T.words(text, normalize))


@pytest.mark.parametrize("normalize", [True, False])
def test_vectorised_tokenizer_matches_reference(normalize):
    # Random order, so that empty documents and words that touch across documents get exercised.
    rng = random.Random(0)
    texts = [rng.choice(TRICKY) for _ in range(400)]
    data, offs = T.arrow_strings(pl.Series(texts))
    hashes, word_offs = T.tokenize(data, offs, normalize)
    for i, text in enumerate(texts):
        got = hashes[word_offs[i] : word_offs[i + 1]]
        assert np.array_equal(got, _reference_hashes(text, normalize)), text


def test_words_normalisation():
    assert T.words("Hello,  World!") == ["hello", "world"]
    assert T.words("1685–1753 “quoted” ﬁne") == ["1685", "1753", "quoted", "fine"]
    assert T.words("Ａｂｃ！ｄ") == ["abc", "d"]  # NFKC folds full-width forms
    assert T.words("Hello,  World!", normalize=False) == ["Hello,", "World!"]
    assert T.shingles("a b", ngram=5) == {"a b"}  # shorter than n words: the whole text is one shingle
    assert T.shingles("", ngram=5) == {""}


def test_signatures_do_not_depend_on_batching_or_threads(monkeypatch):
    rng = random.Random(1)
    pool = TRICKY + [LONG, OTHER]
    texts = [" ".join(rng.choice(pool) for _ in range(rng.randint(0, 4))) for _ in range(300)]
    ref = D.minhash_signatures(texts, n_jobs=1)
    monkeypatch.setattr(T, "BATCH_BYTES", 1000)
    assert np.array_equal(D.minhash_signatures(texts, n_jobs=2), ref)
    assert np.array_equal(D.minhash_signatures(pl.Series(texts), n_jobs=1), ref)
    assert not np.array_equal(D.minhash_signatures(texts, seed=2), ref)


# --- the MinHash estimate ----------------------------------------------------------------------


def _pair(n_common, n_only):
    """Two texts whose 1-gram shingle sets share n_common words and have n_only own words each."""
    common = [f"c{i}" for i in range(n_common)]
    own_a, own_b = [f"a{i}" for i in range(n_only)], [f"b{i}" for i in range(n_only)]
    return " ".join(common + own_a), " ".join(common + own_b)


@pytest.mark.parametrize("n_common,n_only", [(400, 50), (300, 100), (100, 100), (200, 300)])
def test_estimated_jaccard_close_to_exact(n_common, n_only):
    a, b = _pair(n_common, n_only)
    exact = n_common / (n_common + 2 * n_only)
    sig = D.minhash_signatures([a, b], num_perm=256, ngram=1)
    est = float(D.estimate_jaccard(sig, [0], [1])[0])
    # Sets larger than num_perm: std of the estimate is sqrt(J(1-J)/256) <= 0.031; allow 4 sigma.
    assert abs(est - exact) <= 4 * np.sqrt(exact * (1 - exact) / 256) + 0.01, (est, exact)


@pytest.mark.parametrize("n_common,n_only", [(8, 1), (20, 20)])
def test_estimate_unbiased_for_short_texts_with_densification(n_common, n_only):
    # 10-60 words into 128 bins leave most bins empty: the densified estimate must still average J.
    # Measured over 300 seeds: std of one estimate 0.046 / 0.045, so the mean of 100 has sem ~0.005.
    a, b = _pair(n_common, n_only)
    exact = n_common / (n_common + 2 * n_only)
    sigs = [D.minhash_signatures([a, b], ngram=1, seed=s) for s in range(100)]
    ests = [float(D.estimate_jaccard(sig, [0], [1])[0]) for sig in sigs]
    assert abs(np.mean(ests) - exact) < 0.02, np.mean(ests)


def test_lsh_parameters_favour_recall():
    assert D.lsh_params(0.8, 128) == (16, 8)
    assert D.collision_probability(0.84, 16, 8) > 0.98
    # The 0.5/0.5 weighting datasketch uses picks a banding that misses many pairs at 0.84.
    b, r = D.lsh_params(0.8, 128, fn_weight=0.5)
    assert D.collision_probability(0.84, b, r) < 0.7


def test_connected_components_label_is_first_member():
    labels = D.connected_components(7, np.array([6, 3, 2, 5]), np.array([5, 2, 1, 4]))
    assert labels.tolist() == [0, 1, 1, 1, 4, 4, 4]
    chain = np.arange(1, 1000)
    assert (D.connected_components(1000, chain, chain - 1) == 0).all()


def test_cluster_function_api():
    texts = [OTHER, LONG, "short one", LONG_EDITED, LONG, "short one", ""]
    labels = D.cluster(texts)
    assert labels.tolist() == [0, 1, 2, 1, 1, 2, 6]


# --- ExactDedup --------------------------------------------------------------------------------


def test_exact_dedup_normalised():
    df = frame(["Hello   World!", "hello world", "Something else", "HELLO, world", "hello world."])
    kept, rejected = ExactDedup(field="prompt").split(df)
    assert kept_prompts(kept) == ["Hello   World!", "Something else"]
    first_id = df["id"][0]
    assert rejected["reason"].to_list() == ["exact duplicate"] * 3
    assert rejected["detail"].to_list() == [f"duplicate of {first_id} (group of 4)"] * 3
    assert set(rejected["filter"]) == {"exact_dedup"}
    scored = ExactDedup(field="prompt").score(df)
    assert scored["score_exact_dedup_group_size"].to_list() == [4, 4, 1, 4, 4]
    assert scored["score_exact_dedup_dup_of"].to_list() == [None, first_id, None, first_id, first_id]


def test_exact_dedup_raw_and_field():
    df = frame(["Hello World", "hello world", "Hello World"], ["a", "b", "c"])
    kept, _ = ExactDedup(field="prompt", normalize=False).split(df)
    assert kept_prompts(kept) == ["Hello World", "hello world"]
    kept, _ = ExactDedup(field="text").split(df)  # prompt + response: all different
    assert len(kept) == 3


def test_exact_dedup_empty_texts():
    df = frame(["", "x", "", "  "])
    kept, rejected = ExactDedup(field="prompt").split(df)
    assert kept_prompts(kept) == ["", "x"]
    assert len(rejected) == 2


# --- MinHashDedup ------------------------------------------------------------------------------


def test_minhash_near_duplicates():
    df = frame([OTHER, LONG, LONG_EDITED, LONG.upper(), "Short prompt.", "short prompt", "another short one"])
    kept, rejected = MinHashDedup(field="prompt").split(df)
    assert kept_prompts(kept) == [OTHER, LONG, "Short prompt.", "another short one"]
    long_id = df["id"][1]
    assert rejected["reason"].to_list() == ["near duplicate"] * 3
    assert rejected["detail"][0] == f"near duplicate of {long_id} (cluster of 3)"
    assert set(rejected["filter"]) == {"minhash_dedup"}


def test_minhash_survivor_is_first_in_input_order():
    for order in ([LONG, LONG_EDITED], [LONG_EDITED, LONG]):
        kept, _ = MinHashDedup(field="prompt").split(frame([OTHER, *order]))
        assert kept_prompts(kept) == [OTHER, order[0]]


def test_minhash_score_columns():
    df = frame([LONG, OTHER, LONG_EDITED])
    f = MinHashDedup(field="prompt")
    scored = f.score(df)
    assert len(scored) == 3  # score drops nothing
    assert f.score_columns() == [
        "score_minhash_dedup_cluster",
        "score_minhash_dedup_cluster_size",
        "score_minhash_dedup_row",
        "score_minhash_dedup_links",
    ]
    assert scored["score_minhash_dedup_cluster"].to_list() == [df["id"][0], df["id"][1], df["id"][0]]
    assert scored["score_minhash_dedup_cluster_size"].to_list() == [2, 1, 2]
    links = scored["score_minhash_dedup_links"].to_list()
    assert links[0] is None and links[1] is None
    assert links[2][0]["row"] == 0 and 0.75 < links[2][0]["sim"] <= 0.95
    renamed = MinHashDedup(field="prompt", name="near").score(df)
    assert "score_near_cluster" in renamed.columns


def test_minhash_empty_and_short_texts():
    df = frame(["", "one", "", "one two three", "one two three", "one two four"])
    kept, _ = MinHashDedup(field="prompt").split(df)
    assert kept_prompts(kept) == ["", "one", "one two three", "one two four"]


def test_rethreshold_without_rescoring(monkeypatch):
    df = frame([LONG, LONG_EDITED, LONG, OTHER])
    scored = MinHashDedup(field="prompt", threshold=0.8).score(df)  # banding (16, 8)

    def no_rescore(self, df):
        raise AssertionError("keep() must not rescore")

    monkeypatch.setattr(MinHashDedup, "compute_scores", no_rescore)
    mask, reason = MinHashDedup(field="prompt", threshold=0.8).keep(scored)
    assert mask.to_list() == [True, False, False, True]
    # Stricter, on the same banding: the one-word edit (J ~ 0.84) survives, the exact copy does not.
    stricter = MinHashDedup(field="prompt", threshold=0.97, bands=16, rows=8)
    mask, reason = stricter.keep(scored)
    assert mask.to_list() == [True, True, False, True]
    assert reason[2] == "near duplicate"
    assert stricter.explain(scored)[2] == f"near duplicate of {df['id'][0]} (cluster of 2)"
    assert reason.is_null().to_list() == [True, True, False, True]
    # split() on scored rows reuses the scores too.
    kept, rejected = stricter.split(scored)
    assert len(kept) == 3 and len(rejected) == 1
    # A threshold that implies another banding ((4, 31) at 0.97) would find other links.
    with pytest.raises(ValueError, match="did not make"):
        MinHashDedup(field="prompt", threshold=0.97).keep(scored)
    # The scores belong to the rows scored, in their order (the first row of a cluster is kept):
    # keep() refuses them on reordered rows, split() scores those rows afresh.
    with pytest.raises(ValueError, match="did not make"):
        MinHashDedup(field="prompt").keep(scored.reverse())
    monkeypatch.undo()
    kept, _ = MinHashDedup(field="prompt").split(scored.reverse())
    assert kept["messages"].to_list() == df.reverse()["messages"].to_list()[:2]


def test_keep_requires_scores():
    with pytest.raises(ValueError, match="score"):
        MinHashDedup().keep(frame([LONG]))


def test_exact_rethreshold_and_keep_use_scores(monkeypatch):
    df = frame(["a b", "A  B", "c"])
    scored = ExactDedup(field="prompt").score(df)
    monkeypatch.setattr(ExactDedup, "compute_scores", lambda self, df: (_ for _ in ()).throw(AssertionError))
    mask, _ = ExactDedup(field="prompt").keep(scored)
    assert mask.to_list() == [True, False, True]


def test_works_on_datasets_dataset():
    datasets = pytest.importorskip("datasets")
    df = frame([LONG, OTHER, LONG_EDITED, "x", "X!"])
    ds = datasets.Dataset.from_polars(df)
    for f in (MinHashDedup(field="prompt"), ExactDedup(field="prompt")):
        scored = f.score(ds)
        assert isinstance(scored, datasets.Dataset)
        assert all(c in scored.column_names for c in f.score_columns())
        kept, rejected = f.split(ds)
        assert isinstance(kept, datasets.Dataset) and isinstance(rejected, datasets.Dataset)
        assert kept["id"] == f.split(df)[0]["id"].to_list()
        assert all(r for r in rejected["reason"])
    mask, _ = MinHashDedup(field="prompt").keep(MinHashDedup(field="prompt").score(ds))
    assert mask.to_list() == [True, True, False, True, False]


def test_filter_config():
    f = MinHashDedup()
    assert f.lsh() == (16, 8)
    assert MinHashDedup(bands=20, rows=6).lsh() == (20, 6)
    assert MinHashDedup(rows=4).lsh() == (32, 4)
    assert MinHashDedup.execution == ExactDedup.execution == STATE and MinHashDedup().is_global
    with pytest.raises(Exception):
        MinHashDedup(threshhold=0.7)  # a misspelt key is an error
    with pytest.raises(ValueError):
        MinHashDedup(bands=20, rows=8).lsh()


# --- real data ---------------------------------------------------------------------------------


@pytest.mark.skipif(not GPTEACHER.exists(), reason="GPTeacher toolformer data not available")
def test_agrees_with_gpteacher_reference_dedup():
    """The GPTeacher author deduplicated Toolformer at similarity 0.8 with an undocumented
    measure. Word-set Jaccard of the response (ngram=1) reproduces it best of the variants tried
    (exact Jaccard: 86.4% of keep/drop decisions agree); MinHash must come close to that.
    Runs in under a second."""
    rows = [json.loads(line) for line in GPTEACHER.open()]
    df = make_frame(
        [
            {
                "messages": [
                    {"role": "user", "content": r["instruction"] + ("\n" + r["input"] if r["input"] else "")},
                    {"role": "assistant", "content": r["response"]},
                ]
            }
            for r in rows
        ]
    )
    reference = np.array([r["kept_at_sim_0.8"] for r in rows])
    mask, _ = MinHashDedup(field="response", ngram=1, threshold=0.8).keep(
        MinHashDedup(field="response", ngram=1, threshold=0.8).score(df)
    )
    ours = mask.to_numpy()
    agreement = (ours == reference).mean()
    removed_overlap = (~ours & ~reference).sum() / (~ours | ~reference).sum()
    # Measured (seeds 1-3): agreement 0.850-0.857, removed-set Jaccard 0.666-0.682, keeps
    # 4748-4903 rows (reference 4704).
    assert agreement >= 0.83, agreement
    assert removed_overlap >= 0.62, removed_overlap
    assert abs(int(ours.sum()) - int(reference.sum())) < 400


def test_verify_false_keeps_every_lsh_candidate():
    rng = random.Random(3)
    base = LONG.split()
    texts = [" ".join(w if rng.random() > 0.12 else "zz" + w for w in base) for _ in range(40)]
    df = frame(texts)
    strict, _ = MinHashDedup(field="prompt").split(df)
    loose, _ = MinHashDedup(field="prompt", verify=False).split(df)
    assert set(loose["id"]) <= set(strict["id"])
    assert len(loose) < len(strict)


def test_invalid_settings_are_rejected():
    for bad in ({"threshold": 1.5}, {"num_perm": 0}, {"ngram": 0}, {"bands": 0}):
        with pytest.raises(Exception):
            MinHashDedup(**bad)


# --- short texts: fewer shingles than num_perm (issue 9 part 2) ---------------------------------

# 21 words (17 word 5-grams); the copy differs in one word: exact Jaccard 0.70, which the
# densified one-permutation estimate put at 0.81, so the pair was merged at threshold 0.8.
SHORT_A = ("papa1 victor5 victor8 november9 oscar9 hotel3 charlie4 xray6 papa6 victor2 juliet4 tango4 alpha3 "
           "hotel3 oscar0 charlie6 kilo1 papa0 whiskey5 oscar7 bravo4")
SHORT_A_EDIT = SHORT_A.replace("whiskey5", "zzwhiskey5")
# 30 words (26 5-grams), one word changed: exact Jaccard 0.857, estimated 0.79: the pair was kept.
SHORT_B = ("bravo2 echo3 papa1 bravo1 romeo0 alpha8 kilo1 lima0 golf7 romeo1 sierra3 zulu4 juliet0 hotel7 uniform2 "
           "yankee3 lima0 bravo7 kilo8 mike0 bravo8 alpha2 romeo1 hotel7 victor8 romeo8 hotel0 hotel7 alpha2 yankee0")
SHORT_B_EDIT = SHORT_B.replace("hotel7 alpha2 yankee0", "hotel7 yyzzalpha2 yankee0")


def _exact(x, y, ngram=5):
    a, b = T.shingles(x, ngram), T.shingles(y, ngram)
    return len(a & b) / len(a | b)


def test_short_texts_are_verified_by_exact_jaccard():
    assert _exact(SHORT_A, SHORT_A_EDIT) == pytest.approx(0.70) and _exact(SHORT_B, SHORT_B_EDIT) > 0.85
    kept, _ = MinHashDedup(field="prompt").split(frame([SHORT_A, SHORT_A_EDIT, SHORT_B, SHORT_B_EDIT]))
    assert kept_prompts(kept) == [SHORT_A, SHORT_A_EDIT, SHORT_B]
    scored = MinHashDedup(field="prompt").score(frame([SHORT_B, SHORT_B_EDIT]))
    assert scored["score_minhash_dedup_links"][1][0]["sim"] == pytest.approx(_exact(SHORT_B, SHORT_B_EDIT))
    assert D.cluster([SHORT_A, SHORT_A_EDIT, SHORT_B, SHORT_B_EDIT]).tolist() == [0, 1, 2, 2]


@pytest.mark.parametrize("ngram", [1, 2, 5])
def test_exact_jaccard_from_signatures_matches_python_sets(ngram):
    # Few distinct words, many repeats, 0-140 words: texts above and below num_perm shingles,
    # bins holding several shingles, repeated hidden shingles.
    rng = random.Random(ngram)
    vocab = [f"w{i}" for i in range(60)]
    texts = [" ".join(rng.choice(vocab) for _ in range(rng.randint(0, 140))) for _ in range(300)]
    texts += [t.replace("w1 ", "zz ", 1) for t in texts[:100]] + ["日本語のテキスト。次の文", ""]
    m = D.minhash_signatures(texts, ngram=ngram, details=True)
    small = np.flatnonzero(m.small)
    a = np.array([rng.choice(small) for _ in range(2000)] + [i for i in range(100) if m.small[i] and m.small[300 + i]])
    b = np.array([rng.choice(small) for _ in range(2000)] + [300 + i for i in range(100) if m.small[i] and m.small[300 + i]])
    want = [_exact(texts[x], texts[y], ngram) for x, y in zip(a, b)]
    np.testing.assert_allclose(D.exact_jaccard(m, a, b), want, rtol=0, atol=1e-12)


@pytest.mark.skipif(not GPTEACHER.exists(), reason="GPTeacher toolformer data not available")
def test_short_prompts_pair_precision_on_gpteacher():
    """GPTeacher prompts (median 45 shingles) crowd the threshold: at 0.8 the densified estimate
    kept pairs of which only ~50% had exact Jaccard >= 0.8 (bench/bench_dedup_accuracy.py)."""
    rows = [json.loads(line) for line in GPTEACHER.open()][:2500]
    texts = [r["instruction"] + ("\n" + r["input"] if r["input"] else "") for r in rows]
    scored = MinHashDedup(field="prompt").score(frame(texts))
    links = scored.select(pl.col("score_minhash_dedup_row").alias("later"), pl.col("score_minhash_dedup_links"))
    links = links.explode("score_minhash_dedup_links").drop_nulls().unnest("score_minhash_dedup_links")
    verified = links.filter(pl.col("sim") >= 0.8)
    exact = [_exact(texts[x], texts[y]) for x, y in zip(verified["later"], verified["row"])]
    assert len(exact) > 500
    assert np.mean(np.array(exact) >= 0.8) >= 0.99
