"""Recipes are validated before anything runs; errors name the key path; overrides apply."""

import json

import pytest

from curate.errors import CurateError
from curate.recipe import load_recipe
from tests.conftest import filter_recipe

BASE = filter_recipe("t")


def recipe(tmp_path, text=BASE):
    (tmp_path / "data.jsonl").write_text(json.dumps({"prompt": "p", "completion": "an answer here"}) + "\n")
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


def test_loads_and_builds_steps(tmp_path):
    r = load_recipe(recipe(tmp_path))
    assert [s.kind for s in r.steps] == ["heuristics", "exact_dedup"]
    assert r.steps[0].min_response_words == 2
    assert r.config.teacher.backend == "embedded"


def test_unknown_top_level_key(tmp_path):
    with pytest.raises(CurateError, match=r"r\.yaml: invalid recipe:\n  teachr: unknown key"):
        load_recipe(recipe(tmp_path, BASE + "teachr: {model: x}\n"))


def test_unknown_step_key_names_the_path(tmp_path):
    text = BASE.replace("min_response_words: 2", "min_respons_words: 2")
    with pytest.raises(CurateError, match=r"steps\[0\]\.heuristics\.min_respons_words: unknown key"):
        load_recipe(recipe(tmp_path, text))


def test_wrong_type_names_the_path(tmp_path):
    text = BASE.replace("min_response_words: 2", "min_response_words: lots")
    with pytest.raises(CurateError, match=r"steps\[0\]\.heuristics\.min_response_words: Input should be a valid integer"):
        load_recipe(recipe(tmp_path, text))
    with pytest.raises(CurateError, match=r"teacher\.max_concurrency: Input should be greater than or equal to 1"):
        load_recipe(recipe(tmp_path, BASE + "teacher: {max_concurrency: 0}\n"))


def test_unknown_step_kind(tmp_path):
    with pytest.raises(CurateError, match=r"steps\[1\]: unknown step 'exact_dedupe'; known steps: .*exact_dedup"):
        load_recipe(recipe(tmp_path, BASE.replace("exact_dedup: {}", "exact_dedupe: {}")))


def test_invalid_yaml_names_the_line(tmp_path):
    with pytest.raises(CurateError, match=r"r\.yaml:\d+: invalid YAML"):
        load_recipe(recipe(tmp_path, BASE + "steps: [\n"))


def test_overrides_by_index_kind_and_top_level(tmp_path):
    r = load_recipe(recipe(tmp_path), ["steps.0.heuristics.min_response_words=7", "steps.exact_dedup.field=prompt",
                                       "teacher.model=foo", "seed=3"])
    assert r.steps[0].min_response_words == 7 and r.steps[1].field == "prompt"
    assert r.config.teacher.model == "foo" and r.config.seed == 3
    with pytest.raises(CurateError, match=r"steps\[0\]\.heuristics\.bogus: unknown key"):
        load_recipe(recipe(tmp_path), ["steps.heuristics.bogus=1"])
    with pytest.raises(CurateError, match="expected KEY.PATH=VALUE"):
        load_recipe(recipe(tmp_path), ["seed"])


PATHS = """
name: paths
teacher: {model_path: models/tiny.gguf}
inputs: [{path: data/rows.jsonl, source: s}]
steps:
  - decontaminate: {eval_sets: [data/eval.jsonl, shared_eval.jsonl, /abs/eval.jsonl, missing.jsonl]}
  - nuggets: {anchors: data/eval.jsonl, num_anchors: 2}
"""


