"""self_instruct: numbered-list parsing, the unusable and ROUGE-L novelty filters, rounds up to a
target, instance generation and its filters, with a rule-based teacher (no network, no model)."""

import asyncio
import json
import re
from pathlib import Path

import datasets
import polars as pl
import pytest

from curate.errors import CurateError
from curate.io import read_records
from curate.llm import LLM, Request, Response
from curate.llm.base import Backend
from curate.recipe import load_recipe
from curate.records import make_frame
from curate.steps import Context
from synth.rouge import rouge_l, tokenize
from synth.self_instruct import (
    UNUSABLE_WORDS,
    SelfInstruct,
    _word_pattern,
    copies_prompt,
    instruction_failure,
    parse_instance,
    parse_numbered,
    split_seed,
)

from tests.conftest import run_catalogue_on_embedded

ROOT = Path(__file__).resolve().parents[1]
SEEDS = ROOT / "recipes" / "data" / "self_instruct_seeds.jsonl"


# ---------------------------------------------------------------------------------------------
# Pure functions

def test_parse_numbered_formats_preamble_continuations_and_postamble():
    text = """Sure! Here are some new tasks:

9. Write a limerick about a cat who hates Mondays.
10) Explain how a bicycle gear works
to someone who has never ridden one.
**11.** Summarise the plot of a fairy tale in three sentences.
Task 12: Convert 5 kilometres to miles.
- 13. "List four uses of baking soda."
14. **Instruction:** Give a synonym for "happy".
15. No 15: "Name a primary colour."
16.

I hope these help!
16 is my favourite number."""
    assert parse_numbered(text) == [
        "Write a limerick about a cat who hates Mondays.",
        "Explain how a bicycle gear works to someone who has never ridden one.",
        "Summarise the plot of a fairy tale in three sentences.",
        "Convert 5 kilometres to miles.",
        "List four uses of baking soda.",
        'Give a synonym for "happy".',
        "Name a primary colour.",
        "",
    ]
    assert parse_numbered("") == [] and parse_numbered(None) == []
    assert parse_numbered("No list here at all.") == []


def test_unusable_filter():
    pat = _word_pattern(UNUSABLE_WORDS)
    fail = lambda t: instruction_failure(t, min_words=3, max_words=12, unusable=pat)
    assert fail("Do it.") == ("too short", "2 words < 3")
    assert fail(" ".join(["word"] * 13))[0] == "too long"
    assert fail("Describe the image below in detail.") == ("unusable keyword", "image")
    assert fail("Draw a map of your street.")[0] == "unusable keyword"
    assert fail("Please go  to the website and summarise it.") == ("unusable keyword", "go  to")
    assert fail("Read the attached FILE and fix typos.")[0] == "unusable keyword"
    assert fail("- dash led instruction here")[0] == "malformed"
    # whole words only: "profile", "graphic", "filed", "mapping" are fine
    assert fail("Write a short profile of a graphic designer.") is None
    assert fail("Explain mapping functions; I filed a bug.") is None
    assert fail('"Quote led" instructions are fine here.') is None
    assert instruction_failure("Describe the image below.", unusable=None) is None


def test_parse_instance():
    assert parse_instance("Input: 3, 1, 2\nOutput: 1, 2, 3") == ("3, 1, 2", "1, 2, 3")
    assert parse_instance("Input: <none>\nOutput: A poem.\nLine two.") == ("", "A poem.\nLine two.")
    assert parse_instance("**Input:** None\n**Output:** Done.") == ("", "Done.")
    assert parse_instance("Just an answer with no labels.") == ("", "Just an answer with no labels.")
    assert parse_instance("Input: something but no output") is None
    assert parse_instance("def f(x):\n    return x\n\nOutput: 10") is None  # input or answer? unparsable
    assert parse_instance("Input: <none>\nOutput: A\n\nOutput: B") == ("", "A")  # a second example is cut
    assert parse_instance("Input: a\nOutput: b\nInput: c\nOutput: d") == ("a", "b")
    assert parse_instance("Output: \n") == ("", "")
    assert parse_instance("[\n<none>\n*No output") is None
    assert parse_instance("Output: first\n\nTask: another task\nInput: x\nOutput: y") == ("", "first")
    assert parse_instance("Output: an answer") == ("", "an answer")


