"""Small habits of the `curate` command and the Python entry point: --version, shell completion,
`curate inspect` piped into another program, and `curate.run` returning the kept rows."""

import json
import os
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pandas as pd
import polars as pl
import pytest

import curate
from curate.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
BOX = re.compile("[\u2500-\u257f]")  # box-drawing characters


def cli(*args, env=ENV, **kw):
    return subprocess.run([sys.executable, "-m", "curate.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=env, **kw)


def test_version_is_the_installed_package_version():
    proc = cli("--version")
    assert proc.returncode == 0 and proc.stdout == f"curate {version('curate-sft')}\n", proc.stderr


def test_bash_completion_script_and_completions():
    """--show-completion prints the script for the shell it runs in (typer detects it from the
    parent processes, here bash); the script asks `curate` for completions the way shown below."""
    proc = subprocess.run(["bash", "-c", f"{sys.executable} -m curate.cli --show-completion; true"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env=ENV)
    assert proc.returncode == 0, proc.stderr
    assert "_curate_completion()" in proc.stdout and "complete -o default -F _curate_completion curate" in proc.stdout
    assert "_CURATE_COMPLETE=complete_bash" in proc.stdout
    # what the script runs on <TAB> after `curate ins`
    done = cli(env={**ENV, "_CURATE_COMPLETE": "complete_bash", "COMP_WORDS": "curate ins", "COMP_CWORD": "1"})
    assert done.stdout.split() == ["inspect"], done.stderr
    done = cli(env={**ENV, "_CURATE_COMPLETE": "complete_bash", "COMP_WORDS": "curate run --q", "COMP_CWORD": "2"})
    assert done.stdout.split() == ["--quiet"], done.stderr


@pytest.fixture
def scored_parquet(tmp_path):
    """A file as pandas writes it (its index kept as __index_level_0__) with score, fingerprint and
    row-position columns, and long conversations."""
    long = "A long answer that goes on and on about colours of light, " * 6
    frame = pd.DataFrame({
        "messages": [[{"role": "user", "content": f"Question {i}?\nWith a second line."},
                      {"role": "assistant", "content": long}] for i in range(5)],
        "score_heuristics_prompt_copy": [0.0, 0.1, 0.2, 0.3, 0.4],
        "score_heuristics_refusal": [False, False, True, False, False],
        "score_heuristics_fingerprint": ["a1", "a2", "a3", "a4", "a5"],
        "score_minhash_dedup_row": [0, 1, 2, 3, 4],
        "score_a_really_long_score_column_name_from_a_filter_with_a_name": [1, 2, 3, 4, 5],
    }, index=[10, 11, 12, 13, 14])
    path = tmp_path / "scored.parquet"
    frame.to_parquet(path)
    assert "__index_level_0__" in pl.read_parquet(path).columns
    return path


def test_inspect_piped_is_plain_text_within_80_columns(scored_parquet):
    proc = cli("inspect", str(scored_parquet), "-n", "2", env={k: v for k, v in ENV.items() if k != "COLUMNS"})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert not BOX.search(proc.stdout), proc.stdout
    assert max(len(line) for line in lines) <= 80, [line for line in lines if len(line) > 80]
    assert lines[0] == f"5 rows, 7 columns: {scored_parquet}"[:77] + ("..." if len(str(scored_parquet)) > 58 else "")
    scores = lines[lines.index("scores:") + 2: lines.index("scores:") + 5]
    assert [s.split()[0] for s in scores] == ["score_heuristics_prompt_copy", "score_heuristics_refusal",
                                             "score_a_really_long_score_c..."]
    assert scores[0].split()[1:] == ["5", "0.2", "0", "0.2", "0.4"]
    # row positions, pandas' index and fingerprints are no scores
    summary = "\n".join(lines[lines.index("scores:"): lines.index("sample rows (2 of 5):")])
    assert "__index_level_0__" not in summary and "_row" not in summary and "fingerprint" not in summary
    # each turn on its own line, newlines folded, long text cut
    assert "  messages[0] user: Question 0? With a second line." in lines
    assert any(line.startswith("  messages[1] assistant: A long answer") and line.endswith("...") for line in lines)


def test_numeric_columns_are_summarised_without_row_numbers(tmp_path):
    """A file without score columns: its numbers are summarised, less the row numbers and ids
    (pandas writes its index into a CSV as an unnamed first column)."""
    path = tmp_path / "d.csv"
    pd.DataFrame({"idx": [1, 2, 3], "question_id": [7, 9, 8], "difficulty": [3, 1, 2], "count": [4, 6, 5],
                  "instruction": ["a", "b", "c"]}).to_csv(path)
    from typer.testing import CliRunner

    from curate.cli import app

    result = CliRunner().invoke(app, ["inspect", str(path)])  # in this process; output not a terminal
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    at = lines.index("numeric columns:")
    assert [line.split()[0] for line in lines[at + 2: at + 4]] == ["difficulty", "count"]
    assert lines[at + 4] == "not summarised (row numbers or ids): (unnamed), idx, question_id"


def test_row_number_like():
    from curate.cli import row_number_like

    df = pl.DataFrame({"index": [5, 3, 9], "n": [81, 82, 83], "score": [3, 1, 2], "run": [0, 0, 0], "gaps": [1, 3, 5],
                       "Unnamed: 0": [9, 1, 4], "float": [0.0, 1.0, 2.0]})
    assert [c for c in df.columns if row_number_like(df, c)] == ["index", "n", "Unnamed: 0"]


RECIPE = "name: api\ninputs: [{path: d.jsonl, source: pairs}]\nsteps: [{heuristics: {min_response_words: 3}}]\n"


def test_run_from_python_returns_the_kept_rows(tmp_path, monkeypatch):
    rows = [{"instruction": f"Question {i}?", "output": "Yes." if i % 2 else f"A longer answer to question {i}."}
            for i in range(6)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "r.yaml").write_text(RECIPE)
    kept = curate.run(tmp_path / "r.yaml", out=tmp_path / "out")
    assert isinstance(kept, pl.DataFrame) and kept.height == 3
    assert kept.equals(pl.read_parquet(tmp_path / "out" / "records.parquet"))
    assert "score_heuristics_response_words" in kept.columns
    assert json.loads((tmp_path / "out" / "report.json").read_text())["rows"]["out"] == 3
    # overrides as -o takes them; the recipe as a dict, its paths from the working directory
    monkeypatch.chdir(tmp_path)
    raw = load_recipe(tmp_path / "r.yaml").raw
    kept = curate.run(raw, overrides=["steps.heuristics.min_response_words=1"])
    assert kept.height == 6 and (tmp_path / "runs" / "api" / "records.parquet").is_file()


@pytest.mark.parametrize("inherited, expected", [
    (None, "narenas:1,background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0"),
    # what polars writes when a parent process imported it (a notebook, a bench): not the user's choice
    ("dirty_decay_ms:500,muzzy_decay_ms:1000", "narenas:1,background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0"),
    ("narenas:3", "narenas:3"),  # the user's own setting wins
])
def test_cli_sets_polars_allocator_unless_the_user_did(inherited, expected):
    env = {k: v for k, v in os.environ.items() if k != "_RJEM_MALLOC_CONF"}
    if inherited is not None:
        env["_RJEM_MALLOC_CONF"] = inherited
    code = "import os, curate.cli; print(os.environ['_RJEM_MALLOC_CONF'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith(expected)