def test_relative_paths_resolve_from_the_recipe_folder(tmp_path, monkeypatch):
    """Paths in a recipe are read from its folder (whatever the working directory); one that is not
    there but exists from the working directory (typed with -o) is taken from there; others stay."""
    folder = tmp_path / "recipes"
    (folder / "data").mkdir(parents=True)
    (folder / "models").mkdir()
    for name in ("data/rows.jsonl", "data/eval.jsonl"):
        (folder / name).write_text(json.dumps({"prompt": "p", "completion": "an answer here"}) + "\n")
    (folder / "models" / "tiny.gguf").write_bytes(b"")
    (folder / "r.yaml").write_text(PATHS)
    elsewhere = tmp_path / "work"
    elsewhere.mkdir()
    (elsewhere / "shared_eval.jsonl").write_text("{}\n")
    monkeypatch.chdir(elsewhere)

    r = load_recipe(folder / "r.yaml")
    assert r.steps[0].eval_sets == [str(folder / "data/eval.jsonl"), "shared_eval.jsonl", "/abs/eval.jsonl", "missing.jsonl"]
    assert r.steps[1].anchors == str(folder / "data/eval.jsonl")
    assert r.config.teacher.model_path == str(folder / "models/tiny.gguf")
    assert r.resolve(r.config.inputs[0].path) == folder / "data/rows.jsonl"
    # the recipe as written (recipe.yaml in the output, the card) keeps the user's relative paths
    assert r.raw["steps"][0]["decontaminate"]["eval_sets"][0] == "data/eval.jsonl"
    assert r.raw["teacher"]["model_path"] == "models/tiny.gguf"
    # a recipe path given relative to the working directory stays relative (no absolute paths in hashes)
    monkeypatch.chdir(tmp_path)
    assert load_recipe("recipes/r.yaml").steps[1].anchors == "recipes/data/eval.jsonl"
    # an override naming a file in the working directory
    (tmp_path / "mine.jsonl").write_text("{}\n")
    assert load_recipe("recipes/r.yaml", ["inputs.0.path=mine.jsonl"]).resolve("mine.jsonl").resolve() == tmp_path / "mine.jsonl"


def test_recipe_runs_from_another_working_directory(tmp_path, monkeypatch):
    from curate.engine import run_recipe

    folder = tmp_path / "recipes"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "rows.jsonl").write_text(
        json.dumps({"instruction": "Name the largest planet of the solar system please now", "output": "Jupiter is."}) + "\n"
        + json.dumps({"instruction": "Name a colour.", "output": "Blue is a colour."}) + "\n")
    (folder / "data" / "eval.jsonl").write_text(json.dumps({"question": "Name the largest planet of the solar system please now"}) + "\n")
    (folder / "r.yaml").write_text("name: x\ninputs: [{path: data/rows.jsonl}]\n"
                                   "steps: [{decontaminate: {eval_sets: [data/eval.jsonl]}}]\n")
    monkeypatch.chdir(tmp_path.parent)
    report = run_recipe(load_recipe(folder / "r.yaml"), tmp_path / "out", show_progress=False)
    assert report["rows"]["out"] == 1 and report["steps"][1]["dropped"] == {"overlaps eval set": 1}
    with pytest.raises(CurateError, match=r"inputs\[0\]\.path 'nowhere\.jsonl': no such file or folder \(looked in"):
        run_recipe(load_recipe(folder / "r.yaml", ["inputs.0.path=nowhere.jsonl"]), tmp_path / "o2", show_progress=False)


def test_paths_inside_a_nested_step_resolve_too(tmp_path):
    """best_of_n carries a judge step: its file settings are read from the recipe's folder as well."""
    from typing import ClassVar

    from curate.recipe import _resolve_settings
    from curate.steps import RecipePath, Step

    class Inner(Step):
        kind: ClassVar[str] = "inner"
        prompt_file: RecipePath | None = None

    class Outer(Step):
        kind: ClassVar[str] = "outer"
        judge: Inner = Inner()
        note: str = ""

    (tmp_path / "judge.txt").write_text("{instruction}")
    got = _resolve_settings(Outer, {"judge": {"prompt_file": "judge.txt"}, "note": "judge.txt"}, tmp_path)
    assert got == {"judge": {"prompt_file": str(tmp_path / "judge.txt")}, "note": "judge.txt"}
