"""Stored scores are never someone else's, and a rerun never reuses stale output.

A filter reuses the scores in a frame only where they carry its own fingerprint (same kind, code
version, scoring settings, files and rows); two steps of one kind in a recipe get their own columns.
A rerun of a recipe skips a step only if its hash is unchanged, and the hash covers every input
column and input setting, the step's settings, the content of every file it reads and its code
version. Everything here runs on real files and real recipes; the teachers are an in-process rule
backend (counting requests) and the fault-injecting OpenAI-compatible server on 127.0.0.1.
"""

import asyncio
import json

import polars as pl
import pytest

from curate.engine import run_recipe
from curate.errors import CurateError
from curate.io import read_records
from curate.llm import LLM, Request, Response
from curate.llm.base import Backend
from curate.recipe import load_recipe
from curate.records import make_frame
from filters.decontaminate import Decontaminate
from filters.dedup import ExactDedup, MinHashDedup
from filters.heuristics import Heuristics
from filters.judge import Judge
from tests.conftest import filter_recipe, write_jsonl


def pairs(*rows):
    return make_frame([{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
                       for q, a in rows])


def run(recipe_text, folder, out="out", overrides=()):
    (folder / "r.yaml").write_text(recipe_text)
    return run_recipe(load_recipe(folder / "r.yaml", list(overrides)), folder / out, show_progress=False)


def skipped(report):
    return [s["skipped"] for s in report["steps"][1:]]


# 8.2: stored scores ---------------------------------------------------------------------------
TWO_DEDUPS = """
name: two-dedups
inputs: [{path: data.jsonl, source: mine}]
steps:
  - exact_dedup: {field: response}
  - exact_dedup: {field: prompt}
"""


def test_two_steps_of_one_kind_score_their_own_field(tmp_path):
    write_jsonl(tmp_path / "data.jsonl", [{"prompt": "What is rain?", "completion": "Water falling from clouds."},
                                          {"prompt": "What is rain?", "completion": "Drops of water from the sky."},
                                          {"prompt": "What is snow?", "completion": "Frozen water falling."}])
    report = run(TWO_DEDUPS, tmp_path)
    assert [(s["rows_in"], s["rows_out"]) for s in report["steps"][1:]] == [(3, 3), (3, 2)]
    records = pl.read_parquet(tmp_path / "out" / "records.parquet")
    assert {"score_exact_dedup_dup_of", "score_exact_dedup_2_dup_of"} <= set(records.columns)
    assert set(report["filters"]) == {"01-exact_dedup", "02-exact_dedup"}

    # the same in Python: the prompt dedup does not take the response dedup's scores for its own
    df = pairs(("What is rain?", "Water."), ("What is rain?", "Drops."))
    by_response = ExactDedup(field="response").score(df)
    kept, rejected = ExactDedup(field="prompt").split(by_response)
    assert kept.height == 1 and rejected["reason"].to_list() == ["exact duplicate"]
    with pytest.raises(ValueError, match="did not make"):
        ExactDedup(field="prompt").keep(by_response)


def test_recipe_names_repeated_kinds_and_refuses_clashing_names(tmp_path):
    recipe = """
name: names
inputs: [{path: data.jsonl}]
steps:
  - exact_dedup: {field: response}
  - heuristics: {}
  - exact_dedup: {field: prompt}
  - exact_dedup: {field: text, name: mine}
"""
    (tmp_path / "r.yaml").write_text(recipe)
    steps = load_recipe(tmp_path / "r.yaml").steps
    assert [s.column for s in steps] == ["score_exact_dedup", "score_heuristics", "score_exact_dedup_2", "score_mine"]
    (tmp_path / "r.yaml").write_text(recipe.replace("name: mine", "name: heuristics"))
    with pytest.raises(CurateError, match=r"steps\[3\]\.exact_dedup\.name: 'heuristics' .* steps\[1\]"):
        load_recipe(tmp_path / "r.yaml")


ONE_DEDUP = """
name: one-dedup
inputs: [{path: data.jsonl, source: part}]
steps:
  - exact_dedup: {}
"""


def test_scores_in_an_earlier_runs_records_are_not_reused_on_other_rows(tmp_path):
    """Two runs' records.parquet merged: each row carries exact_dedup scores made on its own run's
    rows, where it had no duplicate; on the merged rows one of them is a duplicate."""
    for name, rows in (("a", [("What is rain?", "Water falling."), ("Name a planet.", "Mars.")]),
                       ("b", [("What is snow?", "Frozen rain."), ("What is rain?", "Water falling.")])):
        (tmp_path / name).mkdir()
        write_jsonl(tmp_path / name / "data.jsonl", [{"prompt": q, "completion": a} for q, a in rows])
        assert run(ONE_DEDUP, tmp_path / name)["rows"]["out"] == 2
    merged = pl.concat([pl.read_parquet(tmp_path / n / "out" / "records.parquet") for n in "ab"])
    assert merged.height == 4 and merged["score_exact_dedup_dup_of"].null_count() == 4
    kept, rejected = ExactDedup().split(merged)
    assert kept.height == 3 and rejected["reason"].to_list() == ["exact duplicate"]
    # read back as records (the way a recipe reads its inputs), the same
    merged = pl.concat([read_records(tmp_path / n / "out" / "records.parquet") for n in "ab"])
    assert ExactDedup().split(merged)[0].height == 3


class CountingJudge(Backend):
    """An in-process teacher that grades by rule ('good' in the response: 5, else 2) and counts
    the requests it answers, so a test sees exactly when a filter scores."""

    name, model, max_concurrency = "counting", "rule-v1", 2

    def __init__(self):
        self.requests = 0

    async def acomplete(self, request: Request) -> Response:
        await asyncio.sleep(0)
        self.requests += 1
        good = "good" in request.message_dicts()[-1]["content"].split("Response:")[-1]
        return Response(text=f"Score: {5 if good else 2}\nReason: rule.")


def test_rethresholding_never_rescores_but_new_settings_and_new_rows_do(tmp_path):
    backend = CountingJudge()
    llm = LLM(backend, show_progress=False)
    df = pairs(("Explain rain.", "A good answer."), ("Explain snow.", "A bad answer."), ("Explain fog.", "good"))
    scored = Judge(min_score=3).use(llm).score(df)
    assert backend.requests == 3
    # another threshold: decided from the stored scores, also after a parquet round trip
    scored.write_parquet(tmp_path / "scored.parquet")
    for frame in (scored, pl.read_parquet(tmp_path / "scored.parquet")):
        kept, _ = Judge(min_score=4).use(llm).split(frame)
        assert kept.height == 2
        assert Judge(min_score=1).use(llm).keep(frame)[0].all()
    assert backend.requests == 3
    # a row added since: only that row is graded (a judge's score is the row's own business)
    more = pl.concat([scored, pairs(("Explain hail.", "good too"))], how="diagonal_relaxed")
    kept, _ = Judge(min_score=4).use(llm).split(more)
    assert backend.requests == 4 and kept.height == 3
    # a row edited since it was graded (its stored score kept): only that row is graded again
    edited = scored.with_columns(pl.when(pl.int_range(pl.len()) == 1)
                                 .then(pairs(("Explain snow.", "A good answer now.")).get_column("messages").first())
                                 .otherwise(pl.col("messages")).alias("messages"))
    kept, _ = Judge(min_score=4).use(llm).split(edited)
    assert backend.requests == 5 and kept.height == 3
    # a scoring setting changed (the scale), or another judge model: every row is graded again
    Judge(min_score=4, scale=10).use(llm).split(scored)
    assert backend.requests == 8
    other = CountingJudge()
    other.model = "rule-v2"
    Judge(min_score=4).use(LLM(other, show_progress=False)).split(scored)
    assert other.requests == 3


def test_rethresholding_dedup_and_heuristics_from_stored_scores(monkeypatch):
    import filters.dedup as dedup

    calls = []
    real = dedup.minhash_signatures
    monkeypatch.setattr(dedup, "minhash_signatures", lambda *a, **k: calls.append(1) or real(*a, **k))
    texts = ["the quick brown fox jumps over the lazy dog today", "the quick brown fox jumps over the lazy dog now",
             "a completely different sentence about rain and snow"]
    df = pairs(*[(t, t) for t in texts])
    scored = MinHashDedup(threshold=0.5, bands=16, rows=8, ngram=1).score(df)
    assert len(calls) == 1
    assert MinHashDedup(threshold=0.5, bands=16, rows=8, ngram=1, verify=False).split(scored)[0].height == 2
    assert MinHashDedup(threshold=0.95, bands=16, rows=8, ngram=1).split(scored)[0].height == 3  # stricter
    assert len(calls) == 1
    MinHashDedup(threshold=0.5, bands=16, rows=8, ngram=2).split(scored)  # a scoring setting: rescored
    assert len(calls) == 2
    # diversity: a tau that keeps every row on its side re-thresholds; one that changes the greedy
    # walk cannot be answered from the stored scores, so split() scores again (keep() says so)
    from filters.diversity import Diversity

    near = pairs(("the cat sat on the mat", "ok"), ("the cat sat on the mat today", "ok"), ("rain falls", "ok"))
    div = Diversity(tau=0.9, field="prompt").score(near)
    assert Diversity(tau=0.95, field="prompt").split(div)[0].height == Diversity(tau=0.9, field="prompt").split(div)[0].height
    with pytest.raises(ValueError, match="rescore"):
        Diversity(tau=0.5, field="prompt").keep(div)
    assert Diversity(tau=0.5, field="prompt").split(div)[0].height == Diversity(tau=0.5, field="prompt").split(near)[0].height
    # heuristics: the thresholds decide, the refusal patterns score
    h = Heuristics().score(pairs(("Q?", "one two three four"), ("Q?", "As an AI I cannot help")))
    def rescored(*args):
        raise RuntimeError("rescored")

    monkeypatch.setattr(Heuristics, "compute_scores", rescored)
    assert Heuristics(min_response_words=5).split(h)[0].height == 0
    assert Heuristics(drop_refusals=False).split(h)[0].height == 2
    with pytest.raises(RuntimeError, match="rescored"):
        Heuristics(refusal_patterns=["nothing"]).split(h)


# 8.3 and 10.5: resume -------------------------------------------------------------------------
FILTERS = filter_recipe("resume", source="original")


def test_renamed_source_reruns_every_step(tmp_path):
    write_jsonl(tmp_path / "data.jsonl", [{"prompt": "What is rain?", "completion": "Water falling from clouds."},
                                          {"prompt": "Name a planet.", "completion": "Mars is a planet."}])
    assert skipped(run(FILTERS, tmp_path)) == [False, False]
    assert skipped(run(FILTERS, tmp_path)) == [True, True]
    renamed = run(FILTERS, tmp_path, overrides=["inputs.0.source=renamed"])
    assert skipped(renamed) == [False, False]
    assert pl.read_parquet(tmp_path / "out" / "data" / "train.parquet")["source"].unique().to_list() == ["renamed"]
    assert list(renamed["sources"]) == ["renamed"]  # the report and card name it too
    # the input file's content counts too, not only its path and settings
    write_jsonl(tmp_path / "data.jsonl", [{"prompt": "What is rain?", "completion": "Water falling from clouds."},
                                          {"prompt": "Name a planet.", "completion": "Venus is a planet."}])
    assert skipped(run(FILTERS, tmp_path, overrides=["inputs.0.source=renamed"])) == [False, False]


def test_a_new_code_version_reruns_the_step_and_those_after_it(tmp_path, monkeypatch):
    write_jsonl(tmp_path / "data.jsonl", [{"prompt": "What is rain?", "completion": "Water falling from clouds."}])
    run(FILTERS, tmp_path)
    monkeypatch.setattr(ExactDedup, "code_version", ExactDedup.code_version + 1)
    assert skipped(run(FILTERS, tmp_path)) == [True, False]


COT = """
name: cot-resume
inputs: [{path: problems.jsonl, source: toy, prompt: question, gold: gold}]
teacher: {backend: openai, model: echo, base_url: BASE_URL}
steps:
  - verified_cot: {k: 1, max_samples: 1, max_tokens: 50, style: gsm8k, template: solve.txt}
"""


def test_changed_gold_reruns_chain_of_thought_verification(tmp_path, monkeypatch):
    """The echo server repeats the prompt, so each question states its own answer ("The answer is
    7"); the step keeps the rationale only if it matches the gold. Changing the gold must rerun it."""
    from tests.servers.fault_server import fault_server

    monkeypatch.setenv("OPENAI_API_KEY", "test-key-not-secret")
    problems = [{"question": f"Add {i} and {i}. The answer is {2 * i}", "gold": str(2 * i)} for i in range(1, 4)]
    write_jsonl(tmp_path / "problems.jsonl", problems)
    (tmp_path / "solve.txt").write_text("Problem: {question}")
    with fault_server() as server:
        recipe = COT.replace("BASE_URL", server.base_url)
        first = run(recipe, tmp_path)
        assert first["rows"]["out"] == 3
        assert skipped(run(recipe, tmp_path)) == [True]
        problems[0]["gold"] = "5"  # a corrected reference answer
        write_jsonl(tmp_path / "problems.jsonl", problems)
        again = run(recipe, tmp_path)
    assert skipped(again) == [False] and again["rows"]["out"] == 2
    records = pl.read_parquet(tmp_path / "out" / "records.parquet")
    assert sorted(records["gold"].to_list()) == ["4", "6"]


def numbered_rows(n):
    """n rows whose prompts share no 13-word run and are no near copies of each other (numbers
    alone would not do: a prompt with one number changed is a near copy to decontamination)."""
    import random

    vocab = ("river mountain teacher planet garden violin engine harbor winter market lantern desert "
             "forest pencil castle rocket bakery island meadow thunder library carpet canyon falcon "
             "orchard pirate glacier tunnel compass volcano").split()
    rng = random.Random(7)
    rows = []
    for i in range(n):
        words = rng.sample(vocab, 12)
        rows.append({"prompt": f"Question {i}: write a short story that mentions " + ", ".join(words) + ".",
                     "completion": f"Once upon a time, a {words[0]} met a {words[1]}."})
    return rows


DECONTAMINATE = """
name: decontaminate-resume
inputs: [{path: data.jsonl, source: rows}]
steps:
  - decontaminate: {eval_sets: [eval.jsonl], field: prompt}
"""


def test_appended_eval_items_rerun_decontamination(tmp_path):
    rows = numbered_rows(60)
    write_jsonl(tmp_path / "data.jsonl", rows)
    unrelated = [{"question": f"Unrelated item {i}: which colour is the sky on a clear summer day at noon in town?"}
                 for i in range(2)]
    write_jsonl(tmp_path / "eval.jsonl", [{"question": rows[-1]["prompt"]}])
    assert run(DECONTAMINATE, tmp_path)["rows"]["out"] == 59
    # the same path, 10 more items: 8 are questions of the training rows
    added = [{"question": r["prompt"]} for r in rows[:8]] + unrelated
    with open(tmp_path / "eval.jsonl", "a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in added))
    again = run(DECONTAMINATE, tmp_path)
    assert skipped(again) == [False]
    assert again["rows"]["out"] == 51
    assert pl.read_parquet(tmp_path / "out" / "data" / "train.parquet").height == 51


def test_decontaminate_rescores_stored_scores_after_the_eval_set_changed(tmp_path):
    rows = numbered_rows(5)
    df = pairs(*[(r["prompt"], r["completion"]) for r in rows])
    write_jsonl(tmp_path / "eval.jsonl", [{"question": "Which colour is the sky on a clear summer day at noon in town?"}])
    scored = Decontaminate(eval_sets=[str(tmp_path / "eval.jsonl")]).score(df)
    assert Decontaminate(eval_sets=[str(tmp_path / "eval.jsonl")]).split(scored)[0].height == 5
    with open(tmp_path / "eval.jsonl", "a") as f:
        f.write(json.dumps({"question": rows[2]["prompt"]}) + "\n")
    kept, rejected = Decontaminate(eval_sets=[str(tmp_path / "eval.jsonl")]).split(scored)
    assert kept.height == 4 and rejected["reason"].to_list() == ["overlaps eval set"]


def test_every_file_a_step_reads_counts_by_content(tmp_path):
    """Prompt templates (given or shipped), anchor files and model files are in the step hash by
    content, and in a filter's fingerprint; thresholds are in neither."""
    from curate.llm.embedded import embedded_model_path
    from filters.perplexity import Perplexity
    from synth.cot import VerifiedCoT
    from synth.evol_instruct import EvolInstruct

    template = tmp_path / "solve.txt"
    template.write_text("Solve: {question}")
    cot = VerifiedCoT(template=str(template))
    before = cot.config_hash()
    template.write_text("Solve this: {question}")
    assert cot.config_hash() != before
    assert VerifiedCoT(rationalize=True).files()[-1].endswith("cot_rationalize.txt")  # the shipped defaults
    assert [f.rsplit("/", 1)[-1] for f in EvolInstruct(operations=["deepen"], check_equal=True).files()] == [
        "evol_deepen.txt", "evol_equal.txt"]

    prompt = tmp_path / "judge.txt"
    prompt.write_text("Rate {response} for {instruction} from 1 to {scale}.")
    judge = Judge(prompt_file=str(prompt), min_score=3)
    fp = judge.fingerprint()
    assert Judge(prompt_file=str(prompt), min_score=4).fingerprint() == fp  # a threshold
    prompt.write_text("Grade {response} for {instruction} from 1 to {scale}.")
    assert judge.fingerprint() != fp

    assert Perplexity().files() == [str(embedded_model_path())]  # the scorer's default model
    assert Perplexity(model_path=str(tmp_path / "other.gguf")).fingerprint() != Perplexity().fingerprint()
