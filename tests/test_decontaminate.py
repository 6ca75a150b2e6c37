"""Tests of filters.decontaminate: n-gram overlap with eval sets."""

from __future__ import annotations

import json
import random
import re

import polars as pl
import pytest

from curate.errors import CurateError
from curate.io import read_records, read_table
from curate.records import make_frame
from filters.decontaminate import Decontaminate, eval_texts
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


def test_known_overlaps_are_caught_and_others_are_not(eval_file):
    df = frame(
        (LONG.upper().replace(",", ";") + "!!", "Sure."),  # case and punctuation edits
        ("Please help: " + LONG, "ok"),  # a prefix
        (" ".join(LONG.split()[:12]), "only 12 words of it"),  # shorter than 13: not an overlap
        ("Question for you. " + SHORT + ", please, with dates.", "ok"),  # short eval item inside a row
        ("I want you to tell me a joke about cats.", "Why..."),  # tiny item inside a longer text
        ("What is Australia's capital?", ANSWER),  # the reference answer copied
        ("Plan a three-day trip to Kyoto for a family with two small children who love trains.", "Day 1"),
        ("Write a haiku about autumn leaves falling on a quiet pond at dusk.", "Leaves drift..."),
    )
    f = Decontaminate(eval_sets=[eval_file])
    kept, rejected = f.split(df)
    scored = f.score(df)
    assert scored["score_decontaminate_matches"].to_list() == [6, 6, 0, 1, 0, 6, 5, 0]
    assert scored["score_decontaminate_hit"].to_list() == [
        "evalset.jsonl:0", "evalset.jsonl:0", None, "evalset.jsonl:1", None, "evalset.jsonl:3", "evalset.jsonl:4", None]
    assert scored["score_decontaminate_coverage"][0] == 1.0
    assert rejected["reason"].to_list() == ["overlaps eval set"] * 5
    assert "evalset.jsonl:0" in rejected["detail"][0]
    assert len(kept) == 3


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
    fifteen = " ".join(LONG.split()[:15])  # 15 shared words = 3 distinct 13-grams
    df = Decontaminate(eval_sets=[eval_file]).score(frame((fifteen, "ok"), (LONG, "ok")))
    assert df["score_decontaminate_matches"].to_list() == [3, 6]

    def rescoring(*_):
        raise AssertionError("keep() must not rescore")

    monkeypatch.setattr(Decontaminate, "compute_scores", rescoring)
    mask, reason = Decontaminate(eval_sets=[eval_file], min_matches=4).keep(df)
    assert mask.to_list() == [True, False] and reason.to_list() == [None, "overlaps eval set"]
    assert df["score_decontaminate_coverage"].to_list() == [0.5, 1.0]
    mask, _ = Decontaminate(eval_sets=[eval_file], min_coverage=0.6).keep(df)
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
