import polars as pl

from curate.records import make_frame
from filters.heuristics import Heuristics


def rows(*pairs):
    return make_frame([{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": a}]} for p, a in pairs])


def test_each_rule_fires_with_its_reason():
    df = rows(
        ("Write a poem about rain.", ""),
        ("Name a fruit.", "Apple."),
        ("Describe the sea in detail please.", "Describe the sea in detail please."),
        ("Tell me a secret.", "I'm sorry, but I cannot help with that request, as it is private."),
        ("Tell me a joke.", "As an AI language model, I do not tell jokes but here is one anyway."),
        ("What is rain?", "Rain is water that falls from clouds when droplets grow heavy."),
        ("Write a lot.", " ".join(["word"] * 50)),
    )
    kept, rejected = Heuristics(min_response_words=3, max_response_words=40).split(df)
    assert kept["messages"].list.last().struct.field("content").to_list() == [
        "Rain is water that falls from clouds when droplets grow heavy."
    ]
    assert rejected["reason"].to_list() == [
        "empty response", "response too short", "response repeats the instruction",
        "refusal or AI boilerplate", "refusal or AI boilerplate", "response too long",
    ]


def test_rethreshold_uses_stored_scores_only(monkeypatch):
    df = Heuristics().score(rows(("Q?", "one two three four")))
    assert df["score_heuristics_response_words"].to_list() == [4]

    def rescoring(*_):
        raise AssertionError("keep() must not rescore")

    monkeypatch.setattr(Heuristics, "compute_scores", rescoring)
    mask, reason = Heuristics(min_response_words=5).keep(df)
    assert mask.to_list() == [False] and reason.to_list() == ["response too short"]


def test_works_on_a_datasets_dataset():
    import datasets

    ds = datasets.Dataset.from_polars(rows(("Q?", "a fine and long enough answer"), ("Q2?", "")))
    kept, rejected = Heuristics().split(ds)
    assert isinstance(kept, datasets.Dataset) and len(kept) == 1 and rejected[0]["reason"] == "empty response"