def test_copied_prompt_words():
    prompt = tokenize((ROOT / "synth" / "prompts" / "self_instruct_instructions.txt").read_text())
    assert copies_prompt("Writing, rewriting, classifying, summarising, planning, calculating, coding.", prompt)
    assert not copies_prompt("Write a limerick about a forgetful octopus.", prompt)
    assert not copies_prompt("", prompt)


def test_scaffold_phrases_are_dropped():
    class Meta(RuleTeacher):
        async def acomplete(self, request):
            if "continuing the numbering" in request.message_dicts()[-1]["content"]:
                return Response(text="9. Give me eight new tasks, continuing the numbering from 9.\n"
                                     "10. Writing, rewriting, classifying, summarising, planning, calculating, coding.")
            return await super().acomplete(request)

    result, _ = run(SelfInstruct(target=1, max_rounds=1, requests_per_round=1), backend=Meta())
    assert result.rejected["reason"].to_list() == ["copied prompt words"] * 2
    assert result.rejected["detail"].to_list() == ["contains 'new tasks'", "repeats the generation prompt's wording"]


def test_split_seed():
    assert split_seed("Sort these.\n\n3, 1, 2") == ("Sort these.", "3, 1, 2")
    assert split_seed("Tell a joke.") == ("Tell a joke.", "")


def test_novelty_filter_semantics_near_copies():
    # the filter the step uses: a near-copy of a seed scores >= 0.7 and is dropped
    seed = "Explain why the sky looks blue during the day."
    assert rouge_l(seed, "Explain why the sky looks blue during the daytime.") >= 0.7
    assert rouge_l(seed, "Write a recipe for banana bread with walnuts.") < 0.7


# ---------------------------------------------------------------------------------------------
# The step, with a rule-based teacher

NOVEL = [
    "Write a limerick about a forgetful octopus who loses his hat.",
    "Name three rivers in South America and the countries they cross.",
    "Suggest a weekly chore rota for four flatmates sharing a flat.",
    "Explain the rules of chess castling to a beginner player.",
    "Echo test: repeat the input exactly as it was given to you.",
    "Blank test: this instruction always gets a broken instance back.",
    "Sort test: arrange the given numbers in ascending numeric order.",
    "Describe how compound interest grows savings over ten whole years.",
    "Give advice to a student preparing for their first job interview.",
    "Translate a short greeting into Spanish, Italian and German please.",
]


class RuleTeacher(Backend):
    """Instruction prompts: a numbered list whose content depends on the request's seed;
    instance prompts: an instance whose shape depends on the task's wording."""

    name, model, max_concurrency = "rule", "rule", 4

    def __init__(self):
        self.prompts: list[str] = []

    async def acomplete(self, request: Request) -> Response:
        await asyncio.sleep(0)
        prompt = request.message_dicts()[-1]["content"]
        self.prompts.append(prompt)
        if "continuing the numbering" in prompt:
            start = int(re.search(r"numbering from (\d+)", prompt).group(1))
            s = request.seed
            items = [
                "Write a haiku about the first snow of the winter.",  # near-copy of a seed
                "Do it.",  # too short
                "Describe the picture of a sunset in detail.",  # unusable
                NOVEL[(2 * s) % len(NOVEL)],
                NOVEL[(2 * s + 1) % len(NOVEL)],
            ]
            if s == 1:
                return Response(text="I cannot think of any tasks right now.")
            text = "Here are new tasks:\n" + "\n".join(f"{start + i}. {t}" for i, t in enumerate(items))
            return Response(text=text, prompt_tokens=10, completion_tokens=20)
        task = prompt.rsplit("Task:", 1)[-1].strip()
        if task.startswith("Echo"):
            return Response(text="Input: hello\nOutput: hello")
        if task.startswith("Blank"):
            return Response(text="Input: some input only")
        if task.startswith("Translate"):
            return Response(text="Here is my answer.\nOutput: Hola")
        if task.startswith("Sort"):
            return Response(text="Input: 3, 1, 2\nOutput: 1, 2, 3")
        if "interview" in task:
            return Response(text="Input: <none>\nOutput: Prepare", finish_reason="length")
        return Response(text=f"Input: <none>\nOutput: An answer to: {task}", prompt_tokens=5, completion_tokens=7)


