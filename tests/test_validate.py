"""Validation of the final data: each expectation of the suite is seen to fail on a row that breaks
it, in the polars checks and in great-expectations, and passes on clean rows (a check that cannot
fail would report every run as valid)."""

import importlib.util

import polars as pl
import pytest

from curate.records import make_frame
from curate.report.validate import validate
from filters.heuristics import Heuristics

# The `gx` extra is optional: without it these tests skip, naming it (the polars engine still runs).
NEEDS_GX = pytest.mark.skipif(importlib.util.find_spec("great_expectations") is None,
                              reason="needs great-expectations: pip install 'curate-sft[gx]'")
ENGINES = ["polars", pytest.param("great-expectations", marks=[pytest.mark.filterwarnings("ignore"), NEEDS_GX])]


def turn(role, content):
    return {"role": role, "content": content}


def row(prompt="What is rain?", response="Water that falls from clouds.", finish="stop", **extra):
    return {"messages": [turn("user", prompt), turn("assistant", response)], "meta": {"finish_reason": finish}, **extra}


CLEAN = [row(), row("Name a planet.", "Mars is the fourth planet."), row("Say hi.", "Hi there!", finish=None)]

# One broken row per expectation: the expectations it breaks (an empty turn also has no words), rows.
EMPTY = "no empty messages (empty_turns = 0)"
BROKEN = {
    "duplicate id": ({"id values are unique"}, [row(id="a"), row("Name a planet.", "Mars.", id="a")]),
    "empty response": ({EMPTY, "response_words between 1 and 8000"}, [row(), row("Name a planet.", "  ")]),
    "empty prompt": ({EMPTY, "prompt_words between 1 and inf"}, [row(), row(" ", "An answer to nothing.")]),
    "user after user": ({"roles alternate (user/assistant, system first if any)"},
                        [row(), {"messages": [turn("user", "a"), turn("user", "b"), turn("assistant", "c")]}]),
    "too long": ({"response_words between 1 and 8000"}, [row(), row("Say a lot.", "word " * 8001)]),
    "cut response": ({"no response cut at max_tokens (meta.finish_reason = length)"},
                     [row(), row("List three tips.", "1. **Prioritize Tasks", finish="length")]),
    "score out of range": ({"score_heuristics_prompt_copy between 0.0 and 1.0"}, [row(), row("Name a planet.", "Mars.")]),
}

def scored(rows, bad_score=False):
    df = Heuristics().score(make_frame(rows))
    if bad_score:  # an impossible share in the last row, as a broken scorer would write
        df = df.with_columns(pl.Series("score_heuristics_prompt_copy", [0.0] * (df.height - 1) + [1.5]))
    return df


def failed(result):
    return {c["expectation"]: c["details"] for c in result["results"] if not c["success"]}


@pytest.mark.parametrize("engine", ENGINES)
def test_clean_rows_meet_every_expectation(engine):
    result = validate(scored(CLEAN), [Heuristics()], engine=engine)
    assert result["engine"] == engine
    assert result["total"] == 9 and result["passed"] == 9, failed(result)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("case", list(BROKEN))
def test_each_broken_expectation_is_reported_failed(engine, case):
    expected, rows = BROKEN[case]
    df = scored(rows, bad_score=case == "score out of range")
    result = validate(df, [Heuristics()], engine=engine)
    fails = failed(result)
    assert set(fails) == expected  # these, and only these
    for details in fails.values():
        assert details.startswith(("1 rows fail", "2 rows fail"))  # a duplicate id counts both rows
    assert result["passed"] == result["total"] - len(expected)


@pytest.mark.parametrize("engine", ENGINES)
def test_no_rows_fails_the_row_count(engine):
    result = validate(scored(CLEAN).head(0), [Heuristics()], engine=engine)
    assert failed(result) == {"at least 1 row": "0 rows"}


def test_rows_without_finish_reason_are_not_cut():
    """Existing datasets and files written before meta had finish_reason: unknown is not cut."""
    df = scored(CLEAN).drop("meta").with_columns(pl.lit(None).alias("meta"))
    assert validate(df, [Heuristics()], engine="polars")["passed"] == 9


