"""Tests of filters.decontaminate: n-gram overlap with eval sets."""

from __future__ import annotations

import json
import random
import re

import numpy as np
import polars as pl
import pytest

from curate.errors import CurateError
from curate.io import read_records, read_table
from curate.records import make_frame
from bench.bench_decontaminate import draw_math_eval, plant
from filters.decontaminate import Decontaminate, edit_distance, eval_texts, markup_words
from filters.dedup import words
from tests.conftest import shared

LONG = ("Describe the water cycle in detail, explaining evaporation, condensation, precipitation and "
        "collection, with one example from everyday life")  # 18 words: 6 13-grams
SHORT = "Name three famous painters from the Italian Renaissance period"  # 9 words
TINY = "Tell me a joke"  # 4 words: below min_words
ANSWER = ("The capital of Australia is Canberra, which was chosen as a compromise between Sydney and "
          "Melbourne in 1908")  # 18 words: a reference answer


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture
def eval_file(tmp_path):
    return write_jsonl(tmp_path / "evalset.jsonl", [
        {"id": "a", "instruction": LONG},
        {"id": "b", "instruction": SHORT},
        {"id": "c", "instruction": TINY},
        {"id": "d", "instruction": "What is the capital of Australia?", "instances": [{"input": "", "output": ANSWER}]},
        {"id": "e", "turns": ["Plan a three day trip to Kyoto for a family with two small children who love trains",
                              "Now make it cheaper."]},
    ])


