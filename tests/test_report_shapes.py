"""Score columns of every shape go through the report, the card and validation: all null (no row
overlapped an eval set), all equal (no duplicates), a single row, and no row left at the end. A
filter-only recipe runs on handmade rows through the real engine, then `curate report` rebuilds it.

An all-null column used to crash write_card (AttributeError on its missing summary), so the
"filter my own data" path wrote no card whenever nothing overlapped the eval set."""

import json
from pathlib import Path

import polars as pl
import pytest

from curate.engine import run_recipe
from curate.report.write import rebuild_report
from curate.recipe import load_recipe

RECIPE = """
name: shapes
inputs: [{path: data.jsonl, source: handmade}]
steps:
  - exact_dedup: {field: text}
  - heuristics: {min_response_words: 3}
  - minhash_dedup: {field: text}
  - decontaminate: {eval_sets: [eval.jsonl], field: text, min_words: 8}
output: {format: messages, files: [parquet, jsonl], validation: 0.2}
"""
EVAL = {"prompt": "Which planets of the solar system have rings, and what are the rings made of?"}
PAIRS = [("What is rain?", "Rain is water that falls from clouds."),
         ("Name a primary colour.", "Red is a primary colour of paint."),
         ("How many legs does a spider have?", "A spider has eight legs."),
         ("What does a thermometer measure?", "It measures temperature, in degrees."),
         ("Give a synonym of happy.", "Cheerful is a synonym of happy.")]
CASES = {
    "several rows": PAIRS,
    "single row": PAIRS[:1],
    "no row left": [(q, "No.") for q, _ in PAIRS],  # every answer too short for the heuristics
}


def run_case(tmp_path: Path, pairs) -> tuple[Path, dict]:
    (tmp_path / "data.jsonl").write_text("".join(json.dumps({"prompt": q, "completion": a}) + "\n" for q, a in pairs))
    (tmp_path / "eval.jsonl").write_text(json.dumps(EVAL) + "\n")
    (tmp_path / "r.yaml").write_text(RECIPE)
    out = tmp_path / "out"
    return out, run_recipe(load_recipe(tmp_path / "r.yaml"), out, show_progress=False)


def card_rows(card: str) -> dict[str, list[str]]:
    """The card's score table: column name -> [thresholds, values, p10, median, p90]."""
    table = card.split("## Scores and thresholds")[1].split("## Recipe")[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines() if line.startswith("| 0")]
    return {r[1]: r[2:] for r in rows}


@pytest.mark.parametrize("case", list(CASES))
def test_score_columns_of_every_shape_reach_report_card_and_validation(case, tmp_path):
    out, report = run_case(tmp_path, CASES[case])
    n = len(CASES[case])
    kept = {"several rows": n, "single row": 1, "no row left": 0}[case]
    assert report["rows"]["out"] == kept and report["rows"]["in"] == n

    scores = {col: sc for sec in report["filters"].values() for col, sc in sec["scores"].items()}
    shapes = {col: pl.concat([pl.read_parquet(f)[col] for f in (out / "steps").glob("0[1-9]-*/parts/[0-9][0-9][0-9][0-9][0-9].parquet")
                              if col in pl.read_parquet_schema(f)]) for col in scores}
    card = (out / "README.md").read_text()
    table = card_rows(card)
    assert set(table) == set(scores)  # every score column has its line in the card
    for col, sc in scores.items():
        values = sc["summary"]["n"] if sc["summary"] else 0
        assert table[col][1] == str(values)
        if values == 0:  # all null: dashes, no histogram, named in the HTML
            assert table[col][2:] == ["-", "-", "-"] and sc["histogram"] is None
    html = (out / "report.html").read_text()

    if kept:
        # no row overlaps the eval set: the coverage column is all null
        assert scores["score_decontaminate_coverage"]["summary"] is None
        assert "no values in score_decontaminate_coverage" in html
        assert shapes["score_decontaminate_coverage"].null_count() == shapes["score_decontaminate_coverage"].len()
        # no duplicates: every group has size 1 (all equal)
        group = scores["score_exact_dedup_group_size"]["summary"]
        assert group["min"] == group["max"] == 1 and table["score_exact_dedup_group_size"][2:] == ["1", "1", "1"]
        v = report["validation"]
        assert v["passed"] == v["total"], v
    else:
        # nothing after the heuristics: the later steps have no rows, so no values at all
        assert scores["score_minhash_dedup_cluster_size"]["summary"] is None
        v = report["validation"]
        assert [c["expectation"] for c in v["results"] if not c["success"]] == ["at least 1 row"]
        assert "FAIL at least 1 row" in (out / "report.md").read_text()
        assert f"- Validation: {v['total'] - 1}/{v['total']} expectations met" in card
        # and `curate report` says so on the terminal (typer's runner calls the command in this process)
        from typer.testing import CliRunner

        from curate.cli import app

        result = CliRunner().invoke(app, ["report", str(out)], terminal_width=200)
        assert result.exit_code == 0, result.output
        assert f"validation: {v['total'] - 1}/{v['total']} expectations met; failed: at least 1 row (0 rows)" in result.output
    if case == "single row":
        words = scores["score_heuristics_response_words"]["summary"]
        assert words["n"] == 1 and words["p10"] == words["p90"] == 7

    # `curate report` rebuilds the same numbers from the folder
    again = rebuild_report(out)
    for key in ("rows", "filters", "validation"):
        assert again[key] == report[key], key
    assert (out / "README.md").read_text() == card