def test_unknown_engine_is_an_error():
    with pytest.raises(ValueError, match="engine must be"):
        validate(scored(CLEAN), [], engine="pandas")


# Recipe-declared expectations (validate: in a recipe), run by great-expectations ------------------
import json
import sys
from pathlib import Path

import pandas as pd

from curate.engine import run_recipe
from curate.report.write import rebuild_report
from curate.errors import CurateError, MissingExtra, ValidationFailed
from curate.folder import MANIFEST, incomplete
from curate.hub import refuse_failed_validation
from curate.output import OutputConfig
from curate.recipe import build_recipe, load_recipe
from curate.report.validate import GX_FILES, ValidateConfig, view

def GX_ONLY(test):
    """Runs with great-expectations only; GX's own deprecation warnings on import are not ours."""
    return NEEDS_GX(pytest.mark.filterwarnings("ignore")(test))
SHORT = "expect_column_value_lengths_to_be_between(column='response', min_value=10)"


def declared(*expectations, fail_on_error=False):
    return ValidateConfig(fail_on_error=fail_on_error, expectations=list(expectations))


@GX_ONLY
def test_a_declared_expectation_fails_on_the_row_that_breaks_it():
    df = scored(CLEAN)  # "Hi there!" is 9 characters
    checks = declared({"expect_column_value_lengths_to_be_between": {"column": "response", "min_value": 10}},
                      {"expect_column_values_to_not_be_null": {"column": "source", "severity": "warning"}})
    result = validate(df, [Heuristics()], checks, engine="great-expectations")
    assert failed(result) == {SHORT: "1 rows fail, e.g. ['Hi there!']",
                              "expect_column_values_to_not_be_null(column='source')": "3 rows fail (null)"}
    by_name = {r["expectation"]: r for r in result["results"]}
    assert by_name[SHORT]["declared"] and by_name[SHORT]["severity"] == "critical"
    assert not by_name["at least 1 row"]["declared"]
    # fails_run only with fail_on_error, and only for critical expectations
    assert (result["passed"], result["total"], result["fails_run"]) == (9, 11, False)
    assert validate(df, [Heuristics()], declared(*checks.expectations, fail_on_error=True),
                    engine="great-expectations")["fails_run"]
    warning_only = declared(checks.expectations[1], fail_on_error=True)
    assert not validate(df, [Heuristics()], warning_only, engine="great-expectations")["fails_run"]


@GX_ONLY
def test_each_result_belongs_to_its_expectation():
    """GX returns its results in its own order (table-level aggregates before column maps): each
    result must be matched to its expectation, not zipped by position. Found on the Cherry Alpaca
    data, where a passing mean was reported failed with the null count of the expectation before it."""
    df = scored(CLEAN)
    checks = declared({"expect_column_values_to_not_be_null": {"column": "gold"}},
                      {"expect_column_mean_to_be_between": {"column": "response_words", "min_value": 2}},
                      {"expect_column_values_to_not_be_null": {"column": "gold"}},  # twice: both fail
                      {"expect_column_max_to_be_between": {"column": "response_words", "max_value": 3}})
    result = validate(df, [Heuristics()], checks, engine="great-expectations")
    got = [(r["expectation"], r["success"], r["details"]) for r in result["results"] if r["declared"]]
    assert got == [("expect_column_values_to_not_be_null(column='gold')", False, "3 rows fail (null)"),
                   ("expect_column_mean_to_be_between(column='response_words', min_value=2)", True, ""),
                   ("expect_column_values_to_not_be_null(column='gold')", False, "3 rows fail (null)"),
                   ("expect_column_max_to_be_between(column='response_words', max_value=3)", False, "observed 5")]
    assert [r["success"] for r in result["results"] if not r["declared"]] == [True] * 9