def frame(*pairs):
    return make_frame([{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": a}]}
                       for p, a in pairs])


GPT3 = dict(short_words=0, common_items=0, min_prose=0, min_answer_share=0)  # the plain 13-gram rule (the filter before issue 9)


def test_known_overlaps_are_caught_and_others_are_not(eval_file):
    df = frame(
        (LONG.upper().replace(",", ";") + "!!", "Sure."),  # case and punctuation edits
        ("Please help: " + LONG, "ok"),  # a prefix
        (" ".join(LONG.split()[:12]), "only 12 words of it"),  # 12 of 18 words: no 13-gram, a near copy
        ("Question for you. " + SHORT + ", please, with dates.", "ok"),  # short eval item inside a row
        ("I want you to tell me a joke about cats.", "Why..."),  # tiny item inside a longer text
        ("What is Australia's capital?", ANSWER),  # the reference answer copied
        ("Plan a three-day trip to Kyoto for a family with two small children who love trains.", "Day 1"),
        ("Write a haiku about autumn leaves falling on a quiet pond at dusk.", "Leaves drift..."),
    )
    f = Decontaminate(eval_sets=[eval_file])
    kept, rejected = f.split(df)
    scored = f.score(df)
    # Test 1 (13-grams); the 9-word SHORT is now test 2's (an exact run: 0 edits), not a whole-field shingle.
    assert scored["score_decontaminate_matches"].to_list() == [6, 6, 0, 0, 0, 6, 5, 0]
    assert scored["score_decontaminate_hit"].to_list() == [
        "evalset.jsonl:0", "evalset.jsonl:0", "evalset.jsonl:0", "evalset.jsonl:1", None, "evalset.jsonl:3",
        "evalset.jsonl:4", None]
    edits = scored["score_decontaminate_edits"].to_list()
    assert edits[3] == 0.0 and 0 < edits[2] <= 0.4 and edits[4] is None and edits[7] is None
    assert scored["score_decontaminate_coverage"][0] == 1.0
    assert rejected["reason"].to_list() == ["overlaps eval set"] * 6
    assert "evalset.jsonl:0" in rejected["detail"][0]
    assert "short eval item evalset.jsonl:0" in rejected["detail"][2]
    assert len(kept) == 2
    # The GPT-3 rule alone: the 12-word prefix is no overlap; SHORT is one whole-field shingle.
    gpt3 = Decontaminate(eval_sets=[eval_file], **GPT3).score(df)
    assert gpt3["score_decontaminate_matches"].to_list() == [6, 6, 0, 1, 0, 6, 5, 0]
    assert gpt3["score_decontaminate_edits"].null_count() == len(df)


def test_short_instruction_plus_short_input_match_as_one_prompt(tmp_path):
    path = write_jsonl(tmp_path / "si.jsonl", [
        {"instruction": "Write down antonyms for the given word.", "instances": [{"input": "laureating", "output": "shaming"}]},
        {"instruction": "What sound does this make?", "input": "好"},
    ])
    df = read_records(write_jsonl(tmp_path / "train.jsonl", [
        {"instruction": "Write down antonyms for the given word.", "input": "laureating", "output": "x"},
        {"instruction": "What sound does this make?", "input": "好", "output": "hao"},
        {"instruction": "What sound does this make?", "input": "猫", "output": "mao"},
    ]))
    scored = Decontaminate(eval_sets=[path], field="prompt").score(df)
    assert scored["score_decontaminate_hit"].to_list() == ["si.jsonl:0", "si.jsonl:1", None]


def test_tiny_item_matches_only_a_whole_text(eval_file):
    df = frame(("Tell me a joke!", "Why did..."), ("Tell me a joke about cats", "x"))
    scored = Decontaminate(eval_sets=[eval_file], field="prompt").score(df)
    assert scored["score_decontaminate_matches"].to_list() == [1, 0]
    assert scored["score_decontaminate_hit"][0] == "evalset.jsonl:2"


def test_rethreshold_min_matches_without_rescoring(eval_file, monkeypatch):
    fifteen = " ".join(LONG.split()[:15])  # 15 shared words = 3 distinct 13-grams (and a near copy: GPT3 off)
    df = Decontaminate(eval_sets=[eval_file], **GPT3).score(frame((fifteen, "ok"), (LONG, "ok")))
    assert df["score_decontaminate_matches"].to_list() == [3, 6]

    def rescoring(*_):
        raise AssertionError("keep() must not rescore")

    monkeypatch.setattr(Decontaminate, "compute_scores", rescoring)
    mask, reason = Decontaminate(eval_sets=[eval_file], min_matches=4, **GPT3).keep(df)
    assert mask.to_list() == [True, False] and reason.to_list() == [None, "overlaps eval set"]
    assert df["score_decontaminate_coverage"].to_list() == [0.5, 1.0]
    mask, _ = Decontaminate(eval_sets=[eval_file], min_coverage=0.6, **GPT3).keep(df)
    assert mask.to_list() == [True, False]


def test_smaller_ngram_and_eval_fields(eval_file):
    twelve = " ".join(LONG.split()[:12])
    assert Decontaminate(eval_sets=[eval_file], ngram=8).score(frame((twelve, "")))["score_decontaminate_matches"][0] == 5
    # Index only `instruction`: the reference answer is no longer a match.
    only = Decontaminate(eval_sets=[eval_file], eval_fields=["instruction"]).score(frame(("Q", ANSWER)))
    assert only["score_decontaminate_matches"][0] == 0


def test_summary_counts_items_per_set(eval_file):
    f = Decontaminate(eval_sets=[eval_file])
    df = f.score(frame((LONG, "a"), (LONG + " again", "b"), (SHORT, "c"), ("unrelated text here", "d")))
    s = f.summary(df)
    assert s["rows_flagged"] == 3 and s["eval_items_hit"] == 2
    assert s["by_set"]["evalset.jsonl"] == {"items_hit": 2, "row_hits": 3, "items": 5}
    assert [(i["item"], i["rows"]) for i in s["items"]] == [("evalset.jsonl:0", 2), ("evalset.jsonl:1", 1)]
    assert s["items"][0]["text"].startswith("Describe the water cycle")


def test_no_hits_and_empty_rows(eval_file):
    df = Decontaminate(eval_sets=[eval_file]).score(frame(("", ""), ("hello", "world")))
    assert df["score_decontaminate_matches"].to_list() == [0, 0]
    assert df["score_decontaminate_hits"].to_list() == [[], []]


def test_datasets_dataset_in_and_out(eval_file):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_polars(frame((LONG, "x"), ("clean row", "y")))
    kept, rejected = Decontaminate(eval_sets=[eval_file]).split(ds)
    assert isinstance(kept, datasets.Dataset) and len(kept) == 1 and len(rejected) == 1


def test_eval_file_without_text_column(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"score": 1}])
    with pytest.raises(CurateError, match="no text column"):
        Decontaminate(eval_sets=[path]).score(frame(("a", "b")))


# --- real data ------------------------------------------------------------------------------------

EVAL_FILES = ["alpaca_eval_805.jsonl", "mt_bench_question_80.jsonl", "mt_bench_reference_answer_gpt4_30.jsonl",
              "vicuna_bench_question_80.jsonl", "lima_test_300.jsonl", "wizardlm_testset_218.jsonl",
              "selfinstruct_user_oriented_252.jsonl"]


