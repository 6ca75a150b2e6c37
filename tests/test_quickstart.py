"""End to end: the quickstart recipe on the embedded model, through the real CLI."""

import json
import subprocess
import sys
from pathlib import Path

import datasets
import polars as pl
import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def curate(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "curate.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    pytest.importorskip("llama_cpp", reason="needs the embedded extra: pip install -e '.[embedded]'")
    out = tmp_path_factory.mktemp("qs") / "out"
    proc = curate("run", "recipes/quickstart.yaml", "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_writes_every_output(quickstart):
    out, proc = quickstart
    for rel in ("data/train.parquet", "data/train.jsonl", "rejects.parquet", "report.json", "README.md"):
        assert (out / rel).is_file(), rel
    report = json.loads((out / "report.json").read_text())
    steps = {s["kind"]: s for s in report["steps"]}
    assert steps["inputs"]["rows_out"] == 32
    llm = steps["responses"]["llm"]
    # 32 requests; one seed repeats another word for word, so that identical request is sent once
    assert (llm["requests"], llm["sent"], llm["cache_hits"]) == (32, 31, 1) and llm["completion_tokens"] > 0
    # the seeds hold four deliberate duplicate prompts: three equal after normalisation, one near
    # ("... during the day." / "... during the day time."); dedup works on prompts, so this is exact
    # unless heuristics dropped one of the pair first
    assert steps["exact_dedup"]["dropped"].get("exact duplicate", 0) + steps["minhash_dedup"]["dropped"].get("near duplicate", 0) >= 3
    assert steps["minhash_dedup"]["dropped"] in ({"near duplicate": 1}, {})
    assert report["rows"]["out"] + report["rows"]["rejected"] == 32
    # no answer cut at max_tokens is kept (at 160 tokens, 9 of 28 kept rows ended mid-sentence), and
    # validation checks it
    kept = pl.read_parquet(out / "records.parquet")
    assert kept["meta"].struct.field("finish_reason").to_list() == ["stop"] * kept.height
    assert set(steps["responses"]["dropped"]) <= {"truncated at max_tokens"}
    assert report["validation"]["passed"] == report["validation"]["total"]
    assert all(s["seconds"] >= 0 for s in report["steps"]) and report["llm"]["prompt_tokens"] > 0


def test_train_loads_with_datasets_in_messages_format(quickstart):
    out, _ = quickstart
    ds = datasets.load_dataset("parquet", data_files=str(out / "data" / "train.parquet"), split="train")
    assert len(ds) == json.loads((out / "report.json").read_text())["rows"]["out"] > 0
    for row in ds:
        roles = [m["role"] for m in row["messages"]]
        assert roles == ["user", "assistant"] and row["messages"][1]["content"].strip()
    assert len(set(ds["id"])) == len(ds)


def test_rejects_name_step_and_reason(quickstart):
    out, _ = quickstart
    rejects = pl.read_parquet(out / "rejects.parquet")
    assert rejects["step"].null_count() == 0 and rejects["reason"].null_count() == 0
    assert set(rejects["step"]) <= {"01-responses", "02-heuristics", "03-exact_dedup", "04-minhash_dedup"}


def test_rerun_is_served_from_markers_and_cache(quickstart):
    out, _ = quickstart
    before = (out / "data" / "train.parquet").read_bytes()
    proc = curate("run", "recipes/quickstart.yaml", "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert all(s["skipped"] for s in report["steps"][1:])
    assert (out / "data" / "train.parquet").read_bytes() == before


def test_inspect_shows_rows_and_columns(quickstart):
    out, _ = quickstart
    proc = curate("inspect", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "rows" in proc.stdout and "messages" in proc.stdout


def test_cli_reports_bad_recipe_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ninputs: [{path: nowhere.jsonl}]\nsteps: [{responses: {n: two}}]\n")
    proc = curate("run", str(bad), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "steps[0].responses.n" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()