def test_the_view_has_the_output_format_columns_and_convenience_columns():
    df = scored([row(), {"messages": [turn("system", "Be brief."), turn("user", "Name a planet."),
                                      turn("assistant", "Mars.")], "source": "s"}])
    t = view(df, OutputConfig(format="alpaca"))
    assert t.columns[:11] == ["id", "source", "prompt", "response", "system", "turns", "prompt_words",
                              "response_words", "empty_turns", "roles_alternate", "response_cut"]
    assert {"instruction", "input", "output", "score_heuristics_prompt_copy"} <= set(t.columns)
    assert not [c for c in t.columns if c.endswith("_fingerprint") or c in ("messages", "meta")]
    want = {"instruction": "Name a planet.", "output": "Mars.", "system": "Be brief.",
            "prompt": "Be brief.\nName a planet.", "response": "Mars.", "turns": 3}
    assert {k: t.row(1, named=True)[k] for k in want} == want
    # nested format columns are JSON text
    msgs = view(df)["messages"].to_list()
    assert json.loads(msgs[0]) == [turn("user", "What is rain?"), turn("assistant", "Water that falls from clouds.")]
    assert view(df.head(0), OutputConfig(format="alpaca")).columns == t.columns  # no rows: the same columns


RECIPE = """name: gx
inputs: [{path: d.jsonl, source: pairs}]
steps: [{heuristics: {min_response_words: 1}}]
output: {format: alpaca, validation: 1}
"""


