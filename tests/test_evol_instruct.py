"""Evol-Instruct: elimination rules on handmade cases, lineage bookkeeping with a rule-based teacher,
and the recipe end to end on the embedded model."""

import asyncio
import json
from pathlib import Path

import polars as pl
import pytest

from curate.llm import LLM, Request, Response
from curate.llm.base import Backend
from curate.records import make_frame
from curate.steps import Context
from synth.base import PromptTemplate, build_rows
from synth.evol_instruct import (
    OPERATIONS, SCAFFOLD_PHRASES, EvolInstruct, copied_scaffold, evolution_failure, is_apology, normalize_instruction,
    only_stop_words, parse_equal, response_failure, strip_label,
)

from tests.conftest import check_generator_output, run_catalogue_on_embedded

ROOT = Path(__file__).resolve().parents[1]


def fails(original, evolved, finish="stop", max_words=300):
    return evolution_failure(original, strip_label(evolved), finish, max_words=max_words, scaffold=SCAFFOLD_PHRASES)


def test_no_information_gain_after_normalisation():
    assert fails("Explain why the sky is blue.", "explain why  the sky is blue") == "evolution: no information gain"
    assert fails("Explain why the sky is blue.", "New instruction: Explain, why the sky is BLUE!") == "evolution: no information gain"
    assert fails("Explain why the sky is blue.", "Explain why the sky is blue in two sentences.") is None
    assert normalize_instruction("It's  a TEST, isn't it?") == "it's a test isn't it"


def test_copied_scaffold_words():
    assert fails("Sort a list.", "#Rewritten Prompt#: Sort a list in place.") is None  # a leading label is only formatting
    assert fails("Sort a list.", "Sort a list in place, as in the given prompt.") == "evolution: copied prompt words"
    assert fails("Sort a list.", "Here is the rewritten prompt: sort a list in place") is None  # also a label
    assert fails("Sort a list.", "Sort a list in place. This rewritten prompt adds a rule.") == "evolution: copied prompt words"
    assert fails("Sort a list.", "Rewrite the instruction below so it is harder.") == "evolution: copied prompt words"
    assert copied_scaffold("Nothing to see", SCAFFOLD_PHRASES) is None


def test_parse_failures_of_the_rewrite():
    assert fails("Sort a list.", "   ") == "evolution: empty output"
    assert fails("Sort a list.", "**New instruction:** ...") == "evolution: empty output"
    assert fails("Sort a list.", "Sort a list of ten numbers and", finish="length") == "evolution: truncated output"
    assert fails("Sort a list.", "word " * 50, max_words=40) == "evolution: too long"


def test_strip_label():
    assert strip_label('**New instruction:** "Sort the list."') == "Sort the list."
    assert strip_label("#Rewritten Prompt#:\nSort it.") == "Sort it."
    assert strip_label("Instruction: Sort it.") == "Sort it."
    assert strip_label("Write a prompt: about cats") == "Write a prompt: about cats"  # not a label


def test_response_rules():
    assert is_apology("Sorry, I can't do that.") and not is_apology("Sorry " + "word " * 90)
    assert response_failure("I'm SORRY but that is not possible.") == "evolution: apology response"
    assert response_failure("Sorry for the long answer. " + "Rain forms when droplets grow. " * 20) is None
    assert response_failure("... the, and of it!") == "evolution: response only stop words"
    assert only_stop_words("?!") and not only_stop_words("The sky scatters blue light.")
    assert response_failure("  ") == "evolution: empty response"
    assert response_failure("Blue light scatters more.") is None


def test_parse_equal():
    assert parse_equal("Same") is True and parse_equal("They are equal.") is True
    assert parse_equal("Different") is False and parse_equal("Not the same") is False
    assert parse_equal("not equal") is False
    assert parse_equal("banana") is None and parse_equal(None) is None


def test_every_default_template_exists_and_has_its_field():
    for op in OPERATIONS:
        assert "{instruction}" in PromptTemplate(None, f"evol_{op}").text
    eq = PromptTemplate(None, "evol_equal").text
    assert "{original}" in eq and "{evolved}" in eq


def test_config_is_validated():
    with pytest.raises(ValueError):
        EvolInstruct(operations=["add_constraints", "make_it_funny"])
    with pytest.raises(ValueError):
        EvolInstruct(templates={"nonsense": "x.txt"})
    with pytest.raises(ValueError):
        EvolInstruct(operations=[])


