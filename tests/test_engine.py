"""The local engine: step folders and markers, skip-on-rerun, rejects with step and reason, no partial output."""

import json

import datasets
import polars as pl
import pytest

from curate.engine import run_recipe
from curate.errors import CurateError
from curate.recipe import load_recipe
from tests.conftest import filter_recipe

ROWS = [
    {"prompt": "What is rain?", "completion": "Rain is water falling from clouds."},
    {"prompt": "What is rain?", "completion": "Rain is water falling from clouds."},  # exact duplicate
    {"prompt": "Name a colour.", "completion": ""},  # empty response
    {"prompt": "Name a planet.", "completion": "Mars is a planet next to Earth."},
]
RECIPE = filter_recipe("filter-only", source="handmade")


@pytest.fixture
def recipe_path(tmp_path):
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (tmp_path / "r.yaml").write_text(RECIPE)
    return tmp_path / "r.yaml"


def test_run_writes_steps_rejects_data_report_and_card(recipe_path, tmp_path):
    out = tmp_path / "out"
    report = run_recipe(load_recipe(recipe_path), out, show_progress=False)
    assert [(s["step"], s["rows_in"], s["rows_out"]) for s in report["steps"]] == [
        ("inputs", 4, 4), ("01-heuristics", 4, 3), ("02-exact_dedup", 3, 2)]
    for name in ("01-heuristics", "02-exact_dedup"):
        assert (out / "steps" / name / "_DONE.json").exists()
    rejects = pl.read_parquet(out / "rejects.parquet")
    assert sorted(zip(rejects["step"], rejects["reason"])) == [
        ("01-heuristics", "empty response"), ("02-exact_dedup", "exact duplicate")]
    ds = datasets.load_dataset("parquet", data_files=str(out / "data" / "train.parquet"), split="train")
    assert len(ds) == 2
    assert sorted(m[0]["content"] for m in ds["messages"]) == ["Name a planet.", "What is rain?"]
    assert len((out / "data" / "train.jsonl").read_text().splitlines()) == 2
    report = json.loads((out / "report.json").read_text())
    assert report["rows"] == {"in": 4, "out": 2, "rejected": 2, "splits": {"train": 2}}
    assert report["validation"]["passed"] == report["validation"]["total"] >= 5
    assert report["filters"]["01-heuristics"]["scores"]["score_heuristics_response_words"]["thresholds"] == [2.0, 2000.0]
    html = (out / "report.html").read_text()
    assert html.count("<svg") >= 5 and "http" not in html.replace("http://www.w3.org/2000/svg", "")
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "| 02-exact_dedup | 3 | 2 | exact duplicate: 1 |" in card


def test_rerun_skips_unchanged_steps_and_reruns_from_a_changed_one(recipe_path, tmp_path):
    out = tmp_path / "out"
    run_recipe(load_recipe(recipe_path), out, show_progress=False)
    again = run_recipe(load_recipe(recipe_path), out, show_progress=False)
    assert [s["skipped"] for s in again["steps"][1:]] == [True, True]
    changed = run_recipe(load_recipe(recipe_path, ["steps.heuristics.min_response_words=7"]), out, show_progress=False)
    assert [s["skipped"] for s in changed["steps"][1:]] == [False, False]
    assert changed["rows"]["out"] == 1  # "Rain is water falling from clouds." has 6 words; the Mars answer 7


def test_bad_input_writes_nothing(tmp_path):
    (tmp_path / "data.jsonl").write_text('{"prompt": "ok", "completion": "fine answer"}\n{"prompt": \n')
    (tmp_path / "r.yaml").write_text(RECIPE)
    out = tmp_path / "out"
    with pytest.raises(CurateError, match=r"data\.jsonl:2: malformed JSON"):
        run_recipe(load_recipe(tmp_path / "r.yaml"), out, show_progress=False)
    assert not out.exists()


def test_report_rebuilds_from_a_finished_run(recipe_path, tmp_path):
    from curate.report.write import rebuild_report

    out = tmp_path / "out"
    first = run_recipe(load_recipe(recipe_path), out, show_progress=False)
    (out / "report.html").unlink()
    again = rebuild_report(out)
    assert (out / "report.html").exists()
    for key in ("rows", "steps", "llm", "sources", "lengths", "filters", "validation", "data_files"):
        assert again[key] == {**first, "steps": [{**s, "skipped": False} for s in first["steps"]]}[key], key
    with pytest.raises(CurateError, match="not a finished run folder"):
        rebuild_report(tmp_path)


def test_step_with_sources_runs_on_those_rows_and_passes_the_rest_through(tmp_path, caplog):
    """`sources` routes: a generator answers one source's rows only (the mixture recipe's seeds);
    the other sources' rows come through untouched, after the step's own output."""
    from typing import ClassVar

    from curate.engine import run_step
    from curate.records import make_frame
    from curate.steps import Context, Step, StepResult

    class Shout(Step):  # a stand-in generator: replaces every row it is given
        kind: ClassVar[str] = "shout"

        def run(self, df, ctx):
            msgs = [[m[0], {"role": "assistant", "content": m[0]["content"].upper()}] for m in df["messages"].to_list()]
            return StepResult(kept=make_frame([{"messages": m, "source": s} for m, s in zip(msgs, df["source"])]),
                              stats={"rows_seen": df.height})

    df = make_frame([{"messages": [{"role": "user", "content": f"q{i}"}], "source": s}
                     for i, s in enumerate(["seeds", "local", "seeds", "other"])])
    result = run_step(Shout(sources=["seeds", "missing"]), df, Context())
    assert result.kept["source"].to_list() == ["seeds", "seeds", "local", "other"]
    assert [m[-1]["content"] for m in result.kept["messages"].to_list()] == ["Q0", "Q2", "q1", "q3"]
    assert result.kept.filter(pl.col("source") != "seeds")["id"].to_list() == df["id"].to_list()[1::2]
    assert result.stats == {"rows_seen": 2, "routed": {"sources": ["seeds", "missing"], "rows": 2, "passed_through": 2,
                                                         "absent": ["missing"]}}
    assert "no rows from source(s) ['missing']" in caplog.text
    assert run_step(Shout(), df, Context()).stats == {"rows_seen": 4}  # no sources: every row


def test_filter_with_sources_in_a_recipe(tmp_path):
    rows = [{"prompt": "Name a colour.", "completion": "Blue."}, {"prompt": "Name a planet.", "completion": "Mars."}]
    for name in ("a", "b"):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "r.yaml").write_text("name: routed\ninputs: [{path: a.jsonl, source: a}, {path: b.jsonl, source: b}]\n"
                                     "steps: [{heuristics: {min_response_words: 2, sources: [a]}}]\n")
    report = run_recipe(load_recipe(tmp_path / "r.yaml"), tmp_path / "out", show_progress=False)
    assert report["steps"][1]["dropped"] == {"response too short": 2}
    assert {s: v["rows"] for s, v in report["sources"].items()} == {"b": 2}
    with pytest.raises(CurateError, match=r"steps\[0\]\.heuristics\.sources"):
        load_recipe(tmp_path / "r.yaml", ["steps.heuristics.sources=[]"])
