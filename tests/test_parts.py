"""The local engine in parts (issue 12): a run cut into many parts gives what a run in one part
gives; a row-local step never holds more than a part; a killed run redoes only the parts it had not
finished; an edited input row reruns only the parts it reaches; inputs are read a part at a time,
with errors that name the row as if read whole, and bad input anywhere writes nothing."""

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import polars as pl
import pytest
import yaml
from polars.testing import assert_frame_equal

from curate.engine import run_recipe
from curate.errors import CurateError
from curate.io import read_table, scan_table
from curate.recipe import load_recipe
from filters import Decontaminate, Heuristics, MinHashDedup
from tests.conftest import ROOT, shared

EVAL = ROOT / "recipes" / "data" / "eval_questions.jsonl"
RECIPE = {
    "name": "parts",
    "seed": 3,
    "inputs": [{"path": "a.jsonl", "source": "alpaca"}, {"path": "b.jsonl", "source": "gpt4"}],
    "steps": [{"exact_dedup": {}}, {"heuristics": {"min_response_words": 3, "sources": ["alpaca"]}},
              {"minhash_dedup": {"threshold": 0.7, "ngram": 3}},
              {"decontaminate": {"eval_sets": [str(EVAL)], "min_words": 8}},
              {"mix": {"weights": {"alpaca": 2, "gpt4": 1}}}],
    "output": {"validation": 0.1},
}


def alpaca_rows(path: Path, n: int, seed: int) -> list[dict]:
    """n real Alpaca-style rows with planted exact copies, near copies (one word more) and
    copies of an eval question, each of an earlier row."""
    rng = np.random.default_rng(seed)
    rows = read_table(path).head(n).select("instruction", "input", "output").to_dicts()
    evals = [json.loads(line)["question"] for line in EVAL.read_text().splitlines() if line.strip()]
    for i in rng.choice(np.arange(10, n), n // 8, replace=False).tolist():
        j, kind = int(rng.integers(0, i)), i % 3
        rows[i] = ({**rows[j]} if kind == 0 else {**rows[j], "output": rows[j]["output"] + " Indeed."} if kind == 1
                   else {**rows[i], "instruction": evals[i % len(evals)], "input": ""})
    return rows


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("parts")
    for name, path, n in (("a", shared("quality_cherry_alpaca_ifd", "cherry_alpaca_5_percent.jsonl"), 700),
                          ("b", shared("nuggets_alpaca_gpt4", "alpaca_gpt4_bad_scored.jsonl"), 500)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in alpaca_rows(path, n, len(name))))
    return folder


def write_recipe(folder: Path, part_rows: int, **changes) -> Path:
    recipe = {**RECIPE, "engine": {"part_rows": part_rows}, **changes}
    path = folder / f"r{part_rows}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def data_rows(out: Path, split: str, ext: str) -> tuple[list[Path], pl.DataFrame | str]:
    files = sorted((out / "data").glob(f"{split}*.{ext}"))
    if ext == "jsonl":
        return files, "".join(f.read_text() for f in files)
    return files, pl.concat([pl.read_parquet(f) for f in files])


def markers(out: Path) -> list[dict]:
    """Each step's marker (the funnel's parts: how many, how many reused)."""
    return [json.loads(p.read_text()) for p in sorted((out / "steps").glob("0[1-9]-*/_DONE.json"))]


def parts(out: Path) -> list[int]:
    return [m["parts"] for m in markers(out)]


def strip(obj, keys=("seconds", "finished", "parts", "parts_reused", "data_files")):
    if isinstance(obj, dict):
        return {k: strip(v, keys) for k, v in obj.items() if k not in keys}
    return [strip(v, keys) for v in obj] if isinstance(obj, list) else obj