def longest_common_run(a: list[str], b: list[str]) -> int:
    """Longest run of consecutive words shared by a and b (the slow reference)."""
    best, prev = 0, [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b):
            if x == y:
                cur[j + 1] = prev[j] + 1
                best = max(best, cur[j + 1])
        prev = cur
    return best


def edit(text: str, rng: random.Random) -> str:
    """One small edit of the kind a paraphrasing copy makes."""
    kind = rng.choice(["word", "prefix", "case_punct", "word+prefix"])
    toks = text.split()
    if "word" in kind:
        i = rng.randrange(len(toks))
        toks[i] = rng.choice(["really", "quite", "the", "some", "very"])
    out = " ".join(toks)
    if "prefix" in kind:
        out = rng.choice(["Please answer this: ", "Hi! ", "Question - ", "You are a helpful assistant. "]) + out
    if kind == "case_punct":
        out = re.sub(r"[?.!,]", lambda m: {"?": ".", ".": "!", "!": "?", ",": ";"}[m.group()], out.lower())
    return out


@pytest.fixture(scope="module")
def real():
    paths = [str(shared("eval_prompts", f)) for f in EVAL_FILES]
    alpaca = read_records(shared("quality_cherry_alpaca_ifd", "cherry_alpaca_5_percent.jsonl"))
    return paths, alpaca


def test_planted_eval_copies_caught_clean_rows_not(real):
    paths, alpaca = real
    rng = random.Random(0)
    items = []  # (label, prompt text) of eval prompts with >= 20 words, from several sets
    for path in paths[:2] + paths[3:]:
        name = path.rsplit("/", 1)[1]
        for i, texts in enumerate(eval_texts(path)):
            if texts and len(words(texts[0])) >= 20:
                items.append((f"{name}:{i}", texts[0]))
    planted = rng.sample(items, 50)
    rows = [{"messages": [{"role": "user", "content": edit(t, rng)},
                          {"role": "assistant", "content": "Here is my answer."}], "source": label}
            for label, t in planted]
    clean = alpaca.head(500).with_columns(pl.lit("clean").alias("source"))
    df = pl.concat([make_frame(rows), clean], how="diagonal_relaxed")
    f = Decontaminate(eval_sets=paths)
    scored = f.score(df)
    hit = scored["score_decontaminate_matches"] > 0
    # Ground truth for the planted rows: a shared run of >= 13 normalised words with their item.
    expected = [longest_common_run(words(r["messages"][0]["content"]), words(t)) >= 13
                for r, (_, t) in zip(rows, planted)]
    got = hit.head(50).to_list()
    assert got == expected
    assert sum(expected) >= 45  # single edits rarely break every 13-word run of a >= 20-word prompt
    for r, (label, _), hits in zip(rows, planted, scored["score_decontaminate_hits"].head(50).to_list()):
        if hits:
            assert label in hits
    assert hit.tail(500).sum() == 0  # no false positive among 500 clean Alpaca rows


def test_real_alpaca_row_that_is_a_lima_test_prompt(real):
    """Investigated: of the 3,111 Cherry-Alpaca rows exactly one overlaps any eval set, and it is a
    true copy: its instruction equals LIMA test prompt 167 word for word."""
    paths, alpaca = real
    f = Decontaminate(eval_sets=paths)
    scored = f.score(alpaca)
    flagged = scored.filter(pl.col("score_decontaminate_matches") > 0)
    assert flagged["score_decontaminate_hit"].to_list() == ["lima_test_300.jsonl:167"]
    assert flagged["score_decontaminate_coverage"].to_list() == [1.0]
    lima = read_table(paths[EVAL_FILES.index("lima_test_300.jsonl")])["conversations"][167]
    assert flagged["messages"][0][0]["content"] == lima


# --- issue 9 part 3: lightly edited short items, boilerplate --------------------------------------


