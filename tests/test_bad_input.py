"""Bad state and bad input (issue 10, parts 6-8): a bad file, setting or override ends in a short
error naming the file, line or key (exit 2, no traceback, nothing written in --out), before any
step runs; invalid rows go to rejects.parquet with step "inputs" and a reason; what can be read
(UTF-16 text, numbers in a text column) is read, with a warning where a value changed type."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from pydantic import ValidationError

from curate.errors import CurateError
from curate.io import read_records
from curate.recipe import apply_override, load_recipe
from curate.registry import step_class
from tests.conftest import write_jsonl

ROOT = Path(__file__).resolve().parents[1]

GOOD = [{"instruction": f"Name a fact about the number {i}.",
         "output": f"The number {i} is a whole number that you can count to."} for i in range(8)]

BASE = """\
name: bad-input
inputs: [{path: data.jsonl, source: pairs}]
steps:
  - heuristics: {min_response_words: 1}
output: {validation: 0.25}
"""


def recipe(tmp_path: Path, text: str = BASE, rows: list[dict] = GOOD) -> Path:
    write_jsonl(tmp_path / "data.jsonl", rows)
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def cli(recipe_path: Path, out: Path, *overrides: str, env: dict | None = None, timeout: int = 120):
    """`curate run` in a subprocess, from this worktree, as a user types it."""
    args = [sys.executable, "-m", "curate.cli", "run", str(recipe_path), "--out", str(out), "--quiet"]
    for item in overrides:
        args += ["-o", item]
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def assert_refused(proc, out: Path, *needles: str) -> None:
    """Exit 2 (the CurateError exit), a message holding every needle, no traceback, nothing in --out."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "╭" not in proc.stderr, proc.stderr  # plain or rich traceback
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr)
    assert not out.exists(), sorted(str(p) for p in out.rglob("*"))


# 10.6: files that are not what their name says ---------------------------------------------------

def test_binary_input_is_refused_naming_file_and_line(tmp_path):
    path = recipe(tmp_path)
    with open(tmp_path / "data.jsonl", "ab") as fh:
        fh.write(b'{"instruction": "fine", "output": "fine too"}\n\x00\x81\xfe\xff binary tail\n')
    proc = cli(path, tmp_path / "out")
    assert_refused(proc, tmp_path / "out", f"{tmp_path / 'data.jsonl'}:10:", "not UTF-8 text")


def test_utf16_and_bom_inputs_are_read(tmp_path):
    """A byte-order mark says how the text is encoded: UTF-16 and UTF-32 files and UTF-8 with a
    BOM (as some Windows tools save them) read like plain UTF-8, in every text format."""
    want = read_records(write_jsonl(tmp_path / "plain.jsonl", GOOD[:3]))["messages"].to_list()
    for enc in ("utf-16", "utf-32", "utf-8-sig"):
        assert read_records(write_jsonl(tmp_path / f"{enc}.jsonl", GOOD[:3], enc))["messages"].to_list() == want
        (tmp_path / f"{enc}.json").write_text(json.dumps(GOOD[:3]), encoding=enc)
        assert read_records(tmp_path / f"{enc}.json")["messages"].to_list() == want
        pl.DataFrame(GOOD[:3]).write_csv(tmp_path / "plain.csv")
        (tmp_path / f"{enc}.csv").write_text((tmp_path / "plain.csv").read_text(), encoding=enc)
        assert read_records(tmp_path / f"{enc}.csv")["messages"].to_list() == want
        (tmp_path / f"{enc}.txt").write_text("Ein Dokument über Bäume.", encoding=enc)
        assert read_records(tmp_path / f"{enc}.txt")["messages"][0][0]["content"] == "Ein Dokument über Bäume."


