"""Recipes are validated before anything runs; errors name the key path; overrides apply."""

import json

import pytest

from curate.errors import CurateError
from curate.recipe import load_recipe

BASE = """
name: t
inputs: [{path: data.jsonl}]
steps:
  - heuristics: {min_response_words: 2}
  - exact_dedup: {}
"""


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


def test_shipped_recipes_validate():
    from pathlib import Path

    for path in sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml")):
        assert load_recipe(path).steps, path
