"""Instruction backtranslation: segmentation, instruction parsing, the step with a rule-based
teacher, and the recipe (with judge self-curation) end to end on the embedded model."""

import asyncio
import json
from pathlib import Path

import polars as pl
import pytest

from curate.io import read_records
from curate.llm import LLM, Request, Response
from curate.llm.base import Backend
from curate.records import make_frame
from curate.steps import Context
from synth.backtranslation import Backtranslation, copy_share, instruction_failure, n_words, segment, strip_label

from tests.conftest import check_generator_output, run_catalogue_on_embedded

ROOT = Path(__file__).resolve().parents[1]


def words(n, tag="w"):
    return " ".join(f"{tag}{i}" for i in range(n))


def test_segment_packs_paragraphs_up_to_max_words():
    doc = "\n\n".join([words(30, "a"), words(30, "b"), words(30, "c"), words(10, "d")])
    segs = segment(doc, 60)
    assert [n_words(s) for s in segs] == [60, 40]
    assert segs[0] == words(30, "a") + "\n\n" + words(30, "b")  # paragraph breaks kept inside a segment


def test_segment_cuts_long_paragraphs_between_sentences():
    sentences = [f"Sentence {i} has exactly six words." for i in range(10)]  # 6 words each
    doc = "Intro paragraph here.\n\n" + " ".join(sentences) + "\n\n  \n\nClosing words."
    segs = segment(doc, 20)
    assert segs[0] == "Intro paragraph here."
    assert segs[1] == " ".join(sentences[:3]) and n_words(segs[1]) == 18
    assert all(n_words(s) <= 20 for s in segs) and segs[-1] == "Closing words."
    assert " ".join(" ".join(segs).split()) == " ".join(doc.split())  # nothing lost or reordered


def test_segment_cuts_a_sentence_longer_than_max_words():
    segs = segment(words(25), 10)
    assert [n_words(s) for s in segs] == [10, 10, 5]
    assert segment("", 10) == [] and segment("\n\n \n", 10) == []


def test_instruction_parsing():
    assert strip_label('Instruction: "How do tides work?"') == "How do tides work?"
    assert strip_label("User asked: How do tides work?") == "How do tides work?"
    assert strip_label("**Question:** Why?") == "Why?"
    assert strip_label('The user asked, "How do I feed a starter?"') == "How do I feed a starter?"
    assert strip_label("Here's the user's instruction:\n\nHow do I feed a starter?") == "How do I feed a starter?"
    assert strip_label("Sort these numbers:\n3, 1, 2") == "Sort these numbers:\n3, 1, 2"  # not a preamble
    seg = "The Moon pulls the ocean on the near side of the Earth more strongly than the Earth itself."

    def why(text, finish="stop"):
        return instruction_failure(strip_label(text), seg, finish, min_words=3, max_words=20, max_copy=0.5)

    assert why("How does the Moon cause tides?") is None
    assert why("   ") == why("Instruction:") == "instruction empty"
    assert why("Tides?") == "instruction too short"
    assert why(words(21)) == "instruction too long"
    assert why("Explain how tides work and", finish="length") == "instruction too long"
    assert why("The Moon pulls the ocean on the near side of the Earth.") == "instruction copies the document"
    assert why("Summarise the passage about the Moon.") == "instruction copies prompt words"
    assert why("One instruction:\nThe user wants to know about tides.") == "instruction copies prompt words"
    assert copy_share("a b c", "x y z") == 0.0 and copy_share("short", "short") == 0.0


class RuleWriter(Backend):
    """Writes an instruction by rule from the passage in the prompt: passages containing COPY get the
    passage back, EMPTY nothing, FAIL a failed request, LONG a cut-off answer; others a question."""

    name, model, max_concurrency = "rule", "rule", 2

    async def acomplete(self, request: Request) -> Response:
        await asyncio.sleep(0)
        prompt = request.message_dicts()[-1]["content"]
        passage = prompt.split("Passage:\n", 1)[1].rsplit("\n\nReply", 1)[0]
        if "FAIL" in passage:
            return Response(error="refused by rule")
        if "EMPTY" in passage:
            return Response(text="  ", finish_reason="stop")
        if "COPY" in passage:
            return Response(text=passage, finish_reason="stop")
        if "LONG" in passage:
            return Response(text="Explain in detail how", finish_reason="length")
        return Response(text=f"Instruction: What is {passage.split()[0]} about?", finish_reason="stop",
                        prompt_tokens=10, completion_tokens=6)