class RuleEvolver(Backend):
    """Answers by rule, no model. The test templates put REWRITE/EQUAL in front of the prompt text.
    REWRITE: instructions containing SAME come back unchanged, SCAFF with scaffold words, EMPTY as
    nothing, FAIL as a failed request; others gain " Use three sentences.". EQUAL: "Same" when the
    evolved text contains TWIN, else "Different". Anything else is a response: SORRY -> an apology,
    STOP -> stop words, else an answer."""

    name, model, max_concurrency = "rule", "rule", 2

    def __init__(self):
        self.prompts = []

    async def acomplete(self, request: Request) -> Response:
        await asyncio.sleep(0)
        text = request.message_dicts()[-1]["content"]
        self.prompts.append(text)
        if text.startswith("REWRITE "):
            ins = text.removeprefix("REWRITE ")
            if "FAIL" in ins:
                return Response(error="refused by rule")
            if "EMPTY" in ins:
                return Response(text="", finish_reason="stop")
            if "SAME" in ins:
                return Response(text=f"New instruction: {ins.lower()}", finish_reason="stop")
            if "SCAFF" in ins:
                return Response(text=f"{ins} (as in the given prompt)", finish_reason="stop")
            return Response(text=f"{ins} Use three sentences.", finish_reason="stop", prompt_tokens=4, completion_tokens=5)
        if text.startswith("EQUAL "):
            return Response(text="Same" if "TWIN" in text.split("|")[1] else "Different", prompt_tokens=2, completion_tokens=1)
        if "SORRY" in text:
            return Response(text="Sorry, I cannot help with that.")
        if "STOP" in text:
            return Response(text="It is what it is, and so on.")
        return Response(text=f"A full answer to: {text}", prompt_tokens=3, completion_tokens=7)


def templates(tmp_path, ops=OPERATIONS):
    out = {}
    for op in ops:
        (tmp_path / f"{op}.txt").write_text("REWRITE {instruction}")
        out[op] = str(tmp_path / f"{op}.txt")
    (tmp_path / "equal.txt").write_text("EQUAL {original}|{evolved}")
    out["equal"] = str(tmp_path / "equal.txt")
    return out


def seeds(*prompts, answered=()):
    if not prompts:
        return build_rows([])
    rows = []
    for p in prompts:
        msgs = [{"role": "user", "content": p}]
        if p in answered:
            msgs.append({"role": "assistant", "content": f"Given answer to {p}"})
        rows.append({"messages": msgs, "source": "seeds"})
    return make_frame(rows)


def run(step, df, backend=None):
    backend = backend or RuleEvolver()
    return step.run(df, Context(llm=LLM(backend, show_progress=False), seed=3)), backend


def test_rounds_lineage_and_elimination(tmp_path):
    df = seeds("Explain rain.", "SAME thing", "SCAFF it", "Tell me SORRY", "Say STOP", "EMPTY out", "FAIL now",
               answered=("Explain rain.",))
    step = EvolInstruct(rounds=2, operations=["add_constraints", "deepen"], templates=templates(tmp_path))
    result, _ = run(step, df)
    kept, rejected, gen = result.kept, result.rejected, result.stats["generation"]

    # seeds: 7 kept; the answered one as it was, the other six answered by the teacher
    seeds_out = kept.filter(pl.col("evol_round") == 0)
    assert seeds_out.height == 7 and set(seeds_out["source"]) == {"seeds"}
    assert "Given answer to Explain rain." in [m[-1]["content"] for m in seeds_out["messages"].to_list()]

    evolved = kept.filter(pl.col("evol_round") > 0).sort("evol_round")
    assert evolved.height == 2  # only "Explain rain." evolves, in both rounds
    r1, r2 = evolved.to_dicts()
    assert r1["messages"][0]["content"] == "Explain rain. Use three sentences."
    assert r2["messages"][0]["content"] == "Explain rain. Use three sentences. Use three sentences."
    assert r1["source"] == f"evol_instruct/r1/{r1['evol_op']}" and r1["evol_op"] in ("add_constraints", "deepen")
    root = seeds_out.filter(pl.col("messages").list.first().struct.field("content") == "Explain rain.")["id"][0]
    assert r1["evol_parent"] == root == r1["evol_root"] == r2["evol_root"] and r2["evol_parent"] == r1["id"]
    meta = r2["meta"]
    assert meta["teacher"] == "rule" and meta["seed"] == 3 + 2 and len(meta["template_hash"]) == 12
    assert set(json.loads(meta["params"])) == {"evolve", "response"}
    assert meta["completion_tokens"] == 5 + 7

    # every failure, both rounds (the lineage keeps its instruction, so it fails again in round 2)
    by_reason = rejected.group_by("reason").len().sort("reason")
    assert dict(by_reason.iter_rows()) == {
        "evolution: apology response": 2, "evolution: copied prompt words": 2, "evolution: empty output": 2,
        "evolution: no information gain": 2, "evolution: response only stop words": 2, "teacher request failed": 2,
    }
    assert rejected["detail"].null_count() == 0
    apology = rejected.filter(pl.col("reason") == "evolution: apology response").to_dicts()[0]
    assert apology["messages"][-1] == {"role": "assistant", "content": "Sorry, I cannot help with that."}
    assert apology["source"].startswith("evol_instruct/r")

    assert gen["seeds"] == 7 and gen["seed_rows_kept"] == 7
    assert [r["attempted"] for r in gen["rounds"]] == [7, 7]
    assert [r["parsed"] for r in gen["rounds"]] == [3, 3]  # rain, SORRY, STOP parse; the rest fail before answering
    assert gen["evolved_rows"] == gen["kept"] == 2 and gen["generated"] == 14
    # funnel arithmetic: every attempt is kept or rejected
    assert gen["generated"] == gen["evolved_rows"] + rejected.height
    assert kept.height == gen["seed_rows_kept"] + gen["evolved_rows"]


