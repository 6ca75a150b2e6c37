"""How the project loads and runs llama.cpp (issue 8, parts 1 and 6).

Part 1: llama.cpp's AMX extra buffer type segfaults on Sapphire Rapids and later CPUs (llama.cpp
issue 20824). This machine has no AMX, so the crash itself cannot happen here; what is tested is
that every model the project loads goes through `curate.llm.embedded.new_llama`, which loads with
use_extra_bufts=False on x86 and refuses a load where that did not take, plus generation in a
subprocess whose exit status is checked (a segfault is exit -11 there, not an exception here).

Part 6: llama.cpp decodes on an OpenMP team owned by the calling thread; two threads that decode
leave two teams and libgomp then sleeps at every barrier instead of spinning (2.5-3x slower on an
idle 2-core machine). Tested: every llama.cpp decode the project makes runs on one thread, whatever
thread calls it. The speed itself is measured by bench/bench_llama.py, not here.
"""

from __future__ import annotations

import ast
import os
import platform
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from curate.errors import CurateError

ROOT = Path(__file__).resolve().parent.parent
X86 = platform.machine().lower() in {"x86_64", "amd64", "x86", "i386", "i686"}


def _llama_builds(path: Path) -> list[str]:
    """Calls of `Llama(...)` / `x.Llama(...)`, and command lists that run llama-cpp-python's own
    server ([..., "-m", "llama_cpp.server", ...]), in one source file."""
    hits = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            f = node.func
            if (isinstance(f, ast.Name) and f.id == "Llama") or (isinstance(f, ast.Attribute) and f.attr == "Llama"):
                hits.append(f"{path.name}:{node.lineno}: Llama(...)")
        elif isinstance(node, (ast.List, ast.Tuple)):
            words = [e.value for e in node.elts if isinstance(e, ast.Constant)]
            if "llama_cpp.server" in words:
                hits.append(f"{path.name}:{node.lineno}: {words}")
    return hits