def test_a_run_in_many_parts_equals_a_run_in_one(data, tmp_path):
    """1,200 rows of two real sets with planted copies and eval questions, through exact dedup,
    routed heuristics, MinHash, decontamination and mix, in one part and in parts of 97 rows:
    the same kept rows with every score, the same rejects with reasons and details, the same data
    (in 97-row shards, in the order of the one file), the same report."""
    one = run_recipe(load_recipe(write_recipe(data, 100_000)), tmp_path / "one", show_progress=False)
    many = run_recipe(load_recipe(write_recipe(data, 97)), tmp_path / "many", show_progress=False)
    # routed heuristics: its parts, then the passed-through rows' parts, in the order one part has them
    assert parts(tmp_path / "many") == [13, 13, 26, 26, 26] and parts(tmp_path / "one") == [1, 1, 2, 2, 2]
    for name in ("records.parquet", "rejects.parquet"):
        assert_frame_equal(pl.read_parquet(tmp_path / "one" / name), pl.read_parquet(tmp_path / "many" / name))
    for split in ("train", "validation"):
        (single,), rows = data_rows(tmp_path / "one", split, "parquet")
        shards, sharded = data_rows(tmp_path / "many", split, "parquet")
        assert single.name == f"{split}.parquet" and len(shards) == -(-rows.height // 97)
        assert shards[0].name == f"{split}-00000-of-{len(shards):05d}.parquet"
        assert_frame_equal(rows, sharded)
        assert data_rows(tmp_path / "one", split, "jsonl")[1] == data_rows(tmp_path / "many", split, "jsonl")[1]
    assert strip(one) == strip(many)
    dropped = {s["kind"]: s["dropped"] for s in many["steps"][1:]}
    assert dropped["exact_dedup"]["exact duplicate"] > 20 and dropped["minhash_dedup"]["near duplicate"] > 20
    assert dropped["decontaminate"]["overlaps eval set"] > 20 and dropped["mix"]["over mixture quota"] > 100
    loaded = datasets.load_dataset(str(tmp_path / "many"))  # the shards load as the splits
    assert {k: len(v) for k, v in loaded.items()} == many["rows"]["splits"]


def test_parts_worked_at_once_give_what_one_at_a_time_gives(data, tmp_path, monkeypatch):
    """engine.workers: steps that allow it (heuristics, decontamination, both dedups) work several
    parts at once in threads; the run's files are those of one part at a time."""
    import threading

    at_once = {"now": 0, "most": 0}
    lock = threading.Lock()
    real = Heuristics.run

    def counted(self, df, ctx):
        with lock:
            at_once["now"] += 1
            at_once["most"] = max(at_once["most"], at_once["now"])
        time.sleep(0.2)  # long enough for the other threads to come in, if there are any
        try:
            return real(self, df, ctx)
        finally:
            with lock:
                at_once["now"] -= 1
    monkeypatch.setattr(Heuristics, "run", counted)

    runs = {}
    for workers in (1, 3):
        at_once["most"] = 0
        recipe = write_recipe(data, 97, engine={"part_rows": 97, "workers": workers})
        runs[workers] = run_recipe(load_recipe(recipe), tmp_path / f"w{workers}", show_progress=False)
        assert at_once["most"] == min(workers, 3), (workers, at_once)
    for name in ("records.parquet", "rejects.parquet"):
        assert_frame_equal(pl.read_parquet(tmp_path / "w1" / name), pl.read_parquet(tmp_path / "w3" / name))
    for split in ("train", "validation"):
        assert_frame_equal(data_rows(tmp_path / "w1", split, "parquet")[1], data_rows(tmp_path / "w3", split, "parquet")[1])
    assert strip(runs[1], keys=("seconds", "finished", "recipe")) == strip(runs[3], keys=("seconds", "finished", "recipe"))


def test_part_compression_changes_the_parts_files_not_the_rows_and_redoes_nothing(data, tmp_path):
    """engine.part_compression: the steps' parts in zstd are smaller, the kept files the same bytes,
    and a rerun into the same folder with another compression redoes no step."""
    import pyarrow.parquet as pq

    sizes = {}
    for codec in ("uncompressed", "zstd"):
        recipe = write_recipe(data, 300, engine={"part_rows": 300, "part_compression": codec})
        run_recipe(load_recipe(recipe), tmp_path / codec, show_progress=False)
        first = tmp_path / codec / "steps" / "02-heuristics" / "parts" / "00000.parquet"
        assert pq.ParquetFile(first).metadata.row_group(0).column(0).compression == codec.upper()
        sizes[codec] = sum(f.stat().st_size for f in (tmp_path / codec / "steps").rglob("*.parquet"))
    assert sizes["zstd"] < 0.7 * sizes["uncompressed"]
    for path in sorted((tmp_path / "zstd" / "data").iterdir()):
        assert path.read_bytes() == (tmp_path / "uncompressed" / "data" / path.name).read_bytes(), path.name
    again = run_recipe(load_recipe(write_recipe(data, 300, engine={"part_rows": 300, "part_compression": "lz4"})),
                       tmp_path / "zstd", show_progress=False)
    assert all(s["skipped"] for s in again["steps"][1:])


def test_a_row_local_step_never_holds_more_than_a_part(data, tmp_path, monkeypatch):
    """Heuristics and decontamination run on one part at a time; MinHash's state and apply see a
    part, its resolve sees the state (hashes and band keys, no text) and reads back only the
    texts of candidate pairs."""
    seen: dict[str, list] = {}

    def spy(cls, name, record):
        real = getattr(cls, name)

        def wrapped(self, *args, **kwargs):
            seen.setdefault(f"{cls.__name__}.{name}", []).append(record(*args))
            return real(self, *args, **kwargs)
        monkeypatch.setattr(cls, name, wrapped)

    spy(Heuristics, "run", lambda df, ctx: df.height)
    spy(Decontaminate, "run", lambda df, ctx: df.height)
    spy(MinHashDedup, "state", lambda df: df.height)
    spy(MinHashDedup, "apply", lambda df, rows, resolved: df.height)
    fetched, schemas = [], []
    real_resolve = MinHashDedup.resolve

    def resolve(self, state, ctx, fetch):
        schemas.append(state.schema)

        def counted(rows, columns):
            fetched.append((len(rows), tuple(columns)))
            return fetch(rows, columns)
        return real_resolve(self, state, ctx, counted)
    monkeypatch.setattr(MinHashDedup, "resolve", resolve)

    report = run_recipe(load_recipe(write_recipe(data, 97)), tmp_path / "out", show_progress=False)
    for name in ("Heuristics.run", "Decontaminate.run", "MinHashDedup.state", "MinHashDedup.apply"):
        assert len(seen[name]) >= 13 and max(seen[name]) <= 97, (name, seen[name])
    (schema,) = schemas
    assert all(t.is_integer() for t in schema.values()), schema  # band keys and content hashes: no text
    rows_in = next(s["rows_in"] for s in report["steps"] if s["kind"] == "minhash_dedup")
    texts = [n for n, columns in fetched if "messages" in columns and n]
    assert len(texts) == 1 and 0 < texts[0] < rows_in / 2  # one read-back, of the candidates' texts only


def test_an_edited_input_row_reruns_only_the_parts_it_reaches(data, tmp_path):
    """A row-local step redoes the part holding the edited row; a global step redoes its state of
    that part, its resolve, and every part (its fingerprint covers every row scored together)."""
    folder = tmp_path / "d"
    folder.mkdir()
    for name in ("a.jsonl", "b.jsonl"):
        (folder / name).write_text((data / name).read_text())
    recipe = write_recipe(folder, 97, steps=[{"heuristics": {"min_response_words": 3}}, {"exact_dedup": {}}])
    first = run_recipe(load_recipe(recipe), tmp_path / "out", show_progress=False)
    first_done = time.time()
    time.sleep(0.01)
    lines = (folder / "b.jsonl").read_text().splitlines()
    row = json.loads(lines[-3])
    lines[-3] = json.dumps({**row, "output": row["output"] + " (edited)"})
    (folder / "b.jsonl").write_text("\n".join(lines) + "\n")
    again = run_recipe(load_recipe(recipe), tmp_path / "out", show_progress=False)
    redone = {s["kind"]: m["parts"] - m["parts_reused"] for s, m in zip(again["steps"][1:], markers(tmp_path / "out"))}
    assert redone == {"heuristics": 1, "exact_dedup": 13}, redone
    states = [json.loads(p.read_text()) for p in sorted((tmp_path / "out" / "steps" / "02-exact_dedup" / "state").glob("*.json"))]
    assert len(states) == 13 and sum(os.path.getmtime(p) > first_done for p in
                                     (tmp_path / "out" / "steps" / "02-exact_dedup" / "state").glob("*.json")) == 1
    fresh = run_recipe(load_recipe(recipe), tmp_path / "fresh", show_progress=False)
    for name in ("records.parquet", "rejects.parquet"):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "fresh" / name).read_bytes()
    assert strip(again) == strip(fresh) and first["rows"]["in"] == again["rows"]["in"]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigkill_mid_run_then_rerun_redoes_only_unfinished_parts(tmp_path):
    """A run of 24,000 rows in parts of 1,000 is killed with SIGKILL in the middle of its
    heuristics step; the rerun reuses every part whose marker was written and redoes the others
    (counted), and the folder ends byte-identical to an uninterrupted run's."""
    path = shared("nuggets_alpaca_gpt4", "alpaca_gpt4_bad_scored.jsonl")
    rows = alpaca_rows(path, 8000, 7)
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({**r, "output": r["output"] + f" ({k})"}) + "\n"
                                               for k in range(3) for r in rows))
    recipe = {**RECIPE, "inputs": [{"path": "in.jsonl", "source": "alpaca"}], "engine": {"part_rows": 1000},
              "steps": RECIPE["steps"][:4]}
    recipe["steps"][1] = {"heuristics": {"min_response_words": 3}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    cmd = lambda out: [sys.executable, "-m", "curate.cli", "run", str(tmp_path / "r.yaml"), "--out", str(out), "--quiet"]  # noqa: E731
    reference = subprocess.run(cmd(tmp_path / "ref"), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert reference.returncode == 0, reference.stderr

    out = tmp_path / "out"
    parts = out / "steps" / "02-heuristics" / "parts"
    proc = subprocess.Popen(cmd(out), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 600
    while not (parts / "00008.json").exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait(60)
    proc.stderr.close()
    steps = ("01-exact_dedup", "02-heuristics", "03-minhash_dedup", "04-decontaminate")
    finished = {s: len(list((out / "steps" / s / "parts").glob("[0-9]*[0-9].json"))) for s in steps}
    assert finished["01-exact_dedup"] == 24 and 8 < finished["02-heuristics"] < 24 and finished["03-minhash_dedup"] == 0

    rerun = subprocess.run(cmd(out), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    funnel = {s["step"]: s for s in json.loads((out / "report.json").read_text())["steps"][1:]}
    redone = {}
    for name, s in funnel.items():  # a finished step is reused whole; the others count their reused parts
        m = json.loads((out / "steps" / name / "_DONE.json").read_text())
        redone[name] = 0 if s["skipped"] else m["parts"] - m["parts_reused"]
        assert m["parts"] == 24 and redone[name] == 24 - finished[name], (name, s["skipped"], m, finished[name])
    for rel in ["records.parquet", "rejects.parquet", *(f"data/{p.name}" for p in (tmp_path / "ref" / "data").iterdir())]:
        assert (out / rel).read_bytes() == (tmp_path / "ref" / rel).read_bytes(), rel
    print(f"\nkilled with {finished} part markers written; the rerun redid {redone} parts")


# Inputs read a part at a time ------------------------------------------------------------------
def test_scanning_gives_what_reading_whole_gives(tmp_path):
    """JSON Lines, Parquet, a folder of Parquet files and a saved `datasets` folder, in frames of
    1,000 rows: the same rows and columns as reading them whole."""
    src = shared("nuggets_alpaca_gpt4", "alpaca_gpt4_bad_scored.jsonl")
    whole = read_table(src)
    whole.write_parquet(tmp_path / "one.parquet", row_group_size=700)
    (tmp_path / "folder").mkdir()
    whole.head(4000).write_parquet(tmp_path / "folder" / "a.parquet")
    whole.slice(4000).drop("score").write_parquet(tmp_path / "folder" / "b.parquet")
    datasets.Dataset.from_polars(whole).save_to_disk(str(tmp_path / "saved"))
    for path in (src, tmp_path / "one.parquet", tmp_path / "folder", tmp_path / "saved"):
        frames = list(scan_table(path, 1000))
        assert len(frames) >= 9 and max(f.height for f in frames) <= 1000
        assert_frame_equal(pl.concat(frames), read_table(path))
    assert sum(f.height for f in scan_table(src, 1000, limit=2500)) == 2500


@pytest.mark.parametrize("case", ["plain", "numbers among text", "list among text", "blank lines", "date", "gzip"])
def test_json_lines_scanned_in_chunks_read_as_whole(case, tmp_path, caplog):
    """JSON Lines scanned 1,000 lines at a time (each chunk by Arrow where it reads as Python does)
    give the frame reading the file whole gives, with its warnings and errors, whatever the
    chunks disagree on: numbers in one chunk and text in another are text with a warning, a list
    in one chunk and text in another is an error naming both lines, a blank line in the middle is
    skipped (and not counted by `limit`), a date in the third chunk stays text."""
    rows = [{"instruction": f"Question {i}?", "output": f"Answer {i}.", "n": i} for i in range(3000)]
    lines = [json.dumps(r) for r in rows]
    if case == "numbers among text":  # the third chunk all text: Arrow reads each chunk alone
        lines[2000:] = [json.dumps({**r, "n": f"number {r['n']}"}) for r in rows[2000:]]
    if case == "list among text":
        lines[2000:] = [json.dumps({**r, "n": [r["n"]]}) for r in rows[2000:]]
    if case == "blank lines":
        lines[998:998] = ["", "  "]  # the last lines of the first chunk
    if case == "date":
        lines[2500] = json.dumps({**rows[2500], "gold": "2020-01-01"})
    path = tmp_path / ("rows.jsonl.gz" if case == "gzip" else "rows.jsonl")
    text = ("\n".join(lines) + "\n\n").encode()
    path.write_bytes(gzip.compress(text) if case == "gzip" else text)
    if case == "list among text":
        for read in (read_table, lambda p: pl.concat(scan_table(p, 1000), how="diagonal_relaxed")):
            with pytest.raises(CurateError, match=r"rows\.jsonl:2001: 'n' is a list here but number on line 1"):
                read(path)
        return
    caplog.clear()
    whole = read_table(path)
    warned = [r.getMessage() for r in caplog.records]
    caplog.clear()
    frames = list(scan_table(path, 1000))
    assert [r.getMessage() for r in caplog.records] == warned
    assert_frame_equal(pl.concat(frames), whole)
    assert ("holds numbers" in " ".join(warned)) == (case == "numbers among text")
    if case == "date":
        assert whole.schema["gold"] == pl.String
    head = pl.concat(scan_table(path, 1000, limit=2100))  # types as the first 2,100 rows give them
    assert head.height == 2100 and head["instruction"].equals(whole["instruction"].head(2100))


def big_jsonl(tmp_path: Path, bad_line: str | None = None, at: int = 2900) -> Path:
    rows = [json.dumps({"instruction": f"Question {i}?", "output": f"Answer number {i} is here."}) for i in range(3000)]
    if bad_line is not None:
        rows[at - 1] = bad_line
    path = tmp_path / "big.jsonl"
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize("bad, message", [
    ('{"instruction": "Q", "output": ', r"big\.jsonl:2900: malformed JSON"),
    ('[1, 2]', r"big\.jsonl:2900: expected a JSON object per line"),
    ('{"instruction": ["a", "list"], "output": "x"}', r"big\.jsonl:2900: 'instruction' is a list here but text on line 1"),
])
def test_bad_input_in_a_later_part_names_its_line_and_writes_nothing(tmp_path, bad, message):
    big_jsonl(tmp_path, bad)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({"name": "big", "inputs": [{"path": "big.jsonl"}],
                                                     "engine": {"part_rows": 500}, "steps": [{"heuristics": {}}]}))
    with pytest.raises(CurateError, match=message):
        run_recipe(load_recipe(tmp_path / "r.yaml"), tmp_path / "out", show_progress=False)
    assert not (tmp_path / "out").exists()


def test_invalid_rows_of_a_later_part_are_named_by_their_row(tmp_path):
    big_jsonl(tmp_path, '{"instruction": "", "output": "An answer to nothing."}', at=2345)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({"name": "big", "inputs": [{"path": "big.jsonl"}],
                                                     "engine": {"part_rows": 500}, "steps": [{"heuristics": {}}]}))
    run_recipe(load_recipe(tmp_path / "r.yaml"), tmp_path / "out", show_progress=False)
    rejects = pl.read_parquet(tmp_path / "out" / "rejects.parquet").filter(pl.col("step") == "inputs")
    assert rejects["detail"].to_list() == [f"{tmp_path / 'big.jsonl'} row 2345: turn 1 is empty"]


def test_a_rerun_with_fewer_parts_removes_the_parts_it_no_longer_has(data, tmp_path):
    out = tmp_path / "out"
    run_recipe(load_recipe(write_recipe(data, 97)), out, show_progress=False)
    many = sorted(p.name for p in (out / "steps" / "03-minhash_dedup" / "parts").iterdir())
    run_recipe(load_recipe(write_recipe(data, 500)), out, show_progress=False)
    few = sorted(p.name for p in (out / "steps" / "03-minhash_dedup" / "parts").iterdir())
    assert len(many) == 26 * 3 and len(few) == 6 * 3  # after the routed heuristics: twice the input's parts
    assert sorted(p.name for p in (out / "steps" / "03-minhash_dedup" / "state").iterdir()) == [
        f"0000{i}.{ext}" for i in range(6) for ext in ("json", "parquet")]
    manifest = set(json.loads((out / "_MANIFEST.json").read_text())["files"])
    present = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert present - {"_MANIFEST.json", ".curate.lock"} <= manifest
    shards = sorted(p.name for p in (out / "data").glob("train-*.parquet"))
    assert len(shards) > 1 and all(name.endswith(f"-of-{len(shards):05d}.parquet") for name in shards)


def test_rows_sampled_from_parts_hold_only_their_own_text(tmp_path):
    """A report section keeps a sample of every part's rows: the sample must not keep each part's
    whole text alive (polars' gather shares string buffers; 10M rows held 8.4 GB that way)."""
    from curate.parts import Part
    from curate.report.compute import read_rows, sample_positions

    parts = []
    for i in range(3):
        df = pl.DataFrame({"id": [f"{i}-{j}" for j in range(4000)],
                           "messages": [[{"role": "user", "content": f"{i} {j} " + "word " * 200}] for j in range(4000)]})
        path = tmp_path / f"{i}.parquet"
        df.write_parquet(path)
        parts.append(Part(path, "", df.height))
    sample = read_rows(parts, ["id", "messages"], sample_positions(12_000, 30, salt=1))
    from polars import CompatLevel

    arrow = sample.to_arrow(compat_level=CompatLevel.newest())  # polars' own buffers, as they are held
    held = sum(b.size for column in arrow.columns for chunk in column.chunks for b in chunk.buffers() if b)
    assert sample.height == 30 and held < 200_000, held  # 30 rows of ~1 KB, not 3 parts of ~4 MB
