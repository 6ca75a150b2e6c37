"""Output formats, train/validation splits, and a folder that datasets.load_dataset reads with its splits."""

import json
import re
import subprocess
from pathlib import Path

import datasets
import polars as pl
import pytest

from curate.engine import run_recipe
from curate.errors import CurateError
from curate.formats import convert
from curate.output import OutputConfig, split
from curate.records import make_frame, message_text

ROOT = Path(__file__).resolve().parents[1]

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


def test_a_row_without_candidates_is_an_error_naming_it():
    """A best_of_n row whose candidates are null (an earlier run's output had one) stopped the
    preference conversion with AttributeError: 'NoneType' object has no attribute 'to_list'."""
    good = [{"content": "a", "score": 1.0}, {"content": "b", "score": 2.0}]
    df = make_frame([{"messages": CONV}, {"messages": CONV}]).with_columns(
        pl.Series("candidates", [good, None]))
    with pytest.raises(CurateError, match="row 1: a preference pair needs at least two candidates"):
        convert(df, "preference")


def test_inline_reasoning_before_an_empty_answer():
    """A null answer with reasoning stopped the conversion with a TypeError (str.replace(None))."""
    df = make_frame([{"messages": CONV[:2] + [{"role": "assistant", "content": None}], "reasoning": "think"}])
    assert convert(df, "messages")["messages"][0].to_list()[-1]["content"] == "<think>\nthink\n</think>\n\n"


# The converter before it was vectorised (issue 12 part 4): its outputs are the reference.
ROW_BY_ROW = "45cd29632b217618ecf6266c46c5d441898e0196"


def test_conversion_writes_the_files_the_row_by_row_converter_wrote(tmp_path):
    """Every format and reasoning mode, on a recipe's output, on public data and on rows with
    reasoning (some empty, one holding "{answer}" and "$1") and ranked candidates (null scores,
    ties, null contents): the parquet and jsonl files are byte for byte the ones the row-by-row
    converter wrote."""
    import random

    from bench.revisions import load
    from conftest import shared
    from curate.io import read_records, write_jsonl, write_parquet
    from curate.recipe import load_recipe

    if subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", ROW_BY_ROW + "^{commit}"], capture_output=True).returncode:
        pytest.skip(f"the reference revision {ROW_BY_ROW[:7]} is not in this clone's history (a shallow clone?)")
    reference = load(ROW_BY_ROW, "curate.formats")["curate.formats"]
    run_recipe(load_recipe(ROOT / "recipes" / "curate-existing.yaml"), tmp_path / "run", show_progress=False)
    recipe_rows = pl.read_parquet(tmp_path / "run" / "records.parquet")  # the last step's kept rows
    rng = random.Random(0)
    gsm = [json.loads(line) for line in open(shared("gsm8k_train", "train.jsonl"), encoding="utf-8")][:400]
    thought = make_frame([{
        "messages": ([{"role": "system", "content": "Be exact."}] if i % 5 == 0 else [])
        + [{"role": "user", "content": g["question"]}, {"role": "assistant", "content": g["final_answer"]}]
        + ([{"role": "user", "content": "Sure?"}, {"role": "assistant", "content": "Yes."}] if i % 7 == 0 else []),
        "reasoning": [None, "", "think {answer} twice, $1 \\1"][i % 3] if i % 4 == 0 else g["answer"],
    } for i, g in enumerate(gsm)])
    answers = message_text(read_records(shared("quality_cherry_alpaca_ifd", "cherry_alpaca_5_percent.jsonl")), "response")
    ranked = make_frame([{"messages": CONV[1:], "source": "s"}] * 300).with_columns(pl.Series("candidates", [
        [{"content": None if rng.random() < 0.1 else answers[rng.randrange(len(answers))],
          "score": rng.choice([None, 1.0, 2.0, 2.0, float("-inf"), rng.random()])} for _ in range(4)]
        for _ in range(300)]))
    cherry = read_records(shared("quality_cherry_alpaca_ifd", "cherry_alpaca_5_percent.jsonl"))

    def files(rows, name):
        write_parquet(rows, tmp_path / f"{name}.parquet")
        write_jsonl(rows, tmp_path / f"{name}.jsonl")
        return [(tmp_path / f"{name}.{ext}").read_bytes() for ext in ("parquet", "jsonl")]

    compared = 0
    for df in (recipe_rows, cherry, thought, ranked):
        for fmt in ("messages", "alpaca", "sharegpt", "prompt_completion", "preference"):
            if (fmt == "alpaca" and df is thought) or (fmt == "preference" and df is not ranked):
                continue  # multi-turn rows; rows without candidates: errors, compared below
            for mode in ("inline", "field", "drop"):
                new, old = convert(df, fmt, reasoning=mode), reference.convert(df, fmt, reasoning=mode)
                assert new.schema == old.schema and files(new, "new") == files(old, "old"), (fmt, mode)
                compared += 1
    assert compared == 3 * (4 + 4 + 3 + 5)
    for df, fmt in ((thought, "alpaca"), (cherry, "preference"), (ranked.head(3).with_columns(
            pl.col("candidates").list.head(1)), "preference")):
        with pytest.raises(Exception) as old:
            reference.convert(df, fmt)
        with pytest.raises(CurateError, match=re.escape(str(old.value))):
            convert(df, fmt)
