"""The report is computed once from what the engine holds, then rendered.

It used to re-read every step's parquet files after the run had just held them, read train.parquet
twice (row counts, then the card's sizes) and tokenise every final row three times (prompt,
response, whole text). The reads and the tokeniser calls are watched by wrapping the real
functions (they still run)."""

import json
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from curate.engine import run_recipe
from curate.report.write import rebuild_report
from curate.recipe import load_recipe
from curate.tokens import TokenCounter

RECIPE = """
name: once
inputs: [{path: d.jsonl, source: sea}]
steps:
  - heuristics: {min_response_words: 3}
  - exact_dedup: {field: prompt}
  - minhash_dedup: {field: text}
output: {validation: 0.2}
"""


def watch(monkeypatch) -> tuple[list[tuple[str, str]], list[int]]:
    """Every parquet file read (function, path; by polars or pyarrow) and the size of every batch tokenised."""
    reads, batches = [], []

    def wrap(owner, name, path_arg=0):
        real = getattr(owner, name)

        def spy(*args, **kwargs):
            reads.append((name, str(args[path_arg] if args else kwargs.get("source"))))
            return real(*args, **kwargs)
        monkeypatch.setattr(owner, name, spy)

    for fn in ("read_parquet", "scan_parquet", "read_parquet_schema"):
        wrap(pl, fn)
    wrap(pq, "read_table")
    real_count = TokenCounter.count

    def count(self, texts):
        out = real_count(self, texts)
        batches.append(len(out))
        return out
    monkeypatch.setattr(TokenCounter, "count", count)
    return reads, batches


def test_the_run_report_reads_no_step_file_and_tokenises_each_turn_once(tmp_path, monkeypatch):
    rows = [{"prompt": f"Tell me fact number {i % 20} about the sea.", "completion": "The sea is large and salty. " * (1 + i % 5)}
            for i in range(60)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "r.yaml").write_text(RECIPE)
    out = tmp_path / "out"
    reads, batches = watch(monkeypatch)
    report = run_recipe(load_recipe(tmp_path / "r.yaml"), out, show_progress=False)

    assert not [p for _, p in reads if "/steps/" in p], reads  # one part: the sections came from the frames in hand
    assert sum(Path(p).name == "train.parquet" for _, p in reads) == 1  # rows and bytes from one read
    final = pl.read_parquet(out / "records.parquet")
    assert batches == [final["messages"].list.len().sum()]  # every turn of every final row, once
    assert report["rows"]["out"] == final.height == 20

    # what the card says of the splits is what the files hold
    card = (out / "README.md").read_text()
    for split, n in report["rows"]["splits"].items():
        table = pq.read_table(out / "data" / f"{split}.parquet")
        assert table.num_rows == n and f"num_bytes: {table.nbytes}" in card

    # `curate report` reads each step's output parts once (and their schemas, to pick the columns to read)
    reads.clear()
    again = rebuild_report(out)
    step_reads = sorted(p for fn, p in reads if "/steps/" in p and fn != "read_parquet_schema")
    outputs = [f for f in (out / "steps").glob("0[1-9]-*/parts/*.parquet")]
    assert step_reads == sorted(map(str, outputs)) and len(step_reads) == 6
    for key in ("rows", "filters", "lengths", "sources", "split_bytes", "length_tokenizer"):
        assert again[key] == report[key], key