def docs(*texts):
    return make_frame([{"messages": [{"role": "user", "content": t}], "source": "docs"} for t in texts])


def test_step_rows_rejects_and_stats():
    long_doc = "\n\n".join([words(8, "alpha"), words(8, "beta"), "Tiny."])
    df = docs(long_doc, "COPY " + words(9), "EMPTY " + words(9), "FAIL " + words(9), "LONG " + words(9), "Short doc.")
    step = Backtranslation(max_words=16, min_words=5, max_tokens=32)
    result = step.run(df, Context(llm=LLM(RuleWriter(), show_progress=False), seed=7))
    kept, rejected, gen = result.kept, result.rejected, result.stats["generation"]

    assert kept.height == 1
    row = kept.to_dicts()[0]
    assert row["messages"] == [{"role": "user", "content": "What is alpha0 about?"},
                               {"role": "assistant", "content": words(8, "alpha") + "\n\n" + words(8, "beta")}]
    assert row["source"] == "backtranslation/docs" and row["bt_document"] == df["id"][0] and row["bt_segment"] == 0
    assert row["meta"]["seed"] == 7 and row["meta"]["teacher"] == "rule" and row["meta"]["completion_tokens"] == 6

    reasons = dict(rejected.group_by("reason").len().iter_rows())
    assert reasons == {"segment too short": 2, "instruction copies the document": 1, "instruction empty": 1,
                       "teacher request failed": 1, "instruction too long": 1}
    assert rejected["detail"].null_count() == 0
    copied = rejected.filter(pl.col("reason") == "instruction copies the document").to_dicts()[0]
    assert copied["detail"].startswith("COPY") and copied["messages"][-1]["role"] == "assistant"
    assert gen == {"documents": 6, "segments": 7, "segments_too_short": 2, "generated": 5, "parsed": 1, "kept": 1}
    assert result.stats["llm"]["requests"] == 5


def test_documents_from_a_txt_folder(tmp_path):
    (tmp_path / "a.txt").write_text("First paragraph of a.\n\nSecond paragraph of a.")
    (tmp_path / "b.txt").write_text(words(12))
    df = read_records(tmp_path)
    result = Backtranslation(max_words=50, min_words=3).run(df, Context(llm=LLM(RuleWriter(), show_progress=False)))
    assert sorted(result.kept["source"].to_list()) == ["backtranslation/a", "backtranslation/b"]


def test_config_is_validated():
    with pytest.raises(ValueError):
        Backtranslation(min_words=50, max_words=20)
    with pytest.raises(ValueError):
        Backtranslation(max_copy=2)


def test_custom_template(tmp_path):
    (tmp_path / "t.txt").write_text("Passage:\n{document}\n\nReply now")
    step = Backtranslation(template=str(tmp_path / "t.txt"), min_words=1)
    result = step.run(docs("Rain falls."), Context(llm=LLM(RuleWriter(), show_progress=False)))
    assert result.kept.height == 1
    default = Backtranslation(min_words=1).run(docs("Rain falls."), Context(llm=LLM(RuleWriter(), show_progress=False)))
    assert result.kept["meta"][0]["template_hash"] != default.kept["meta"][0]["template_hash"]


# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(1800)  # a few minutes idle; far longer on a loaded shared machine
def test_recipe_on_embedded_model(tmp_path):
    out = tmp_path / "out"
    report, marker = run_catalogue_on_embedded(
        "backtranslation", out, ["inputs", "backtranslation", "heuristics", "exact_dedup", "judge"], rows_in=7)
    steps, gen = report["steps"], marker["generation"]
    bt = steps[1]
    # the docs give 10 segments, one of them (the fragment) too short to use
    assert (gen["documents"], gen["segments"], gen["segments_too_short"]) == (7, 10, 1)
    assert bt["dropped"]["segment too short"] == 1
    assert gen["generated"] == 9 and bt["llm"]["requests"] == 9
    assert bt["rows_out"] == gen["kept"] and gen["segments"] == bt["rows_out"] + sum(bt["dropped"].values())
    judge = steps[-1]
    assert judge["llm"]["requests"] == judge["rows_in"]
    # the demo's expected-score judge always reads a score (the written rating did not: see the recipe)
    assert "judge output unparseable" not in judge["dropped"]
    ds, _ = check_generator_output("backtranslation", out, report, gen)
    segments = {json.loads(line)["text"] for line in (ROOT / "recipes/data/backtranslation_docs.jsonl").open()}
    for row in ds:  # the response is a piece of a document, verbatim
        assert any(row["messages"][1]["content"] in doc for doc in segments)
