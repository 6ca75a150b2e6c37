"""Readers map the common dataset shapes onto records; bad input gets an error naming file and line."""

import hashlib
import json

import datasets
import polars as pl
import pytest

from curate.errors import CurateError
from curate.io import read_records, read_table, write_jsonl, write_parquet
from curate.records import SCHEMA, content_id
from tests.conftest import SHARED_DATA


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


def test_column_ids_equal_row_ids_on_awkward_text():
    """content_ids (polars builds the canonical JSON for a column) gives content_id's id for every
    row: every control character, quotes, backslashes, non-ASCII, null fields, empty and null turn
    lists, with and without reasoning (empty reasoning counts as none)."""
    import random

    from curate.records import MESSAGES, content_ids

    rng = random.Random(0)
    alphabet = [chr(c) for c in range(0x20)] + list('"\\/ab é中😀\u2028\x7f') + ["\\u0000", "\\n"]
    text = lambda: "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))  # noqa: E731
    messages = [[{"role": rng.choice(["user", "assistant", None, text()]), "content": rng.choice([None, text(), text()])}
                 for _ in range(rng.randint(0, 3))] for _ in range(3000)] + [None, []]
    reasoning = [rng.choice([None, "", text(), text()]) for _ in messages]
    got = content_ids(pl.Series(messages, dtype=MESSAGES), pl.Series(reasoning, dtype=pl.String)).to_list()
    assert got == [canonical_id(m, r) for m, r in zip(messages, reasoning)]
    assert content_ids(pl.Series(messages, dtype=MESSAGES)).to_list() == [canonical_id(m) for m in messages]


@pytest.mark.parametrize("name,limit", REAL)
def test_read_ids_unchanged_on_real_data(name, limit, tmp_path):
    path = SHARED_DATA / name
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
def test_cells_become_the_text_python_writes():
    """The column-wise mapping gives each cell the text str() gives it, as the row-by-row reader it
    replaced did (polars writes 1e-05 as "0.00001" and True as "true"); Python's whitespace is
    stripped (U+001C is whitespace to Python, not to polars); a false source falls back to the
    input's name."""
    from curate.io import to_records

    df = pl.DataFrame({"instruction": [" Add\x1c", "Say hi."], "input": [1e-05, None], "output": [True, None],
                       "source": [0, 7]})
    got = to_records(df, source="d").select("messages", "source").to_dicts()
    assert got == [{"messages": [{"role": "user", "content": "Add\n\n1e-05"}, {"role": "assistant", "content": "True"}],
                    "source": "d"},
                   {"messages": [{"role": "user", "content": "Say hi."}], "source": "7"}]


def test_sharegpt_and_messages_edge_rows():
    """A turn that is not an object has no speaker and no text; an unknown speaker keeps its name
    (split_invalid rejects the row); a null row has no turns; extra fields of a turn are dropped;
    a message that is not a {role, content} object is an error naming the row."""
    from curate.io import to_records

    conv = pl.DataFrame({"conversations": [[{"from": "Human", "value": "hi"}, None, {"from": "tool", "value": None},
                                            {"from": "GPT", "value": "yo"}], None]})
    assert to_records(conv)["messages"].to_list() == [
        [{"role": "user", "content": "hi"}, {"role": "", "content": ""}, {"role": "tool", "content": ""},
         {"role": "assistant", "content": "yo"}], []]
    chat = pl.DataFrame({"messages": [[{"role": "user", "content": 2.5, "name": "x"}], None]})
    assert to_records(chat)["messages"].to_list() == [[{"role": "user", "content": "2.5"}], []]
    holes = pl.DataFrame({"messages": [[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}, None]]})
    with pytest.raises(CurateError, match=r"<frame>: row 2: 'messages' must be a list of \{role, content\} objects"):
        to_records(holes)
    with pytest.raises(CurateError, match=r"<frame>: row 3: 'conversations' must be a list"):
        to_records(pl.DataFrame({"conversations": [None, None, "text"]}))


def test_json_lines_read_by_arrow_or_else_as_python_reads_them(tmp_path):
    """A plain JSON Lines file is read by Arrow's columnar reader; where Arrow would read it
    otherwise than Python's json does, the line-by-line reader reads it: a date stays text, an
    integer beyond 64 bits stays exact, two objects on one line or one over two lines are
    malformed JSON on that line, nesting Arrow's parser would overflow its stack on is refused by
    name, bytes that are not UTF-8 are named by line."""
    from curate.textfiles import arrow_jsonl

    plain = write_lines(tmp_path / "plain.jsonl", [json.dumps({"prompt": f"p{i}", "score": i / 3}) for i in range(5)])
    assert arrow_jsonl(plain.read_bytes()) is not None
    assert read_table(plain).equals(pl.DataFrame({"prompt": [f"p{i}" for i in range(5)], "score": [i / 3 for i in range(5)]}))

    dates = write_lines(tmp_path / "dates.jsonl", ['{"prompt": "p", "gold": "2020-01-01"}'])
    assert read_table(dates).schema["gold"] == pl.String
    big = write_lines(tmp_path / "big.jsonl", ['{"prompt": "p", "gold": 12345678901234567890}'])
    assert read_table(big)["gold"].to_list() == [12345678901234567890]
    for lines, line in ((['{"prompt": "a"}', '{"prompt": "b"} {"prompt": "c"}'], 2), (['{"prompt":', '"a"}'], 1)):
        with pytest.raises(CurateError, match=rf"\.jsonl:{line}: malformed JSON"):
            read_table(write_lines(tmp_path / "two.jsonl", lines))
    deep = write_lines(tmp_path / "deep.jsonl", ['{"prompt": "a"}', '{"prompt": ' + "[" * 20_000 + "]" * 20_000 + "}"])
    with pytest.raises(CurateError, match=r"deep\.jsonl:2: malformed JSON \(nested too deeply\)"):
        read_table(deep)
    (tmp_path / "bytes.jsonl").write_bytes(b'{"prompt": "a"}\n{"prompt": "b\xff"}\n')
    with pytest.raises(CurateError, match=r"bytes\.jsonl:2: not UTF-8 text"):
        read_table(tmp_path / "bytes.jsonl")