def test_edit_distance_matches_the_textbook_recurrence():
    def reference(a, b, stretch, w, ins):
        prev = [0.0] * (len(b) + 1) if stretch else [float(sum(ins[:j])) for j in range(len(b) + 1)]
        for i, x in enumerate(a):
            cur = [prev[0] + w[i]]
            for j, y in enumerate(b, 1):
                cur.append(min(prev[j - 1] + (0 if x == y else w[i]), prev[j] + w[i], cur[j - 1] + ins[j - 1]))
            prev = cur
        return min(prev) if stretch else prev[-1]

    rng = random.Random(0)
    for _ in range(200):
        a = np.array([rng.randrange(4) for _ in range(rng.randrange(1, 8))], np.uint64)
        b = np.array([rng.randrange(4) for _ in range(rng.randrange(0, 12))], np.uint64)
        w = [rng.choice([0.5, 1.0, 2.0]) for _ in a]
        ins = [rng.choice([0.5, 1.0, 3.0]) for _ in b]
        for stretch in (False, True):
            assert edit_distance(a, b, stretch, np.array(w)) == pytest.approx(reference(a, b, stretch, w, [1.0] * len(b)))
            assert edit_distance(a, b, stretch, np.array(w), insert=np.array(ins)) == pytest.approx(
                reference(a, b, stretch, w, ins))
    words_ = np.array([1, 2, 3], np.uint64)
    assert edit_distance(words_, np.array([9, 1, 2, 3, 9], np.uint64), stretch=True) == 0
    assert edit_distance(words_, np.array([9, 1, 2, 3, 9], np.uint64)) == 2
    assert edit_distance(words_, np.array([7, 8], np.uint64), stretch=True, limit=1) == float("inf")


def test_markup_words_are_commands_and_plot_code_not_prose():
    texts = [r"Find $\frac{1}{2} \cdot \begin{pmatrix} 1 \\ 0 \end{pmatrix}$ in the plane.",
             r"The angle $\angle ABC$ is right. [asy] draw((0,0)--(1,1)); label(""$A$"", (0,0), SW); [/asy]",
             r"Let $x \in S$ and write it in text: $\text{yes}$."]
    markup = markup_words(texts)
    assert {"frac", "cdot", "pmatrix", "begin", "end", "draw", "label", "sw"} <= markup
    assert not {"in", "angle", "find", "plane", "right"} & markup  # also used as prose here
    assert "text" not in markup  # once as \text, once as prose: not mostly markup


def test_template_ngrams_shared_by_many_items_are_no_evidence(tmp_path):
    phrase = "the sum of an arithmetic series is equal to the average of the first and last term"
    items = [{"problem": f"Problem number {k} about {w}.", "solution": f"Since {phrase}, the answer is {k}."}
             for k, w in enumerate(["apples", "trains", "clocks"])]
    path = write_jsonl(tmp_path / "ev.jsonl", items)
    row = frame((f"Sum the odd numbers below 50. Recall that {phrase} times the count.", "625"))
    assert Decontaminate(eval_sets=[path], **GPT3).score(row)["score_decontaminate_matches"][0] > 0
    assert Decontaminate(eval_sets=[path]).score(row)["score_decontaminate_matches"][0] == 0
    # The same phrase in three items of three different eval sets is no template of one set.
    paths = [write_jsonl(tmp_path / f"ev{k}.jsonl", [it]) for k, it in enumerate(items)]
    assert Decontaminate(eval_sets=paths).score(row)["score_decontaminate_matches"][0] > 0


def test_near_copies_are_looked_for_in_the_prompt_exact_answers_anywhere(tmp_path):
    joke = "What's the funny part of the joke: why don't scientists trust atoms? Because they make up everything"
    path = write_jsonl(tmp_path / "ev.jsonl", [
        {"instruction": joke, "output": "Atoms really do make up everything, the pun"},  # 9-word answer
    ])
    df = frame(
        ("Tell me a joke.", "Why don't scientists trust atoms? Because they make up everything!"),
        ("Explain this joke: why don't scientists trust atoms? Because they make up everything.", "A pun."),
        ("Why is it funny?", "Well, atoms really do make up everything, the pun is the point."),
    )
    scored = Decontaminate(eval_sets=[path]).score(df)
    edits = scored["score_decontaminate_edits"].to_list()
    assert edits[0] is None  # a retold joke in an answer is no copy of the eval prompt
    assert 0 < edits[1] <= 0.4  # the prompt reworded around the joke is
    assert edits[2] == 0.0  # the 9-word reference answer, copied exactly, anywhere in the row


@pytest.fixture(scope="module")
def math_eval(tmp_path_factory):
    """The bench's MATH eval set: 1,000 problems holding a number, drawn with seed 0."""
    math = read_table(shared("math_test4500", "math_test_minus_math500.jsonl"))
    drawn = draw_math_eval(math, 1000, 0)
    path = tmp_path_factory.mktemp("math") / "math_eval.jsonl"
    math[drawn].select("id", "problem", "solution", "answer").write_ndjson(path)
    return str(path), math, drawn


