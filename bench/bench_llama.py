"""The embedded model inside curate against plain llama.cpp loops, same model, same process.

    python bench/bench_llama.py [--rounds 3 --rows 60 --threads N] [--only teacher|scorer|bufts] [--gguf FILE]
                                [--prompts 32 --max-tokens 160]   (fewer for a quick look on a busy machine)

Teacher: the quickstart recipe's `responses` step (32 seed instructions, temperature 0.7, at most
160 tokens, through `LLM.generate` with a fresh response cache, as `curate run` does) against a
plain loop of `Llama.create_chat_completion` over the same messages with the same seeds, on the
same loaded model. Same seeds give the same tokens, so the two do the same work. Printed: each
one's completion tokens/s and the ratio (goal >= 0.95). A third line runs the plain loop on a second
thread while curate's llama.cpp thread keeps its OpenMP team alive, the situation before issue 8's
fix (asyncio.to_thread threads besides the main thread), with the voluntary context switches per
token that show libgomp sleeping at barriers instead of spinning.

Scorer: `Perplexity().score` on the first --rows rows of ../shared/data/nuggets_alpaca_gpt4's
anchor file (CC BY-NC: read, never copied) against a plain `Llama(logits_all=True).eval` of each
row's text (every turn joined by newlines, as the filter's whole-text pass reads it). Rates count
the rows' text tokens. The filter evaluates more tokens than that (the response pass is chat
template + prompt + response, then the whole-text pass): the script prints tokens evaluated per
text token and the rate per evaluated token, which is the overhead part of the gap.

Buffer types (issue 8, part 1): the cost of loading with use_extra_bufts=False, as curate does on
x86 against AMX's crash: prompt evaluation (256 tokens) and greedy decoding (128 tokens) tokens/s of
the same GGUF (the embedded model, or --gguf FILE, e.g. a Q4_0 model that llama.cpp repacks on x86)
loaded both ways, alternating. The default load is skipped on a CPU with AMX, where it would crash.

Every llama.cpp call here runs on curate's llama.cpp thread (`run_on_llama_thread`), the baseline
too: two threads that decode leave two OpenMP teams, which slows both (the third teacher line).
Rounds alternate which side runs first. Record `uptime` with any figure.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import polars as pl  # noqa: E402

from bench.rounds import in_turns, load_avg
from curate.io import read_records  # noqa: E402
from curate.llm.embedded import load_llama, run_on_llama_thread  # noqa: E402
from curate.llm.teacher import TeacherConfig, build_llm  # noqa: E402
from curate.records import message_text  # noqa: E402
from curate.steps import Context  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SEEDS = ROOT / "recipes" / "data" / "quickstart_seeds.jsonl"
ANCHORS = ROOT.parent / "shared" / "data" / "nuggets_alpaca_gpt4" / "alpaca_gpt4_kmeans_100_anchor.json"
TEMPERATURE = 0.7  # recipes/quickstart.yaml (max_tokens 160: --max-tokens)


def voluntary_switches() -> int:
    """Voluntary context switches of this process, every thread including ended ones (a thread that
    sleeps on a futex at an OpenMP barrier adds one each time)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw


# Teacher ------------------------------------------------------------------------------------------
def plain_chat_loop(llm, prompts: list[list[dict]], seed: int, max_tokens: int) -> int:
    """The baseline: create_chat_completion per prompt, as a user of llama-cpp-python writes it."""
    tokens = 0
    for messages in prompts:
        out = llm.create_chat_completion(messages=messages, max_tokens=max_tokens, temperature=TEMPERATURE,
                                         top_p=1.0, seed=seed)
        tokens += out["usage"]["completion_tokens"]
    return tokens


def responses_step(df: pl.DataFrame, seed: int, cache_dir: Path, max_tokens: int) -> int:
    """The quickstart's responses step as `curate run` runs it (its own cache file: nothing cached)."""
    from synth.responses import Responses

    llm = build_llm(TeacherConfig(backend="embedded"), cache_dir / f"llm-{seed}.sqlite", show_progress=False)
    try:
        step = Responses(n=1, temperature=TEMPERATURE, max_tokens=max_tokens)
        result = step.run(df, Context(seed=seed, llm=llm, show_progress=False))
    finally:
        llm.close()
    return int(result.stats["llm"]["completion_tokens"])


def timed(fn, *args) -> tuple[int, float, float, float]:
    """(tokens, wall seconds, CPU seconds of the whole process, voluntary context switches per
    token). CPU time moves less than wall time with other jobs' load on a shared machine."""
    v0, t0, c0 = voluntary_switches(), time.perf_counter(), time.process_time()
    tokens = fn(*args)
    seconds, cpu, switches = time.perf_counter() - t0, time.process_time() - c0, voluntary_switches() - v0
    return tokens, seconds, cpu, switches / max(tokens, 1)


