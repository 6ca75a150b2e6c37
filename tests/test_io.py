"""Readers map the common dataset shapes onto records; bad input gets an error naming file and line."""

import hashlib
import json
from pathlib import Path

import datasets
import polars as pl
import pytest

from curate.errors import CurateError
from curate.io import read_records, read_table, write_jsonl, write_parquet
from curate.records import SCHEMA, content_id


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_alpaca_shape_joins_instruction_and_input(tmp_path):
    p = write_lines(tmp_path / "a.jsonl", [
        json.dumps({"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}),
        json.dumps({"instruction": "Say hi.", "input": "", "output": "Hi!"}),
    ])
    df = read_records(p)
    assert df["messages"].to_list() == [
        [{"role": "user", "content": "Add the numbers.\n\n2 and 3"}, {"role": "assistant", "content": "5"}],
        [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}],
    ]
    assert df["source"].to_list() == ["a", "a"]
    assert list(df.schema.items())[: len(SCHEMA)] == list(SCHEMA.items())
    assert df["id"][0] == content_id(df["messages"][0].to_list())


def test_sharegpt_and_messages_shapes(tmp_path):
    conv = [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]
    p = write_lines(tmp_path / "s.jsonl", [json.dumps({"conversations": conv})])
    msgs = read_records(p)["messages"][0].to_list()
    assert [m["role"] for m in msgs] == ["system", "user", "assistant"]
    p2 = write_lines(tmp_path / "m.json", [json.dumps([{"messages": msgs}])])
    assert read_records(p2)["messages"][0].to_list() == msgs


def test_parquet_csv_and_datasets_folder_round_trip(tmp_path):
    src = pl.DataFrame({"prompt": ["What is 2+2?", "Name a colour."], "completion": ["4", "Blue"]})
    src.write_parquet(tmp_path / "d.parquet")
    src.write_csv(tmp_path / "d.csv")
    datasets.Dataset.from_polars(src).save_to_disk(str(tmp_path / "hf"))
    frames = [read_records(tmp_path / n) for n in ("d.parquet", "d.csv", "hf")]
    for df in frames:
        assert df["messages"].to_list() == frames[0]["messages"].to_list()
        assert df["messages"][1].to_list()[1] == {"role": "assistant", "content": "Blue"}


def test_explicit_columns_and_gold(tmp_path):
    p = write_lines(tmp_path / "g.jsonl", [json.dumps({"question": "2+2?", "solution": "...", "final": 4})])
    df = read_records(p, prompt="question", gold="final")
    assert df["messages"][0].to_list() == [{"role": "user", "content": "2+2?"}]
    assert df["gold"].to_list() == ["4"]


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    p = write_lines(tmp_path / "bad.jsonl", [json.dumps({"prompt": "ok"}), '{"prompt": "broken', json.dumps({"prompt": "x"})])
    with pytest.raises(CurateError, match=r"bad\.jsonl:2: malformed JSON"):
        read_records(p)


def test_empty_file(tmp_path):
    for name in ("e.jsonl", "e.csv", "e.json"):
        (tmp_path / name).write_text("")
        with pytest.raises(CurateError, match=rf"{name}: the file is empty"):
            read_records(tmp_path / name)


def test_no_usable_text_column_lists_the_columns(tmp_path):
    p = write_lines(tmp_path / "c.jsonl", [json.dumps({"foo": 1, "bar": "x"})])
    with pytest.raises(CurateError, match=r"no usable text column.*\['foo', 'bar'\]"):
        read_records(p)
    with pytest.raises(CurateError, match=r"column 'nope' \(given as prompt\) not found"):
        read_records(write_lines(tmp_path / "d.jsonl", [json.dumps({"prompt": "x"})]), prompt="nope")


def test_writers_round_trip_through_arrow_and_datasets(tmp_path):
    df = read_records(write_lines(tmp_path / "a.jsonl", [json.dumps({"prompt": "p", "completion": "c"})]))
    write_parquet(df, tmp_path / "o.parquet")
    write_jsonl(df, tmp_path / "o.jsonl")
    assert read_table(tmp_path / "o.parquet").equals(df)
    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "o.parquet"), split="train")
    assert ds[0]["messages"] == df["messages"][0].to_list()
    back = read_records(tmp_path / "o.jsonl")
    assert back["messages"].to_list() == df["messages"].to_list()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left


def test_plain_text_documents(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("First document.\n\nSecond paragraph.")
    (tmp_path / "docs" / "b.txt").write_text("Another one.")
    df = read_records(tmp_path / "docs")
    assert df["messages"].to_list() == [[{"role": "user", "content": "First document.\n\nSecond paragraph."}],
                                        [{"role": "user", "content": "Another one."}]]
    assert df["source"].to_list() == ["a", "b"]
    assert read_records(tmp_path / "docs" / "b.txt")["messages"][0].to_list()[0]["content"] == "Another one."


# Ids --------------------------------------------------------------------------------------------

def canonical_id(messages, reasoning=None):
    """The id as defined (curate.records.content_id), written out: blake2b of the canonical JSON."""
    canon = json.dumps([[m["role"], m["content"]] for m in messages or []] + ([reasoning] if reasoning else []),
                       ensure_ascii=False, separators=(",", ":"))
    return hashlib.blake2b(canon.encode("utf-8"), digest_size=8).hexdigest()


# Ids key every cache and resume state: the values read must never change (a few files keep the test fast).
REAL = [("gsm8k_train/train.jsonl", 3000), ("dedup_gpteacher_toolformer/toolformer_labeled.jsonl", 3000)]


@pytest.mark.parametrize("name,limit", REAL)
def test_read_ids_unchanged_on_real_data(name, limit, tmp_path):
    path = Path("/work/shared/data") / name
    if not path.exists():
        pytest.skip(f"{path} is not here")
    df = read_records(path, limit=limit)
    assert df["id"].to_list() == [canonical_id(m) for m in df["messages"].to_list()]  # read ids ignore reasoning
    write_parquet(df, tmp_path / "records.parquet")  # an earlier run's records, read back as messages
    assert read_records(tmp_path / "records.parquet")["id"].to_list() == df["id"].to_list()


def test_generated_rows_are_hashed_once(monkeypatch):
    """build_rows used to hash every row twice: conform filled the missing ids, then with_ids redid them."""
    from synth.base import build_rows

    calls = []
    blake2b = hashlib.blake2b
    monkeypatch.setattr(hashlib, "blake2b", lambda *a, **k: calls.append(1) or blake2b(*a, **k))
    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}], "meta": {"seed": i}}
            for i in range(5)]
    df = build_rows(rows)
    assert len(calls) == 5
    assert df["id"].to_list() == [canonical_id(r["messages"]) for r in rows]