def test_short_math_items_with_reworded_start_and_a_changed_number_are_caught(math_eval):
    """Issue 9 part 3: a short item (8-29 words) with one number changed and its first three words
    reworded shares no 13-gram with the original: the GPT-3 rule missed 66 of these 100."""
    path, math, drawn = math_eval
    problems, ids = math["problem"].to_list(), math["id"].to_list()
    short = [k for k, i in enumerate(drawn) if 8 <= len(words(problems[i])) < 30][:100]
    planted = make_frame([{"messages": [{"role": "user", "content": plant(problems[drawn[k]], ids[drawn[k]], 0)}]}
                          for k in short])

    def caught(settings):
        f = Decontaminate(eval_sets=[path], **settings)
        scored = f.score(planted)
        mask, _ = f.keep(scored)
        return sum(not keep and f"math_eval.jsonl:{k}" in hits
                   for k, keep, hits in zip(short, mask.to_list(), scored["score_decontaminate_hits"].to_list()))

    assert caught(GPT3) == 34
    assert caught({}) >= 92  # the misses keep < 2 of their 3-grams: no candidate (see bench/README.md)
    gsm = read_table(shared("gsm8k_train", "train.jsonl"))
    clean = make_frame([{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
                        for q, a in zip(gsm["question"].to_list(), gsm["answer"].to_list())])
    f = Decontaminate(eval_sets=[path])
    assert (~f.keep(f.score(clean))[0]).sum() <= 1  # of 7,473 GSM8K rows (the GPT-3 rule: 1)


# (eval item, a clean MATH problem whose solution shares only boilerplate with the item's solution)
BOILERPLATE = {
    "Asymptote plotting code": ("math_test_4954", "math_test_4469"),
    "a pmatrix literal": ("math_test_4470", "math_test_4568"),
    "'the average of the first and last term'": ("math_test_80", "math_test_398"),
    # Prose in one eval solution only: "We can set up a system of two equations to represent the given
    # information ... Substituting the first equation into the second to eliminate": the clean row is
    # another problem (John's dad's age); its solution reuses the sentence.
    "a stock derivation sentence": ("math_test_711", "math_test_623"),
}


@pytest.mark.parametrize("kind", list(BOILERPLATE))
def test_solution_boilerplate_does_not_flag_clean_rows(math_eval, kind):
    """Issue 9 part 3: matching on solution text flagged clean rows through plotting code, matrix
    literals and stock phrases shared with an eval item's solution."""
    path, math, drawn = math_eval
    item, clean_id = BOILERPLATE[kind]
    row = math.filter(pl.col("id") == clean_id)
    df = frame((row["problem"][0], row["solution"][0]))
    label = f"math_eval.jsonl:{[math['id'][i] for i in drawn].index(item)}"
    gpt3 = Decontaminate(eval_sets=[path], **GPT3)
    assert gpt3.score(df)["score_decontaminate_hit"][0] == label
    f = Decontaminate(eval_sets=[path])
    mask, _ = f.keep(f.score(df))
    assert mask[0]


def test_a_copied_reference_solution_is_caught_without_its_prompt(math_eval):
    """Answer-only evidence still counts when the row holds most of the item's answer: a training
    row that answers another prompt with the eval item's gold solution is a leak."""
    path, math, drawn = math_eval
    k = next(k for k, i in enumerate(drawn) if len(words(math["solution"][i])) >= 60)
    solution = math["solution"][drawn[k]]
    half = " ".join(solution.split()[: len(solution.split()) // 3])  # a third of it: no copy
    f = Decontaminate(eval_sets=[path])
    scored = f.score(frame(("Show me a worked example.", solution), ("Show me a worked example.", half)))
    assert scored["score_decontaminate_hit"].to_list()[0] == f"math_eval.jsonl:{k}"
    assert (~f.keep(scored)[0]).to_list() == [True, False]
    old = Decontaminate(eval_sets=[path], min_answer_share=0)  # any answer shingle counts
    assert (~old.keep(old.score(frame(("Show me a worked example.", half))))[0]).to_list() == [True]


# (eval item, a clean MATH problem that holds a stretch close to it only by padding it with its own
# content: the near-copy test's false matches while inserting a row word cost 1, however rare)
PADDED = {
    "matrix sum vs a vector equation": ("math_test_4714", "math_test_4890"),
    "nested f(g(...)) vs an alternating composition": ("math_test_1108", "math_test_1049"),
    "a circle's radius vs a value of c": ("math_test_31", "math_test_1041"),
}


@pytest.mark.parametrize("kind", list(PADDED))
def test_a_stretch_padded_with_other_content_is_no_near_copy(math_eval, kind):
    """Issue 9 part 3: inserting a word the eval item lacks costs that word's rarity, as deleting
    one of the item's words does; the planted edit of the same item is still caught."""
    path, math, drawn = math_eval
    item, clean_id = PADDED[kind]
    k = [math["id"][i] for i in drawn].index(item)
    problem = math.filter(pl.col("id") == clean_id)["problem"][0]
    f = Decontaminate(eval_sets=[path])
    scored = f.score(frame((problem, "..."), (plant(math["problem"][drawn[k]], item, 0), "...")))
    assert (~f.keep(scored)[0]).to_list() == [False, True]
    assert f"math_eval.jsonl:{k}" in scored["score_decontaminate_hits"][1]


def test_answer_only_shingles_of_one_item_do_not_count_beside_another_items_prompt(tmp_path):
    """A row copying item A's prompt and one sentence of item B's worked answer: A is hit, B is not,
    and `matches` counts A's shingles only."""
    sentence = "we can set up a system of two equations to represent the given information as follows"  # 16 words
    path = write_jsonl(tmp_path / "ev.jsonl", [
        {"problem": LONG, "solution": "It depends on the season and the place."},
        {"problem": "Ann is 31 years younger than her dad.", "solution": f"Let a be Ann's age. {sentence}. " + "x " * 60},
    ])
    row = frame((LONG, f"Sure. First, {sentence}."))
    scored = Decontaminate(eval_sets=[path]).score(row)
    assert scored["score_decontaminate_hits"][0].to_list() == ["ev.jsonl:0"]
    assert scored["score_decontaminate_matches"][0] == 6  # LONG's 18 words: 6 13-grams
    old = Decontaminate(eval_sets=[path], min_answer_share=0).score(row)
    assert old["score_decontaminate_hits"][0].to_list() == ["ev.jsonl:0", "ev.jsonl:1"]
    assert old["score_decontaminate_matches"][0] == 6 + 4


def test_word_weight_lookup_matches_a_binary_search(real):
    """The near-copy test's word weights come from a direct-addressed table (shared slots fall back
    to a binary search): the same weights as searching the sorted vocabulary, seen words or not."""
    index = Decontaminate(eval_sets=real[0]).index()
    assert (index._slots == -2).any()  # some vocabulary words share a slot: the fallback is exercised
    unseen = np.random.default_rng(0).integers(0, 2**63, 10_000).astype(np.uint64)
    q = np.concatenate([index._vocab, unseen, index._vocab[::-7]])
    at = np.minimum(np.searchsorted(index._vocab, q), len(index._vocab) - 1)
    assert np.array_equal(index.word_weight(q), np.where(index._vocab[at] == q, index._idf[at], index._idf_unseen))


def test_stretch_distances_of_many_pairs_equal_edit_distance_of_each():
    """The batched pass gives edit_distance's values exactly (inf where the limit is exceeded),
    whatever the pairs' lengths, weights, limits and how they are cut into batches."""
    from filters.eval_index import stretch_distances

    rng = np.random.default_rng(0)
    b = rng.integers(0, 5, 400).astype(np.uint64)
    insert = rng.choice([0.5, 1.0, 2.5], len(b))
    pairs = 300
    a = [rng.integers(0, 5, rng.integers(1, 9)).astype(np.uint64) for _ in range(pairs)]
    weights = [rng.choice([0.3, 1.0, 1.7], len(x)) for x in a]
    lo = rng.integers(0, 380, pairs)
    spans = np.stack([lo, lo + rng.integers(0, 20, pairs)], axis=1)
    limits = rng.choice([0.5, 2.0, 5.0, np.inf], pairs)
    want = [edit_distance(a[k], b[spans[k, 0]:spans[k, 1]], stretch=True, weights=weights[k],
                          insert=insert[spans[k, 0]:spans[k, 1]], limit=limits[k]) for k in range(pairs)]
    for cells in (1 << 21, 64):  # one batch, and many small ones
        got = stretch_distances(a, weights, b, insert, spans, limits, cells=cells)
        assert got.tolist() == want
    assert np.isinf(want).any() and np.isfinite(want).any()