def timed_on_second_thread(fn, *args) -> tuple[int, float, float, float]:
    """`timed(fn, *args)` on a fresh thread: its own OpenMP team, beside the llama.cpp thread's
    (the thread and its team end after, freeing that team)."""
    box = {}
    th = threading.Thread(target=lambda: box.update(value=timed(fn, *args)))
    th.start()
    th.join()
    return box["value"]


def bench_teacher(rounds: int, n_prompts: int, max_tokens: int) -> None:
    df = read_records(SEEDS, source="quickstart-seeds").head(n_prompts)
    prompts = [[{"role": m["role"], "content": m["content"]} for m in msgs] for msgs in df["messages"].to_list()]
    llm = load_llama()  # the model the step's EmbeddedBackend uses (same key)
    run_on_llama_thread(plain_chat_loop, llm, prompts[:2], 999, 16)  # warm-up
    with tempfile.TemporaryDirectory() as tmp:  # round r samples with seed 100 + r
        sides = {
            "plain loop": lambda r: timed(run_on_llama_thread, plain_chat_loop, llm, prompts, 100 + r, max_tokens),
            "responses step": lambda r: timed(responses_step, df, 100 + r, Path(tmp), max_tokens),
        }
        # last in every round: the plain loop beside the llama.cpp thread's OpenMP team (module docstring)
        second_thread = {"plain loop, 2nd thread":
                         lambda r: timed_on_second_thread(plain_chat_loop, llm, prompts, 100 + r, max_tokens)}
        rows = in_turns(rounds, sides, lambda name, v: f"{name} {v[0] / v[1]:.1f} tok/s", then=second_thread)
    base = rates(rows["plain loop"])
    print(f"\nTeacher: {len(prompts)} quickstart prompts x {rounds} rounds, max_tokens {max_tokens}, "
          f"{llm.context_params.n_threads} llama.cpp threads")
    print(f"{'':24s} {'tokens':>7s} {'wall s':>7s} {'tok/s':>7s} {'vs plain':>8s} {'CPU s':>7s} {'vs plain (CPU)':>14s} {'vol. switches/token':>20s}")
    for name, vals in rows.items():
        tok, wall, cpu, sw = rates(vals)
        print(f"{name:24s} {tok:7d} {wall:7.1f} {tok / wall:7.1f} {(tok / wall) / (base[0] / base[1]):8.3f} "
              f"{cpu:7.1f} {(tok / cpu) / (base[0] / base[2]):14.3f} {sw:20.1f}")


def rates(vals: list[tuple[int, float, float, float]]) -> tuple[int, float, float, float]:
    """Sums of tokens, wall and CPU seconds over rounds, and the token-weighted switches/token."""
    tok = sum(v[0] for v in vals)
    return tok, sum(v[1] for v in vals), sum(v[2] for v in vals), sum(v[3] * v[0] for v in vals) / max(tok, 1)


# Scorer -------------------------------------------------------------------------------------------
def plain_eval_loop(llm, ids: list[list[int]]) -> int:
    for x in ids:
        llm.reset()
        llm.eval(x)
    return sum(len(x) for x in ids)


def bench_scorer(rounds: int, n_rows: int) -> None:
    from filters import Perplexity
    from curate.llm.scorers import get_scorer

    df = read_records(ANCHORS, source="nuggets-anchors").head(n_rows)
    flt = Perplexity()
    scorer = get_scorer("llama_cpp")
    llm = scorer.llm  # Llama(logits_all=True), the scorer's own model
    texts = message_text(df, "text").to_list()
    ids = [scorer.tokenize(t)[: flt.max_length] for t in texts]
    text_tokens = sum(len(x) for x in ids)
    # What the filter evaluates: chat template + prompt + response, then the whole text.
    prompts = message_text(df, "prompt").to_list()
    responses = message_text(df, "response").to_list()
    ctx_tokens = [len(scorer.tokenize(scorer.chat_prompt([{"role": "user", "content": p}]))) for p in prompts]
    resp_tokens = [len(scorer.tokenize(r)) for r in responses]
    evaluated = sum(min(c + r, flt.max_length) for c, r in zip(ctx_tokens, resp_tokens)) + text_tokens
    run_on_llama_thread(plain_eval_loop, llm, ids[:2])  # warm-up
    results = in_turns(rounds, {
        "plain eval": lambda r: timed(run_on_llama_thread, plain_eval_loop, llm, ids),
        "Perplexity().score": lambda r: timed(lambda: (flt.score(df), text_tokens)[1]),
    }, lambda name, v: f"{name} {v[0] / v[1]:.0f} text tok/s")
    _, p_wall, p_cpu, _ = rates(results["plain eval"])
    _, o_wall, o_cpu, _ = rates(results["Perplexity().score"])
    n = text_tokens * rounds
    template = sum(ctx_tokens) - sum(len(scorer.tokenize(p)) for p in prompts)
    print(f"\nScorer: {len(df)} rows, {text_tokens} text tokens, {rounds} rounds; the filter evaluates {evaluated} "
          f"tokens per round ({evaluated / text_tokens:.2f} per text token: response pass with {template} "
          f"chat-template tokens, then a second pass over the whole text)")
    print(f"{'':34s} {'text tok/s':>10s} {'vs plain':>8s} {'text tok/CPU s':>14s} {'vs plain (CPU)':>14s}")
    print(f"{'plain Llama(logits_all=True).eval':34s} {n / p_wall:10.1f} {1:8.3f} {n / p_cpu:14.1f} {1:14.3f}")
    print(f"{'Perplexity().score':34s} {n / o_wall:10.1f} {p_wall / o_wall:8.3f} {n / o_cpu:14.1f} {p_cpu / o_cpu:14.3f}")
    print(f"per evaluated token (overhead beyond the extra tokens; >= 1: none): wall {p_wall / o_wall * evaluated / text_tokens:.3f}, "
          f"CPU {p_cpu / o_cpu * evaluated / text_tokens:.3f}")