def seeds_frame() -> pl.DataFrame:
    return read_records(SEEDS, source="seeds")


def run(step, df=None, backend=None):
    backend = backend or RuleTeacher()
    result = step.run(seeds_frame() if df is None else df, Context(llm=LLM(backend, show_progress=False), seed=0))
    return result, backend


def test_rounds_filters_instances_and_accounting():
    step = SelfInstruct(target=8, max_rounds=3, requests_per_round=2, new_per_request=5)
    result, _ = run(step)
    gen = result.stats["generation"]
    rej = result.rejected
    reasons = rej["reason"].to_list()
    # round 1: seeds 0 and 1; seed 1 parses nothing
    assert "no instructions parsed" in reasons
    # the near-copy of a seed, the short one and the picture one are dropped every time
    answered = gen["requests"] - reasons.count("no instructions parsed")
    sims = rej.filter(pl.col("reason") == "similar to pool")
    assert reasons.count("too short") == reasons.count("unusable keyword") == answered
    assert sum(d.endswith("vs: Write a haiku about the first snow of winter.") for d in sims["detail"]) == answered
    assert sims["detail"][0].endswith("vs: Write a haiku about the first snow of winter.")  # the seed it copies
    assert sims["detail"][0].startswith("ROUGE-L ")
    # every parsed candidate is accepted or dropped at the instruction stage
    inst_reasons = {"too short", "too long", "malformed", "unusable keyword", "similar to pool", "over target",
                    "truncated", "copied prompt words"}
    assert gen["parsed"] == gen["accepted_instructions"] + sum(r in inst_reasons for r in reasons)
    assert gen["accepted_instructions"] == 8 == gen["target"]
    assert gen["pool_size"] >= 22 + 8
    # instances: one per accepted instruction; echo, blank and interview ones are dropped
    assert gen["instances_generated"] == 8
    kept = result.kept
    assert kept.height + gen["instances_dropped"] == 8 and gen["kept"] == kept.height
    assert set(kept["source"]) == {"self_instruct"}
    users = kept["messages"].list.first().struct.field("content").to_list()
    answers = kept["messages"].list.last().struct.field("content").to_list()
    assert all(not u.startswith(("Echo", "Blank")) and not u.startswith("Translate") for u in users)
    inst = rej.filter(pl.col("reason").is_in(["output repeats input", "unparsable instance", "instance truncated"]))
    assert sorted(inst["reason"].to_list()) == ["instance truncated", "output repeats input", "unparsable instance",
                                                "unparsable instance"]
    for u, a in zip(users, answers):
        if u.startswith("Sort"):
            assert u.endswith("\n\n3, 1, 2") and a == "1, 2, 3"
        else:
            assert a == f"An answer to: {u}"
    assert kept["self_instruct_round"].min() >= 1
    meta = kept["meta"][0]
    assert set(json.loads(meta["params"])) == {"instruction", "instance"} and meta["teacher"] == "rule"
    assert result.stats["llm"]["requests"] == gen["requests"] + gen["instances_generated"]


def test_in_context_mix_of_human_and_generated_and_determinism():
    step = SelfInstruct(target=30, max_rounds=2, requests_per_round=2, new_per_request=5)
    result, backend = run(step)
    gen_prompts = [p for p in backend.prompts if "continuing the numbering" in p]
    accepted_r1 = set(result.kept.filter(pl.col("self_instruct_round") == 1)["messages"].list.first()
                      .struct.field("content").to_list())
    human = {json.loads(line)["instruction"] for line in SEEDS.read_text().splitlines()}
    for p in gen_prompts:
        examples = re.findall(r"^\d+\. (.+)$", p, re.MULTILINE)
        assert len(examples) == 8 and "numbering from 9" in p
    r2 = [re.findall(r"^\d+\. (.+)$", p, re.MULTILINE) for p in gen_prompts[2:]]
    assert r2, "a second round ran"
    for examples in r2:  # 6 seeds + 2 generated in round 2
        assert sum(e in human for e in examples) == 6
        assert sum(e not in human for e in examples) == 2
    # the draw is fixed by (seed, round, prompt)
    assert step.in_context(sorted(human), ["a", "b", "c"], 0, 2, 1) == step.in_context(sorted(human), ["a", "b", "c"], 0, 2, 1)
    assert step.in_context(sorted(human), ["a", "b", "c"], 0, 2, 1) != step.in_context(sorted(human), ["a", "b", "c"], 1, 2, 1)
    assert accepted_r1


