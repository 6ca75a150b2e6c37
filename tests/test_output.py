"""Output formats, train/validation splits, and a folder that datasets.load_dataset reads with its splits."""

import json

import datasets
import polars as pl
import pytest

from curate.engine import run_recipe
from curate.errors import CurateError
from curate.formats import convert
from curate.output import OutputConfig, split
from curate.records import make_frame

CONV = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]


def frame(**cols):
    return make_frame([{"messages": CONV, "source": "s", **cols}])


def test_each_format():
    df = frame()
    assert convert(df, "messages")["messages"].to_list() == [CONV]
    assert convert(df, "sharegpt")["conversations"].to_list() == [[
        {"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello."}]]
    a = convert(df, "alpaca").row(0, named=True)
    assert (a["instruction"], a["input"], a["output"], a["system"]) == ("Hi?", "", "Hello.", "Be brief.")
    pc = convert(df, "prompt_completion").row(0, named=True)
    assert pc["prompt"] == CONV[:2] and pc["completion"] == CONV[2:]
    assert convert(df, "messages").columns == ["id", "source", "messages"]


def test_preference_pairs_from_candidates():
    df = frame().with_columns(pl.Series("candidates", [[{"content": "ok", "score": 3.0}, {"content": "best", "score": 9.0},
                                                        {"content": "worst", "score": 1.0}]]))
    row = convert(df, "preference").row(0, named=True)
    assert row["chosen"] == [{"role": "assistant", "content": "best"}]
    assert row["rejected"] == [{"role": "assistant", "content": "worst"}]
    with pytest.raises(CurateError, match="needs ranked candidates"):
        convert(frame(), "preference")


def test_reasoning_inline_field_or_drop():
    df = frame(reasoning="2 + 2 is 4")
    inline = convert(df, "messages", reasoning="inline")["messages"][0].to_list()[-1]["content"]
    assert inline == "<think>\n2 + 2 is 4\n</think>\n\nHello."
    field = convert(df, "messages", reasoning="field")
    assert field["reasoning"].to_list() == ["2 + 2 is 4"] and field["messages"][0].to_list() == CONV
    assert "reasoning" not in convert(df, "messages", reasoning="drop").columns


def test_alpaca_refuses_multi_turn():
    multi = make_frame([{"messages": CONV[1:] + CONV[1:]}])
    with pytest.raises(CurateError, match="alpaca format holds one instruction"):
        convert(multi, "alpaca")


def test_split_is_stratified_and_seeded():
    rows = [{"messages": [{"role": "user", "content": f"q{i}"}], "source": "a" if i < 60 else "b"} for i in range(100)]
    df = make_frame(rows)
    parts = split(df, OutputConfig(validation=0.1), seed=1)
    assert parts["validation"].height == 10 and parts["train"].height == 90
    assert parts["validation"]["source"].value_counts().sort("source")["count"].to_list() == [6, 4]
    again = split(df, OutputConfig(validation=0.1), seed=1)
    assert again["validation"]["id"].to_list() == parts["validation"]["id"].to_list()
    assert split(df, OutputConfig(validation=0.1), seed=2)["validation"]["id"].to_list() != parts["validation"]["id"].to_list()
    assert split(df, OutputConfig(validation=7), seed=1)["validation"].height == 7


def test_run_folder_loads_with_its_splits(tmp_path):
    rows = [{"prompt": f"Question number {i}?", "completion": f"Answer number {i} is here."} for i in range(20)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "r.yaml").write_text("name: split\ninputs: [{path: d.jsonl}]\nsteps: [{exact_dedup: {}}]\n"
                                     "output: {format: alpaca, validation: 0.25}\n")
    from curate.recipe import load_recipe

    out = tmp_path / "out"
    run_recipe(load_recipe(tmp_path / "r.yaml"), out, show_progress=False)
    ds = datasets.load_dataset(str(out))
    assert set(ds) == {"train", "validation"} and (len(ds["train"]), len(ds["validation"])) == (15, 5)
    assert {"instruction", "input", "output"} <= set(ds["train"].column_names)
    # a rerun without validation leaves no stale validation file behind
    (tmp_path / "r.yaml").write_text((tmp_path / "r.yaml").read_text().replace(", validation: 0.25", ""))
    run_recipe(load_recipe(tmp_path / "r.yaml"), out, show_progress=False)
    assert sorted(p.name for p in (out / "data").iterdir()) == ["train.jsonl", "train.parquet"]
    assert set(datasets.load_dataset(str(out))) == {"train"}