# Buffer types ---------------------------------------------------------------------------------------
def cpu_has_amx() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return any(flag in f.read().split() for flag in ("amx_int8", "amx_tile", "amx_bf16"))
    except OSError:
        return False


def prompt_and_decode(llm, prompt_ids: list[int], n_decode: int) -> tuple[float, float]:
    """(prompt tokens/s, decode tokens/s): eval of the prompt, then greedy decoding one by one."""
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(prompt_ids)
    t1 = time.perf_counter()
    for _ in range(n_decode):
        llm.eval([llm.sample(temp=0.0)])
    t2 = time.perf_counter()
    return len(prompt_ids) / (t1 - t0), n_decode / (t2 - t1)


def bench_buffer_types(rounds: int, gguf: str | None) -> None:
    import llama_cpp

    from curate.llm.embedded import default_threads, embedded_model_path, new_llama

    path = str(gguf or embedded_model_path())
    threads = default_threads()
    kw = dict(n_ctx=1024, n_batch=512, n_threads=threads, n_threads_batch=threads, verbose=False)
    models = {"use_extra_bufts=False (curate)": new_llama(path, **kw)}
    if cpu_has_amx():
        print("Buffer types: this CPU has AMX; the default load would crash, so it is not measured.")
    else:  # the default load, which the project never does: this bench measures what avoiding it costs
        models["use_extra_bufts=True (default)"] = run_on_llama_thread(lambda: llama_cpp.Llama(model_path=path, **kw))
    first = next(iter(models.values()))
    text = "The history of the printing press begins in the fifteenth century, when " * 20
    prompt = first.tokenize(text.encode(), add_bos=False)[:256]
    results = in_turns(rounds, {
        name: lambda r, model=model: run_on_llama_thread(prompt_and_decode, model, prompt, 128)
        for name, model in models.items()
    }, lambda name, v: f"{name}: prompt {v[0]:.0f}, decode {v[1]:.1f} tok/s")
    print(f"\nBuffer types: {Path(path).name}, {kw['n_threads']} threads, medians of {rounds} rounds")
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    base = None
    for name, vals in results.items():
        pp, tg = med([a for a, _ in vals]), med([b for _, b in vals])
        base = base or (pp, tg)
        print(f"{name:32s} prompt {pp:7.1f} tok/s ({pp / base[0]:.3f})   decode {tg:6.1f} tok/s ({tg / base[1]:.3f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rows", type=int, default=60, help="scorer rows")
    ap.add_argument("--prompts", type=int, default=32, help="teacher prompts (the quickstart has 32)")
    ap.add_argument("--max-tokens", type=int, default=160, help="teacher max_tokens (the quickstart's: 160)")
    ap.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: CURATE_THREADS or one per core)")
    ap.add_argument("--only", choices=["teacher", "scorer", "bufts"], default=None)
    ap.add_argument("--gguf", default=None, help="model for the buffer-type part (default: the embedded one)")
    args = ap.parse_args()
    if args.threads:
        os.environ["CURATE_THREADS"] = str(args.threads)
    print(f"start: {load_avg()}", flush=True)
    if args.only in (None, "teacher"):
        bench_teacher(args.rounds, args.prompts, args.max_tokens)
    if args.only in (None, "scorer"):
        bench_scorer(args.rounds, args.rows)
    if args.only in (None, "bufts"):
        bench_buffer_types(args.rounds, args.gguf)
    print(f"end: {load_avg()}")


if __name__ == "__main__":
    main()