def test_over_target_and_truncated_list():
    class Truncating(RuleTeacher):
        async def acomplete(self, request):
            r = await super().acomplete(request)
            if "continuing the numbering" in request.message_dicts()[-1]["content"] and request.seed == 0:
                return Response(text=r.text, finish_reason="length")
            return r

    result, _ = run(SelfInstruct(target=1, max_rounds=1, requests_per_round=3, new_per_request=5), backend=Truncating())
    reasons = result.rejected["reason"].to_list()
    gen = result.stats["generation"]
    assert gen["accepted_instructions"] == 1
    assert "over target" in reasons and "truncated" in reasons
    assert gen["parsed"] == 1 + len(reasons) - reasons.count("no instructions parsed")  # all accounted for
    trunc = result.rejected.filter(pl.col("reason") == "truncated")
    assert trunc["messages"][0][0]["content"] == NOVEL[1]  # the last item of the cut list


def test_multiple_instances_same_input_and_duplicates():
    class Multi(RuleTeacher):
        async def acomplete(self, request):
            prompt = request.message_dicts()[-1]["content"]
            if "continuing the numbering" in prompt:
                return Response(text="9. Write a limerick about a forgetful octopus who loses his hat.")
            return Response(text=["Input: <none>\nOutput: one", "Input: <none>\nOutput: one",
                                  "Input: <none>\nOutput: two", "Input: x\nOutput: three"][request.sample])

    result, _ = run(SelfInstruct(target=1, max_rounds=1, requests_per_round=1, instances_per_task=4), backend=Multi())
    assert sorted(result.rejected["reason"].to_list()) == ["duplicate instance", "same input, different output"]
    assert result.kept["messages"].list.last().struct.field("content").to_list() == ["one", "three"]


def test_keep_seeds_and_errors():
    result, _ = run(SelfInstruct(target=2, max_rounds=1, requests_per_round=1, keep_seeds=True))
    assert result.kept.filter(pl.col("source") == "seeds").height == 22
    with pytest.raises(CurateError, match="needs seed tasks"):
        run(SelfInstruct(), df=make_frame([{"messages": []}]).clear())
    with pytest.raises(ValueError):
        SelfInstruct(num_human=0, num_generated=0)


def test_recipe_validates():
    recipe = load_recipe(ROOT / "recipes" / "self-instruct-general.yaml")
    assert recipe.steps[0].kind == "self_instruct"


# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(1800)  # a minute idle; far longer on a loaded shared machine
def test_recipe_on_embedded_model(tmp_path):
    out = tmp_path / "out"
    report, marker = run_catalogue_on_embedded(
        "self-instruct-general", out, ["inputs", "self_instruct", "heuristics", "exact_dedup"], rows_in=22)
    steps, gen = report["steps"], marker["generation"]
    si = steps[1]
    assert si["rows_out"] == gen["kept"]
    # every parsed instruction and every instance is accounted for in the step's rejects
    dropped = sum(si["dropped"].values())
    assert dropped >= gen["parsed"] - gen["accepted_instructions"] + gen["instances_dropped"]
    assert si["llm"]["requests"] == gen["requests"] + gen["instances_generated"]
    rejects = pl.read_parquet(out / "rejects.parquet")
    assert rejects["reason"].null_count() == 0
    ds = datasets.load_dataset("parquet", data_files=str(out / "data" / "train.parquet"), split="train")
    assert len(ds) == report["rows"]["splits"].get("train", len(ds))
    for row in ds:
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"] and row["source"] == "self_instruct"
    print(f"\nself-instruct: {json.dumps(gen)}\nfunnel: {[(s['kind'], s['rows_in'], s['rows_out'], s['dropped']) for s in steps]}")