def test_operation_choice_is_fixed_by_seed_and_row(tmp_path):
    step = EvolInstruct(rounds=3, templates=templates(tmp_path))
    picks = [[step.pick_operation(0, f"id{i}", r) for r in (1, 2, 3)] for i in range(40)]
    assert picks == [[step.pick_operation(0, f"id{i}", r) for r in (1, 2, 3)] for i in range(40)]
    assert len({op for row in picks for op in row}) == len(OPERATIONS)  # all used over 120 draws
    # reordering the input does not change the draws
    df = seeds(*[f"Question number {i}." for i in range(6)])
    a, _ = run(step, df)
    b, _ = run(step, df.reverse())
    key = ["evol_root", "evol_round"]
    assert a.kept.filter(pl.col("evol_round") > 0).sort(key)["evol_op"].to_list() == \
        b.kept.filter(pl.col("evol_round") > 0).sort(key)["evol_op"].to_list()


def test_llm_equality_check(tmp_path):
    df = seeds("Name a TWIN city.", "Name a river.")
    step = EvolInstruct(rounds=1, operations=["concretize"], check_equal=True, keep_seeds=False,
                        templates=templates(tmp_path, ["concretize"]))
    result, backend = run(step, df)
    assert result.kept["messages"].list.first().struct.field("content").to_list() == ["Name a river. Use three sentences."]
    (rej,) = result.rejected.to_dicts()
    assert rej["reason"] == "evolution: no information gain" and rej["detail"] == "equality check: Same"
    assert set(json.loads(result.kept["meta"][0]["params"])) == {"evolve", "equal", "response"}
    assert sum(p.startswith("EQUAL") for p in backend.prompts) == 2


def test_keep_seeds_false_outputs_only_evolutions(tmp_path):
    step = EvolInstruct(rounds=1, operations=["breadth"], keep_seeds=False, templates=templates(tmp_path, ["breadth"]))
    result, backend = run(step, seeds("Explain rain."))
    assert result.kept.height == 1 and result.kept["source"][0] == "evol_instruct/r1/breadth"
    assert all(p.startswith(("REWRITE", "Explain rain. Use")) for p in backend.prompts)


def test_empty_input():
    result, _ = run(EvolInstruct(), seeds())
    assert result.kept.height == 0 and result.rejected is None


def test_default_templates_render_the_instruction():
    class Echo(Backend):
        name, model = "echo", "echo"

        def __init__(self):
            self.seen = []

        async def acomplete(self, request):
            self.seen.append(request.message_dicts()[-1]["content"])
            return Response(text="Explain rain in the Sahara in three sentences.")

    backend = Echo()
    result, _ = run(EvolInstruct(rounds=1, operations=["add_constraints"], keep_seeds=False), seeds("Explain rain."), backend)
    assert "Explain rain." in backend.seen[0] and "{instruction}" not in backend.seen[0]
    assert result.kept.height == 1


# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(1800)  # a few minutes idle; far longer on a loaded shared machine
def test_recipe_on_embedded_model(tmp_path):
    out = tmp_path / "out"
    report, marker = run_catalogue_on_embedded(
        "evol-instruct", out, ["inputs", "evol_instruct", "heuristics", "exact_dedup", "minhash_dedup"], rows_in=4)
    steps = report["steps"]
    gen = marker["generation"]
    evol = steps[1]
    assert gen["generated"] == 4 * 2 and evol["llm"]["requests"] >= gen["generated"]
    # every evolution attempt is kept or rejected, and the rejects of the step say why
    assert sum(evol["dropped"].values()) == (gen["generated"] - gen["evolved_rows"]) + (gen["seeds"] - gen["seed_rows_kept"])
    assert evol["rows_out"] == gen["seed_rows_kept"] + gen["evolved_rows"]
    _, rejects = check_generator_output("evol-instruct", out, report, gen)
    assert rejects["step"].null_count() == 0