@pytest.fixture
def folder(tmp_path):
    rows = [{"instruction": f"Question number {i}?", "output": f"A fine answer for question {i}." if i else "Ok."}
            for i in range(8)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def write_recipe(folder: Path, validate_yaml: str) -> Path:
    (folder / "r.yaml").write_text(RECIPE + validate_yaml)
    return folder / "r.yaml"


LENGTH = ("validate:\n  fail_on_error: {}\n  expectations:\n"
          "    - expect_column_value_lengths_to_be_between: {{column: output, min_value: 5}}\n"
          "    - expect_column_values_to_be_json_parseable: {{column: instruction}}\n")


@GX_ONLY
def test_the_saved_suite_reruns_in_a_fresh_gx_setup(folder):
    """What a team does with the files: load the suite with GX, read the table, validate; the
    outcome is the one the run saved."""
    out = folder / "out"
    report = run_recipe(load_recipe(write_recipe(folder, LENGTH.format("false"))), out, show_progress=False)
    v = report["validation"]
    assert v["files"] == [f"gx/{n}" for n in GX_FILES]
    assert {r["expectation"] for r in v["results"] if not r["success"]} == {
        "expect_column_value_lengths_to_be_between(column='output', min_value=5)",
        "expect_column_values_to_be_json_parseable(column='instruction')"}
    listed = set(json.loads((out / MANIFEST).read_text())["files"])
    assert {f"gx/{n}" for n in GX_FILES} <= listed
    assert "FAIL expect_column_value_lengths_to_be_between(column='output', min_value=5): 1 rows fail, e.g. ['Ok.']" \
        in (out / "report.md").read_text()

    suite_json = json.loads((out / "gx" / "expectation_suite.json").read_text())
    saved = json.loads((out / "gx" / "expectation_suite_results.json").read_text())
    gx = pytest.importorskip("great_expectations")
    context = gx.get_context(mode="ephemeral")
    suite = context.suites.add(gx.ExpectationSuite(**suite_json))
    table = pd.read_parquet(out / "gx" / "validated.parquet")
    assert len(table) == pl.read_parquet(out / "records.parquet").height == 8
    batch = (context.data_sources.add_pandas("team").add_dataframe_asset("sft").add_batch_definition_whole_dataframe("all")
             .get_batch(batch_parameters={"dataframe": table}))
    rerun = batch.validate(suite).to_json_dict()
    assert [(r["expectation_config"]["type"], r["success"]) for r in rerun["results"]] == \
        [(r["expectation_config"]["type"], r["success"]) for r in saved["results"]]
    assert rerun["statistics"] == saved["statistics"] and saved["statistics"]["unsuccessful_expectations"] == 2
    assert saved["suite_name"] == suite_json["name"] == "curate-final"


@GX_ONLY
def test_report_rebuild_saves_the_gx_files_of_an_older_folder(folder):
    """A folder from before the files were saved: `curate report` lists them, then writes them."""
    out = folder / "out"
    run_recipe(load_recipe(write_recipe(folder, "")), out, show_progress=False)
    manifest = json.loads((out / MANIFEST).read_text())
    for name in GX_FILES:
        (out / "gx" / name).unlink()
    manifest["files"] = [f for f in manifest["files"] if not f.startswith("gx/")]
    (out / MANIFEST).write_text(json.dumps(manifest))
    rebuild_report(out)
    assert all((out / "gx" / n).is_file() for n in GX_FILES)
    assert {f"gx/{n}" for n in GX_FILES} <= set(json.loads((out / MANIFEST).read_text())["files"])


@GX_ONLY
def test_fail_on_error_fails_the_run_after_writing_everything(folder, monkeypatch, capsys):
    """`curate run` as the console script calls it (curate.cli.main, in this process: a subprocess
    would spend seconds importing great-expectations again)."""
    from curate.cli import main

    recipe = write_recipe(folder, LENGTH.format("true"))
    out = folder / "out"
    monkeypatch.setattr(sys, "argv", ["curate", "run", str(recipe), "--out", str(out), "--quiet"])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 3
    message = " ".join(capsys.readouterr().err.split())
    assert "validation failed (2 of 11 expectations, validate.fail_on_error is true)" in message
    assert "expect_column_value_lengths_to_be_between(column='output', min_value=5): 1 rows fail" in message
    # the folder is finished: data, report and GX files are there, and a rerun would skip every step
    assert incomplete(out) is None and (out / "data" / "train.parquet").is_file()
    report = json.loads((out / "report.json").read_text())
    assert report["validation"]["fails_run"] and "the run failed (validate.fail_on_error)" in (out / "report.md").read_text()
    # ... but it is not published
    with pytest.raises(CurateError, match="cannot publish it: its data failed 2 expectation"):
        refuse_failed_validation(out)
    # from Python: the same run raises ValidationFailed, with the report
    with pytest.raises(ValidationFailed) as info:
        import curate

        curate.run(recipe, out=out)
    assert info.value.report["validation"]["fails_run"] and all(s["skipped"] for s in info.value.report["steps"][1:])
    # turned off, the same data passes through and may be published
    curate.run(recipe, overrides=["validate.fail_on_error=false"], out=out)
    refuse_failed_validation(out)


def bad_recipe(folder: Path, expectation: str) -> Path:
    return write_recipe(folder, f"validate:\n  expectations:\n    - {expectation}\n")


@GX_ONLY
@pytest.mark.parametrize("expectation, message", [
    ("expect_column_value_lenghts_to_be_between: {column: output, min_value: 5}",
     r"validate.expectations\[0\].expect_column_value_lenghts_to_be_between: not a great-expectations expectation "
     r"type \(did you mean expect_column_value_lengths_to_be_between\?\)"),
    ("expect_column_value_lengths_to_be_between: {column: output, min_valu: 5}",
     r"validate.expectations\[0\].expect_column_value_lengths_to_be_between.min_valu: extra fields not permitted"),
    ("expect_column_values_to_not_be_null: {}",
     r"validate.expectations\[0\].expect_column_values_to_not_be_null.column: field required"),
    ("{expect_column_values_to_not_be_null: {column: a}, expect_column_to_exist: {column: a}}",
     r"validate.expectations\[0\]: each expectation is a mapping with one key"),
    ("expect_column_values_to_not_be_null: {column: answer_text}",
     r"validate.expectations\[0\].expect_column_values_to_not_be_null.column: no column 'answer_text' in the "
     r"validated table; its columns are id, source, prompt, response, .*instruction, input, output"),
])
def test_a_bad_declared_expectation_stops_before_anything_is_written(folder, expectation, message):
    out = folder / "out"
    with pytest.raises(CurateError, match=message):
        run_recipe(load_recipe(bad_recipe(folder, expectation)), out, show_progress=False)
    assert not out.exists()


def test_unknown_validate_keys_are_named(folder):
    with pytest.raises(CurateError, match=r"validate.fail_on_eror: unknown key"):
        load_recipe(write_recipe(folder, "validate: {fail_on_eror: true}\n"))


def test_without_great_expectations_declared_expectations_name_the_extra(folder, monkeypatch):
    """great-expectations is installed here, so its absence is simulated the way Python sees a
    missing package: importing it fails (sys.modules holds None for it)."""
    monkeypatch.setitem(sys.modules, "great_expectations", None)
    with pytest.raises(MissingExtra, match=r"r.yaml: validate.expectations: .* pip install 'curate-sft\[gx\]'"):
        load_recipe(bad_recipe(folder, "expect_column_values_to_not_be_null: {column: output}"))
    # the built-in expectations still run, in polars, and no GX file is planned or written
    report = run_recipe(load_recipe(write_recipe(folder, "")), folder / "out", show_progress=False)
    assert report["validation"]["engine"].startswith("polars (great-expectations not installed")
    assert report["validation"]["passed"] == report["validation"]["total"] == 9 and report["validation"]["files"] == []
    assert not (folder / "out" / "gx").exists()
    with pytest.raises(MissingExtra, match="great-expectations"):
        validate(scored(CLEAN), [], declared({"expect_column_values_to_not_be_null": {"column": "id"}}))


def test_a_recipe_dict_builds_with_validate(folder):
    rec = build_recipe({"name": "x", "validate": {"fail_on_error": True}}, base_dir=folder)
    assert rec.config.checks.fail_on_error and rec.config.checks.expectations == []


# Validation over parts ------------------------------------------------------------------------------
def test_final_data_in_parts_is_validated_row_by_row_as_one_frame(monkeypatch, tmp_path):
    """Above SAMPLE_ROWS final rows (lowered to 1,000 here) the built-in expectations run a part at
    a time: the same results, counts and example values as validating the whole frame at once,
    every broken row counted (a repeated id across two parts too); declared expectations run in
    great-expectations on a sample, and the gx/ files are written."""
    import curate.report.compute as compute
    from curate.parts import Part
    from curate.report.validate import validate_parts

    rows = [row(f"Question number {i}?", f"Answer number {i} here.") for i in range(3000)]
    rows[10] = row("Name a planet.", "  ")  # empty response
    rows[1500] = {"messages": [turn("user", "a"), turn("user", "b"), turn("assistant", "c")]}
    rows[2999] = row("List three tips.", "1. **Prioritize Tasks", finish="length")
    rows[2500] = rows[20]  # the same row, so the same id, in another part
    df = scored(rows, bad_score=True)
    parts = [Part(tmp_path / f"{i}.parquet", "", chunk.height, chunk) for i, chunk in enumerate(df.iter_slices(700))]
    monkeypatch.setattr(compute, "SAMPLE_ROWS", 1000)
    whole = validate(df, [Heuristics()], engine="polars")
    in_parts = validate_parts(parts, [Heuristics()], engine="polars")
    assert in_parts["engine"].startswith("polars (built-in expectations on every row, a part at a time")
    assert in_parts["results"] == whole["results"] and in_parts["passed"] == whole["passed"] == 9 - 6
    assert failed(in_parts)["id values are unique"] == "2 rows fail, e.g. ['%s', '%s']" % (df["id"][20], df["id"][20])

    pytest.importorskip("great_expectations")
    checks = ValidateConfig(expectations=[{"expect_column_values_to_not_be_null": {"column": "prompt"}},
                                          {"expect_column_values_to_match_regex": {"column": "prompt", "regex": "^Question number 1"}}])
    declared_too = validate_parts(parts, [Heuristics()], checks, save_to=tmp_path / "gx")
    assert declared_too["results"][:len(whole["results"])] == whole["results"]
    assert [r["success"] for r in declared_too["results"][len(whole["results"]):]] == [True, False]
    assert "great-expectations on a sample of 1000 rows" in declared_too["engine"]
    assert pl.read_parquet(tmp_path / "gx" / "validated.parquet").height == 1000