def test_no_llama_cpp_model_is_built_outside_the_loader():
    """Every llama_cpp.Llama is built by curate.llm.embedded.new_llama and every server is
    curate.llm.llama_server: a direct construction would skip use_extra_bufts=False."""
    allowed = {
        "curate/llm/embedded.py": 1,  # the loader itself
        "tests/test_llama_loading.py": 1,  # one deliberate unsafe (vocabulary-only) load
        "bench/bench_llama.py": 1,  # the default load, to measure what avoiding it costs (not on AMX)
    }
    found: dict[str, list[str]] = {}
    for folder in ("curate", "filters", "synth", "tests", "bench", "recipes"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            hits = _llama_builds(path)
            if len(hits) != allowed.get(rel, 0):
                found[rel] = hits
    assert not found, f"llama.cpp models built outside curate.llm.embedded.new_llama: {found}"


def _fake_old_params():
    """llama_model_params as a llama-cpp-python without the use_extra_bufts field would have it.
    A mock: such a version cannot be installed next to the real one here."""
    import ctypes

    class OldParams(ctypes.Structure):
        _fields_ = [("vocab_only", ctypes.c_bool), ("use_mmap", ctypes.c_bool)]

    return OldParams


def test_a_llama_cpp_without_the_field_fails_loudly(monkeypatch):
    llama_cpp = pytest.importorskip("llama_cpp")
    from curate.llm import embedded

    monkeypatch.setattr(embedded.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(llama_cpp.llama_cpp, "llama_model_params", _fake_old_params())
    default = llama_cpp.llama_cpp.llama_model_default_params
    with pytest.raises(CurateError, match="use_extra_bufts.*upgrade"):
        with embedded.safe_model_params():
            pass
    assert llama_cpp.llama_cpp.llama_model_default_params is default


def test_extra_buffers_are_left_alone_off_x86(monkeypatch):
    """On ARM the extra buffer types are repacking and KleidiAI (faster, no AMX): not touched."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from curate.llm import embedded

    monkeypatch.setattr(embedded.platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(llama_cpp.llama_cpp, "llama_model_params", _fake_old_params())  # not even checked
    default = llama_cpp.llama_cpp.llama_model_default_params
    with embedded.safe_model_params():
        assert llama_cpp.llama_cpp.llama_model_default_params is default


def test_the_params_are_safe_only_while_loading():
    llama_cpp = pytest.importorskip("llama_cpp")
    from curate.llm.embedded import extra_buffer_types_allowed, safe_model_params

    if extra_buffer_types_allowed():
        pytest.skip("not an x86 machine")
    with safe_model_params():
        assert llama_cpp.llama_cpp.llama_model_default_params().use_extra_bufts is False
    assert llama_cpp.llama_cpp.llama_model_default_params().use_extra_bufts is True


@pytest.mark.slow
def test_every_model_the_project_loads_has_no_extra_buffers():
    pytest.importorskip("llama_cpp", reason="needs the embedded extra: pip install -e '.[embedded]'")
    from curate.llm import LLM, Request
    from curate.llm.embedded import EmbeddedBackend, load_llama, load_tokenizer
    from curate.llm.scorers import get_scorer
    from filters.diversity import load_embedding_model

    if not X86:
        pytest.skip("not an x86 machine")
    LLM(EmbeddedBackend(), show_progress=False).generate(
        [Request.chat([{"role": "user", "content": "Hi"}], max_tokens=2, temperature=0)]
    )
    models = {
        "teacher": load_llama(),
        "teacher with log-probs": load_llama(logits_all=True),
        "tokenizer": load_tokenizer(),
        "scorer": get_scorer("llama_cpp").llm,
        "embedder": load_embedding_model(max_tokens=64),
    }
    unsafe = {name: llm.model_params.use_extra_bufts for name, llm in models.items() if llm.model_params.use_extra_bufts}
    assert not unsafe, f"loaded with llama.cpp's extra buffer types (AMX crash): {unsafe}"


@pytest.mark.slow
def test_a_load_that_kept_the_extra_buffers_is_refused():
    llama_cpp = pytest.importorskip("llama_cpp", reason="needs the embedded extra: pip install -e '.[embedded]'")
    from curate.llm.embedded import check_model_params, embedded_model_path, extra_buffer_types_allowed

    if extra_buffer_types_allowed():
        pytest.skip("not an x86 machine")
    # Built directly, as llama-cpp-python does by default (use_extra_bufts=True): vocabulary only,
    # so nothing could crash even on an AMX CPU.
    unsafe = llama_cpp.Llama(model_path=str(embedded_model_path()), vocab_only=True, verbose=False)
    with pytest.raises(CurateError, match="use_extra_bufts=True"):
        check_model_params(unsafe)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_generation_in_a_subprocess_exits_cleanly():
    """Teacher, scorer and embedder in a fresh process; on an AMX CPU without the fix this process
    died with SIGSEGV (exit -11) on the first decode."""
    pytest.importorskip("llama_cpp", reason="needs the embedded extra: pip install -e '.[embedded]'")
    code = textwrap.dedent(
        """
        from curate.llm import LLM, Request
        from curate.llm.embedded import EmbeddedBackend
        from curate.llm.scorers import get_scorer
        from filters.diversity import llama_embeddings

        (r,), _ = LLM(EmbeddedBackend(), show_progress=False).generate(
            [Request.chat([{"role": "user", "content": "Name a colour."}], max_tokens=8, temperature=0)])
        assert r.ok and r.completion_tokens > 0, r.error
        lp = get_scorer("llama_cpp").score("The capital of France is", " Paris")
        assert len(lp) > 0 and lp.sum() < 0
        assert llama_embeddings(["a red apple", "a green pear"], max_tokens=16).shape == (2, 576)
        print("generated:", r.text)
        """
    )
    env = {**os.environ, "CURATE_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=240)
    assert proc.returncode == 0, f"exit status {proc.returncode}\n{proc.stderr[-2000:]}"
    assert "generated:" in proc.stdout


@pytest.mark.slow
def test_every_llama_cpp_decode_runs_on_one_thread(monkeypatch):
    """Teacher (through the async client), scorer routes and embedder, called from the main thread
    and from other threads: llama.cpp must decode on a single thread, or the OpenMP teams of two
    threads slow each other down (libgomp's throttled spin-wait)."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="needs the embedded extra: pip install -e '.[embedded]'")
    from curate.llm import LLM, Request
    from curate.llm.embedded import EmbeddedBackend
    from curate.llm.scorers import get_scorer
    from filters.diversity import llama_embeddings

    threads: list[int] = []
    # A spy around the C entry points every decode goes through (llama_cpp._internals uses the
    # module's function; curate.llm.scoring the package's re-export).
    for owner in (llama_cpp.llama_cpp, llama_cpp):
        for name in ("llama_decode", "llama_encode"):
            real = getattr(owner, name)

            def spy(*args, _real=real):
                threads.append(threading.get_native_id())
                return _real(*args)

            monkeypatch.setattr(owner, name, spy)

    backend = EmbeddedBackend()
    chat = Request.chat([{"role": "user", "content": "Name a fruit."}], max_tokens=4, temperature=0)
    LLM(backend, show_progress=False).generate([chat])  # asyncio, on the main thread
    scorer = get_scorer("llama_cpp")
    scorer.score("The capital of France is", " Paris")  # main thread, Llama.eval route
    llama_embeddings(["a red apple", "a green pear"], max_tokens=16)  # main thread, embedder
    other = threading.Thread(
        target=lambda: (
            backend.complete(Request.chat([{"role": "user", "content": "Name a tree."}], max_tokens=4, temperature=0)),
            scorer.score_ids_after_prefix(scorer.tokenize("Q: 2+2? A:"), [([], scorer.tokenize(" 4"))]),
            scorer.embed(["hello"]),
        )
    )
    other.start()
    other.join()
    assert threads, "the spy saw no decode"
    assert len(set(threads)) == 1, f"llama.cpp decoded on {len(set(threads))} threads: {sorted(set(threads))}"
    assert threads[0] != threading.get_native_id()


@pytest.mark.slow
def test_score_many_decodes_the_shared_prefix_once_and_reads_only_target_rows(monkeypatch):
    """Perplexity's pairs (chat template + prompt, response; then whole texts): the template's
    shared system turn is decoded once, and logits are asked for only at rows that predict a target
    token, with the same numbers as scoring each pair alone (issue 8: the scorer's overhead)."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="needs the embedded extra: pip install -e '.[embedded]'")
    import numpy as np

    from curate.llm.scorers import get_scorer

    scorer = get_scorer("llama_cpp")
    questions = ["What colour is the sky?", "Name a fruit.", "Why do cats purr?"]
    answers = [" Blue, because of Rayleigh scattering.", " An apple.", " Mostly when they are content."]
    pairs = [(scorer.chat_prompt([{"role": "user", "content": q}]), a) for q, a in zip(questions, answers)]
    pairs += [("", q + "\n" + a) for q, a in zip(questions, answers)]
    want = [scorer.score(c, t) for c, t in pairs]

    fed, asked = [], []
    for owner in (llama_cpp.llama_cpp, llama_cpp):
        real = owner.llama_decode

        def spy(ctx, batch, _real=real):
            fed.append(batch.n_tokens)
            asked.append(sum(bool(batch.logits[i]) for i in range(batch.n_tokens)))
            return _real(ctx, batch)

        monkeypatch.setattr(owner, "llama_decode", spy)
    got = scorer.score_many(pairs)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    full = sum(len(scorer.tokenize(c)) + len(scorer.tokenize(t)) for c, t in pairs)
    a, b = (scorer.tokenize(c) for c, _ in pairs[:2])
    prefix = a[: next(j for j in range(min(len(a), len(b))) if a[j] != b[j])]
    assert len(prefix) > 10  # SmolLM2's template opens every chat with the same system turn
    assert sum(asked) == sum(len(w) for w in want), "logits computed at rows that no target token reads"
    assert sum(fed) <= full - 2 * len(prefix), f"fed {sum(fed)} of {full} tokens: the shared turn was decoded per pair"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_loading_while_the_llama_thread_loads_too_does_not_deadlock():
    """A teacher request on the llama.cpp thread looks up its model (load_llama) while another
    thread loads a new one: with a lock held across the hand-over to the llama.cpp thread, each
    waited for the other forever."""
    pytest.importorskip("llama_cpp", reason="needs the embedded extra: pip install -e '.[embedded]'")
    import time
    from concurrent.futures import ThreadPoolExecutor

    from curate.llm.embedded import _llama_executor, load_llama

    load_llama(n_ctx=512)
    other_started = threading.Event()

    def on_llama_thread():  # like EmbeddedBackend._complete: looks its model up, on the llama thread
        other_started.wait(10)
        time.sleep(0.5)  # let the other thread get into load_llama first
        return load_llama(n_ctx=512)

    busy = _llama_executor().submit(on_llama_thread)
    with ThreadPoolExecutor(1) as pool:
        other = pool.submit(lambda: (other_started.set(), load_llama(n_ctx=1024))[1])
        assert busy.result(timeout=60) is not None
        assert other.result(timeout=60).n_ctx() == 1024


@pytest.mark.slow
def test_curate_threads_holds_for_prompts_too(monkeypatch):
    """CURATE_THREADS=1 must mean one thread for prompt evaluation and scoring as well: Llama()
    defaults n_threads_batch to one per core."""
    pytest.importorskip("llama_cpp", reason="needs the embedded extra: pip install -e '.[embedded]'")
    from curate.llm.embedded import load_llama
    from filters.diversity import load_embedding_model

    monkeypatch.setenv("CURATE_THREADS", "1")
    for llm in (load_llama(n_ctx=256), load_llama(n_ctx=256, logits_all=True), load_embedding_model(max_tokens=32)):
        assert (llm.context_params.n_threads, llm.context_params.n_threads_batch) == (1, 1)