def test_utf16_without_bom_is_refused_with_a_hint(tmp_path):
    (tmp_path / "d.jsonl").write_bytes(json.dumps(GOOD[0]).encode("utf-16-le"))
    with pytest.raises(CurateError, match=r"d\.jsonl:1: not UTF-8 text .*UTF-16"):
        read_records(tmp_path / "d.jsonl")


def test_garbage_parquet_is_refused_naming_the_file(tmp_path):
    path = recipe(tmp_path)
    (tmp_path / "bad.parquet").write_bytes(bytes(range(256)) * 3)
    proc = cli(path, tmp_path / "out", f"inputs.0.path={tmp_path / 'bad.parquet'}")
    assert_refused(proc, tmp_path / "out", str(tmp_path / "bad.parquet"), "not a readable Parquet file")


@pytest.mark.parametrize("name,content,needle", [
    ("d.jsonl.gz", b"not gzip at all", "cannot read"),
    ("d.json", b"[" * 100_000, "malformed JSON"),
    ("d.csv", b"\xff\xfe\x00\x00garbage", "UTF"),
])
def test_other_broken_files_name_the_file(tmp_path, name, content, needle):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(CurateError, match=needle) as exc:
        read_records(tmp_path / name)
    assert str(tmp_path / name) in str(exc.value)


def test_rows_of_different_shapes_name_the_line(tmp_path):
    """polars would turn the odd row's messages into null (or its list into a string) without a word."""
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}] * 3
    rows.insert(2, {"messages": "user: hi / assistant: hello"})
    with pytest.raises(CurateError, match=r"d\.jsonl:3: 'messages' is text here but a list on line 1"):
        read_records(write_jsonl(tmp_path / "d.jsonl", rows))
    rows[2] = {"messages": [{"role": "user", "content": ["hi", "there"]}, {"role": "assistant", "content": "x"}]}
    with pytest.raises(CurateError, match=r"d\.jsonl:3: 'messages\[\]\.content' is a list here but text on line 1"):
        read_records(write_jsonl(tmp_path / "d.jsonl", rows))


def test_a_whole_number_column_in_a_text_role_is_read_as_text_with_a_warning(tmp_path, caplog):
    """`"input": 5` in every row was an AttributeError; a number among text was silently a string."""
    rows = [{**r, "input": 5} for r in GOOD[:2]]
    df = read_records(write_jsonl(tmp_path / "n.jsonl", rows))
    assert df["messages"][0][0]["content"] == GOOD[0]["instruction"] + "\n\n5"
    assert "n.jsonl: column 'input' holds numbers" in caplog.text
    caplog.clear()
    mixed = [GOOD[0], {**GOOD[1], "output": 42}, {**GOOD[2], "output": 7.5}]
    df = read_records(write_jsonl(tmp_path / "m.jsonl", mixed))
    assert [m[1]["content"] for m in df["messages"].to_list()][1:] == ["42", "7.5"]
    assert "m.jsonl:2: 'output' holds numbers in 2 of 3 rows" in caplog.text


# 10.6: settings and overrides refused before anything runs ---------------------------------------

def test_malformed_override_value_names_the_override(tmp_path):
    proc = cli(recipe(tmp_path), tmp_path / "out", "seed=[1,")
    assert_refused(proc, tmp_path / "out", "override 'seed=[1,'", "not valid YAML")


def test_seed_out_of_range_is_refused_before_any_step(tmp_path):
    """polars failed with OverflowError on -1 or a huge seed only when splitting, after every step."""
    proc = cli(recipe(tmp_path), tmp_path / "out", "seed=-1")
    assert_refused(proc, tmp_path / "out", "seed: Input should be greater than or equal to 0")
    for seed in (2**63, 10**23):
        with pytest.raises(CurateError, match=r"seed: Input should be less than 9223372036854775808"):
            load_recipe(recipe(tmp_path), [f"seed={seed}"])
    assert load_recipe(recipe(tmp_path), [f"seed={2**63 - 1}"]).config.seed == 2**63 - 1


def test_step_seeds_are_range_checked_too():
    for kind in ("responses", "mix", "minhash_dedup", "nuggets"):
        with pytest.raises(ValidationError, match="seed"):
            step_class(kind).model_validate({"seed": -1})
    with pytest.raises(ValidationError, match="seed"):  # fastText's seed is a C int
        step_class("fasttext").model_validate({"model_path": "m.bin", "seed": 2**31})


@pytest.mark.parametrize("value,needle", [(".inf", "output.validation: Value error, inf is not a size"),
                                           ("1.0", "write 1 for one row")])
def test_infinite_or_ambiguous_validation_is_refused(tmp_path, value, needle):
    proc = cli(recipe(tmp_path), tmp_path / "out", f"output.validation={value}")
    assert_refused(proc, tmp_path / "out", needle)


@pytest.mark.parametrize("value", [".nan", "-1", "2.5", "true"])
def test_other_bad_validation_sizes_are_refused(tmp_path, value):
    with pytest.raises(CurateError, match=r"output\.validation: "):
        load_recipe(recipe(tmp_path), [f"output.validation={value}"])


def test_validation_count_and_fraction_still_work(tmp_path):
    assert load_recipe(recipe(tmp_path), ["output.validation=1"]).config.output.validation == 1
    assert load_recipe(recipe(tmp_path), ["output.validation=0.5"]).config.output.validation == 0.5


def test_stratify_on_a_missing_column_is_refused_before_any_step(tmp_path):
    proc = cli(recipe(tmp_path), tmp_path / "out", "output.stratify=split_group")
    assert_refused(proc, tmp_path / "out", "output.stratify", "'split_group'", "source")


def test_min_above_max_is_refused(tmp_path):
    proc = cli(recipe(tmp_path), tmp_path / "out", "steps.heuristics.min_response_words=50",
               "steps.heuristics.max_response_words=10")
    assert_refused(proc, tmp_path / "out", "steps[0].heuristics", "min_response_words (50)", "max_response_words (10)")


@pytest.mark.parametrize("kind,settings", [
    ("backtranslation", {"min_words": 500, "max_words": 300}),
    ("backtranslation", {"min_instruction_words": 90}),
    ("self_instruct", {"min_words": 200}),
    ("perplexity", {"min": 50.0, "max": 10.0}),
    ("perplexity", {"min_percentile": 90, "max_percentile": 10}),
    ("fasttext", {"model_path": "m.bin", "minn": 5, "maxn": 3}),
])
def test_min_above_max_is_refused_in_every_step(kind, settings):
    with pytest.raises(ValidationError, match="must not exceed"):
        step_class(kind).model_validate(settings)


def test_reasoning_wrapper_must_keep_the_answer(tmp_path):
    with pytest.raises(CurateError, match=r"output\.reasoning_wrapper: .*\{answer\}"):
        load_recipe(recipe(tmp_path), ["output.reasoning_wrapper=<think>{reasoning}</think>"])


# 10.7: a YAML alias bomb is bounded ---------------------------------------------------------------

def _bomb(levels: int = 9, width: int = 9) -> str:
    """A list of lists, each level `width` aliases of the one before: width**levels leaves."""
    parts = [f"&l0 [{', '.join(['e.jsonl'] * width)}]"]
    parts += [f"&l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return "[" + ", ".join(parts) + "]"


def test_yaml_alias_bomb_in_a_recipe_is_refused_at_once(tmp_path):
    text = BASE.replace("steps:\n", f"steps:\n  - decontaminate:\n      eval_sets: {_bomb()}\n")
    started = time.time()
    proc = cli(recipe(tmp_path, text), tmp_path / "out", timeout=60)
    assert time.time() - started < 30
    assert_refused(proc, tmp_path / "out", "r.yaml:5:", "steps[0].decontaminate.eval_sets", "aliases")


def test_yaml_alias_bomb_in_an_override_is_refused(tmp_path):
    started = time.time()
    proc = cli(recipe(tmp_path), tmp_path / "out", f"description={_bomb()}", timeout=60)
    assert time.time() - started < 30
    assert_refused(proc, tmp_path / "out", "override 'description=", "aliases")


def test_ordinary_aliases_still_work_and_stay_separate(tmp_path):
    text = ("name: a\ninputs: [{path: data.jsonl}]\nsteps:\n  - heuristics: &h {min_response_words: 2}\n"
            "  - heuristics: *h\n")
    rec = load_recipe(recipe(tmp_path, text), ["steps.1.heuristics.min_response_words=5"])
    assert [s.min_response_words for s in rec.steps] == [2, 5]
    raw = {"steps": []}
    apply_override(raw, "steps=[&x {exact_dedup: {}}, *x]")
    assert raw["steps"][0] == raw["steps"][1] and raw["steps"][0] is not raw["steps"][1]


def test_recursive_alias_and_deep_nesting_are_refused(tmp_path):
    with pytest.raises(CurateError, match=r"r\.yaml:2: .*refers to itself"):
        load_recipe(recipe(tmp_path, "name: a\ndescription: &d [x, *d]\n"))
    with pytest.raises(CurateError, match=r"r\.yaml: .*nested too deeply"):
        load_recipe(recipe(tmp_path, "name: a\ndescription: " + "[" * 50_000 + "]" * 50_000 + "\n"))


def test_recipe_file_that_is_not_text_is_refused(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_bytes(b"name: x\n\x00\xff\xfe\x81\n")
    proc = cli(path, tmp_path / "out")
    assert_refused(proc, tmp_path / "out", f"{path}:2: not UTF-8 text")
    path.write_text(BASE, encoding="utf-16")  # with a BOM: read
    write_jsonl(tmp_path / "data.jsonl", GOOD)
    assert load_recipe(path).config.name == "bad-input"


# 10.8: invalid rows are rejected with a reason on read --------------------------------------------

def turns(*spec: str) -> list[dict]:
    """turns("u:hi", "a:hello") -> messages."""
    roles = {"s": "system", "u": "user", "a": "assistant"}
    return [{"role": roles.get(s.split(":", 1)[0], s.split(":", 1)[0]), "content": s.split(":", 1)[1]} for s in spec]


@pytest.mark.parametrize("messages,reason", [
    (turns("u:hi", "a:hello"), None),
    (turns("s:be brief", "u:hi", "a:hello", "u:more?", "a:yes"), None),
    (turns("u:a prompt, no answer yet"), None),  # a prompt for a generator
    (turns("s:be brief", "u:a prompt"), None),
    (turns("u:hi", "a:"), None),  # an empty answer: the heuristics filter's to drop, with its reason
    ([], "no turns"),
    (turns("s:only a system turn"), "no user turn"),
    (turns("u:", "a:hello"), "empty user turn"),
    (turns("u:   ", "a:hello"), "empty user turn"),
    (turns("a:hello", "u:hi", "a:again"), "starts with an assistant turn"),
    (turns("u:hi", "a:hello", "u:and then?"), "ends with a user turn"),
    (turns("u:hi", "u:hi again", "a:hello"), "turns do not alternate"),
    (turns("u:hi", "a:", "u:more", "a:yes"), "empty assistant turn"),
    (turns("u:hi", "s:late system", "a:hello"), "system turn after the start"),
    (turns("u:hi", "tool:{}", "a:hello"), "unknown role"),
])
def test_invalid_reason(messages, reason):
    from curate.records import invalid_reason

    got = invalid_reason(messages)
    assert (got[0] if got else None) == reason


def test_split_invalid_names_file_and_row():
    from curate.records import make_frame, split_invalid

    df = make_frame([{"messages": turns("u:hi", "a:hello")}, {"messages": turns("u:", "a:x")}])
    valid, rejected = split_invalid(df, "in.jsonl")
    assert valid.height == 1 and rejected["reason"].to_list() == ["empty user turn"]
    assert rejected["detail"][0].startswith("in.jsonl row 2:")


def test_split_invalid_judges_every_row_at_once():
    """The rules run over all turns of all rows together: each rejected row keeps its own reason,
    row number and turn, and an unknown role is quoted as Python quotes it."""
    from curate.records import make_frame, split_invalid

    ok = turns("u:fine", "a:answer")
    bad = {3: (turns("u:hi", "it's:x", "a:y"), "unknown role", "turn 2 has role \"it's\" (expected one of system, user, assistant)"),
           7: (turns("s:a", "u:b", "a:c", "s:d"), "system turn after the start", "turn 4 is a system turn after a assistant turn"),
           8: (turns("s:a", "a:b"), "starts with an assistant turn", "turn 2 is the first after the system turns"),
           9: (turns("u:a", "a:b", "a:c"), "turns do not alternate", "turn 3 is a assistant turn after a assistant turn"),
           11: (turns("u:a", "a: \x1c", "u:c", "a:d"), "empty assistant turn", "turn 2 is empty"),
           12: (turns("s:x", "s:y"), "no user turn", "only system turns"),
           13: ([], "no turns", "the conversation is empty"),
           14: (turns("u:a", "tool:b"), "unknown role", "turn 2 has role 'tool' (expected one of system, user, assistant)")}
    df = make_frame([{"messages": bad[i][0] if i in bad else ok} for i in range(1, 16)])
    valid, rejected = split_invalid(df, "in.jsonl")
    assert valid.height == 15 - len(bad)
    assert rejected["reason"].to_list() == [r for _, r, _ in bad.values()]
    assert rejected["detail"].to_list() == [f"in.jsonl row {i}: {d}" for i, (_, _, d) in bad.items()]


def test_invalid_rows_become_input_rejects_and_never_reach_train(tmp_path):
    """The run goes on with the valid rows; each invalid one is in rejects.parquet with step
    "inputs", a reason and the file and row; the report's funnel adds up; warnings name the
    files where a value was read as text. One input is UTF-16 (read), one has `"input": 5`."""
    pairs = [*GOOD[:6], {"instruction": None, "output": "An answer to no question at all."},
             {**GOOD[6], "output": 12345}]
    chats = [{"messages": turns("u:How do I boil an egg?", "a:Put it in boiling water for eight minutes.")},
             {"messages": turns("u:Hello there", "a:Hi, how can I help?", "u:Tell me a joke.")},
             {"messages": turns("a:I speak first here, as the assistant.", "u:ok", "a:fine then")},
             {"messages": turns("u:one", "u:two", "a:three four five")},
             {"messages": turns("u:A prompt with no answer yet.")}]
    write_jsonl(tmp_path / "chats.jsonl", chats)
    write_jsonl(tmp_path / "wide.jsonl", [{**r, "input": 5} for r in GOOD[:3]], encoding="utf-16")
    text = BASE.replace("inputs: [{path: data.jsonl, source: pairs}]",
                        "inputs: [{path: data.jsonl, source: pairs}, {path: chats.jsonl, source: chats},"
                        " {path: wide.jsonl, source: wide}]")
    proc = cli(recipe(tmp_path, text, pairs), tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert "data.jsonl:8: 'output' holds numbers in 1 of 8 rows" in proc.stderr
    assert "wide.jsonl: column 'input' holds numbers" in proc.stderr
    assert "data.jsonl: 1 of 8 rows rejected" in proc.stderr and "chats.jsonl: 3 of 5 rows rejected" in proc.stderr

    out = tmp_path / "out"
    rejects = pl.read_parquet(out / "rejects.parquet").filter(pl.col("step") == "inputs")
    assert sorted(zip(rejects["reason"], rejects["detail"].str.extract(r"(\w+\.jsonl row \d+)"))) == [
        ("empty user turn", "data.jsonl row 7"),
        ("ends with a user turn", "chats.jsonl row 2"),
        ("starts with an assistant turn", "chats.jsonl row 3"),
        ("turns do not alternate", "chats.jsonl row 4"),
    ]
    report = json.loads((out / "report.json").read_text())
    inputs = report["steps"][0]
    assert (inputs["rows_in"], inputs["rows_out"]) == (16, 12)
    assert inputs["dropped"] == {"empty user turn": 1, "ends with a user turn": 1,
                                 "starts with an assistant turn": 1, "turns do not alternate": 1}
    assert report["rows"]["in"] == report["rows"]["out"] + report["rows"]["rejected"] == 16

    written = pl.concat([pl.read_parquet(p) for p in (out / "data").glob("*.parquet")])
    assert written.height == report["rows"]["out"] == 11  # the prompt-only row has no answer: heuristics drops it
    for msgs in written["messages"].to_list():
        assert [m["role"] for m in msgs] == ["user", "assistant"] and all(m["content"].strip() for m in msgs)
    answers = {m[1]["content"] for m in written["messages"].to_list()}
    assert "12345" in answers
    assert {m[0]["content"] for m in written["messages"].to_list() if m[0]["content"].endswith("\n\n5")}


def test_an_input_with_no_valid_row_is_refused(tmp_path):
    rows = [{"messages": turns("a:I speak first.", "u:ok", "a:fine")}] * 3
    proc = cli(recipe(tmp_path, rows=rows), tmp_path / "out")
    assert_refused(proc, tmp_path / "out", "data.jsonl", "none of its 3 rows", "starts with an assistant turn")


# main(): an unexpected exception -------------------------------------------------------------------

BUG = ("import sys, curate.engine, curate.cli\n"
       "def broken(*a, **k):\n    raise KeyError('boom')\n"
       "curate.engine.run_recipe = broken\n"
       "sys.argv = ['curate', 'run', sys.argv[1], '--out', sys.argv[2]]\n"
       "curate.cli.main()\n")


def test_an_unexpected_exception_is_a_short_message_and_exit_1(tmp_path):
    """The bug is simulated (run_recipe replaced by a function that raises): no real bug is kept
    around to trigger it. CURATE_DEBUG=1 shows the traceback."""
    path = recipe(tmp_path)
    args = [sys.executable, "-c", BUG, str(path), str(tmp_path / "out")]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "KeyError: 'boom'" in proc.stderr and "CURATE_DEBUG=1" in proc.stderr and "report" in proc.stderr
    assert "Traceback" not in proc.stderr and "╭" not in proc.stderr
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "CURATE_DEBUG": "1"})
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "broken" in proc.stderr


def test_an_answer_column_read_as_final_answers_gets_a_hint_when_no_row_has_a_response(tmp_path, caplog):
    """GSM8K's `answer` is each row's final answer, not its response: a filter recipe would drop
    every row as "empty response". The run says which column to name; not when `response` is
    given, nor for a recipe whose steps call a teacher (prompts with answers are its input)."""
    import logging

    from curate.inputs import read_inputs
    from curate.recipe import build_recipe

    data = tmp_path / "gsm.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i} + 1?", "answer": f"{i} + 1 = {i + 1}"}) + "\n"
                            for i in range(30)))
    filters = [{"heuristics": {}}]
    cases = [({}, filters, True), ({"response": "answer"}, filters, False),
             ({}, [{"verified_cot": {"k": 1}}], False)]
    for given, steps, hinted in cases:
        caplog.clear()
        recipe = build_recipe({"name": "t", "inputs": [{"path": str(data), **given}], "steps": steps})
        with caplog.at_level(logging.WARNING, logger="curate.inputs"):
            read_inputs(recipe, 100).close()
        assert ("-o inputs.0.response=answer" in caplog.text) == hinted, (given, steps, caplog.text)
