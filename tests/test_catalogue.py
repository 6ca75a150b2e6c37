"""The recipe catalogue: every recipes/*.yaml validates and is run end to end by some test, and a
rerun into a fresh folder with the same cache writes byte-identical data.

The recipes with their own test file (quickstart, math-cot, self-instruct, evol-instruct, magpie,
backtranslation) are run there; this file runs the rest through the real CLI, in a fast variant
(`-o` overrides) so the whole suite stays affordable on 2 cores. It also runs every recipe on data
it was not written for (FOREIGN: public sets in ../shared/data), where the report, the card and
validation meet what the planted data never has: score columns with no value at all, one value
everywhere, a single row.
"""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import datasets
import polars as pl
import pytest

from curate.engine import run_recipe
from curate.report.write import rebuild_report
from curate.recipe import load_recipe
from curate.report.card import md_literal
from tests.conftest import SHARED_DATA

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(p.stem for p in (ROOT / "recipes").glob("*.yaml"))
MODEL = pytest.mark.slow  # needs the embedded model

# Recipes run here, with the overrides that make them fast. curate-existing calls no model.
CATALOGUE = {
    "curate-existing": pytest.param("curate-existing", []),
    "nuggets-select": pytest.param("nuggets-select", ["inputs.0.limit=8", "steps.nuggets.num_anchors=2"], marks=MODEL),
    "mixture": pytest.param("mixture", ["inputs.0.limit=4"], marks=MODEL),  # answers of up to 256 tokens: fewer are cut
}


def data(*parts: str) -> str:
    return str(SHARED_DATA.joinpath(*parts))


ALPACA_GPT4 = data("nuggets_alpaca_gpt4", "alpaca_gpt4_bad_scored.jsonl")  # CC BY-NC 4.0 (tests only)
CHERRY = data("quality_cherry_alpaca_ifd", "cherry_alpaca_5_percent.jsonl")  # CC BY-NC 4.0 (tests only)
SEED_TASKS = data("seed_tasks", "selfinstruct_seed_tasks_175.jsonl")  # Apache-2.0
GSM8K = data("gsm8k_train", "train.jsonl")  # MIT
EVALS = data("eval_prompts")


def foreign(name: str, case: str, overrides: list[str], slow: bool = True):
    return pytest.param(name, overrides, id=f"{name}-{case}", marks=[MODEL] if slow else [])


# Each recipe on public data it was not written for; generator recipes with small limits (each
# runs the embedded model). curate-existing is the "filter my own data" path: with no row
# overlapping the eval set its coverage column has no value, and its card crashed on that.
FOREIGN = [
    foreign("curate-existing", "alpaca-gpt4", [f"inputs.0.path={ALPACA_GPT4}", "inputs.0.limit=200",
                                              "inputs.0.source=alpaca-gpt4", "inputs.0.license=cc-by-nc-4.0"], slow=False),
    foreign("curate-existing", "cherry-real-evals", [
        f"inputs.0.path={CHERRY}", "inputs.0.limit=200", "inputs.0.source=cherry-alpaca", "inputs.0.license=cc-by-nc-4.0",
        f"steps.decontaminate.eval_sets=[{EVALS}/alpaca_eval_805.jsonl, {EVALS}/vicuna_bench_question_80.jsonl]"], slow=False),
    foreign("curate-existing", "one-row", [f"inputs.0.path={CHERRY}", "inputs.0.limit=1"], slow=False),
    foreign("quickstart", "seed-tasks", [f"inputs.0.path={SEED_TASKS}", "inputs.0.limit=3",
                                         "steps.responses.max_tokens=256"]),
    foreign("evol-instruct", "alpaca-gpt4", [f"inputs.0.path={ALPACA_GPT4}", "inputs.0.limit=2",
                                             "steps.evol_instruct.rounds=1"]),
    foreign("self-instruct-general", "alpaca-gpt4", [
        f"inputs.0.path={ALPACA_GPT4}", "inputs.0.limit=12", "steps.self_instruct.target=2",
        "steps.self_instruct.max_rounds=1", "steps.self_instruct.requests_per_round=1", "steps.self_instruct.num_human=4",
        "steps.self_instruct.max_tokens=128", "steps.self_instruct.instance_max_tokens=96"]),
    foreign("math-cot", "gsm8k", [f"inputs.0.path={GSM8K}", "inputs.0.limit=2", "steps.verified_cot.k=1",
                                  "steps.verified_cot.max_samples=1", "steps.verified_cot.rationalize=false"]),
    foreign("backtranslation", "cherry-answers", [f"inputs.0.path={CHERRY}", "inputs.0.prompt=output", "inputs.0.limit=2"]),
    foreign("magpie", "with-inputs", [f"inputs=[{{path: {ALPACA_GPT4}, source: alpaca-gpt4, limit: 3}}]", "steps.magpie.n=2",
                                      "steps.magpie.system_prompt=You are a patient maths tutor."]),
    foreign("nuggets-select", "alpaca-gpt4", [f"inputs.0.path={ALPACA_GPT4}", "inputs.0.limit=8",
                                              "steps.nuggets.num_anchors=2"]),
    foreign("structured", "seed-tasks", [f"inputs.0.path={SEED_TASKS}", "inputs.0.limit=3"]),
    foreign("mixture", "public-sets", [f"inputs.0.path={SEED_TASKS}", "inputs.0.limit=2", "steps.responses.max_tokens=128",
                                       f"inputs.1.path={ALPACA_GPT4}", "inputs.1.limit=40",
                                       f"inputs.2.path={CHERRY}", "inputs.2.limit=30"]),
]

# Keys of report.json that hold wall-clock time, removed at every depth before comparing two runs:
# "finished" (the end time), "seconds" (the run's, each step's and each step's LLM usage).
TIMING = {"finished", "seconds"}
# LLM usage counters that say where answers came from: the first run may send requests and fill the
# shared cache, a later one reads them from it. The answers, token counts and cost do not change.
CACHE_COUNTERS = {"sent", "cache_hits"}


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_validates(name):
    recipe = load_recipe(ROOT / "recipes" / f"{name}.yaml")
    assert recipe.steps and recipe.config.name == name
    for inp in recipe.config.inputs:  # inputs are read from the recipe's folder
        assert recipe.resolve(inp.path).exists(), inp.path


def test_every_recipe_is_run_on_foreign_data():
    assert {p.values[0] for p in FOREIGN} == set(RECIPES)


def test_every_recipe_is_run_by_a_test():
    """A recipe nobody runs rots: each must be in CATALOGUE or run by name in another test file."""
    others = "".join(p.read_text(encoding="utf-8") for p in (ROOT / "tests").glob("test_*.py") if p.name != Path(__file__).name)
    named = r"recipes[/\"', ]+{}\.yaml|run_catalogue_on_embedded\(\s*\"{}\""
    unrun = [n for n in RECIPES if n not in CATALOGUE and not re.search(named.format(re.escape(n), re.escape(n)), others)]
    assert not unrun, f"recipes run by no test: {unrun}; add them to CATALOGUE in {Path(__file__).name}"
    assert set(CATALOGUE) <= set(RECIPES)


def curate(*args):
    return subprocess.run([sys.executable, "-m", "curate.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=1700)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """run(name, overrides, folder): run a recipe through the CLI once per folder name, with one LLM
    cache per recipe shared by its runs (so a second folder reuses the first one's answers)."""
    root = tmp_path_factory.mktemp("catalogue")
    done = {}

    def run(name: str, overrides: list[str], folder: str = "first") -> Path:
        out = root / name / folder
        if out not in done:
            cache = root / name / "llm.sqlite"
            args = [a for o in [*overrides, f"cache={cache}"] for a in ("-o", o)]
            proc = curate("run", f"recipes/{name}.yaml", "--out", str(out), "--quiet", *args)
            assert proc.returncode == 0, proc.stderr
            done[out] = proc
        return out

    return run


@pytest.mark.timeout(1800)  # a couple of minutes idle; far longer on a loaded shared machine
@pytest.mark.parametrize("name, overrides", list(CATALOGUE.values()))
def test_recipe_runs_and_loads(runs, name, overrides, tmp_path):
    if name != "curate-existing":
        pytest.importorskip("llama_cpp", reason="needs the embedded extra: pip install -e '.[embedded]'")
    out = runs(name, overrides)
    report = json.loads((out / "report.json").read_text())
    assert (out / "report.html").is_file() and (out / "report.md").is_file() and (out / "README.md").is_file()
    # the funnel: inputs, then every step of the recipe, each starting with what the previous kept
    recipe = load_recipe(ROOT / "recipes" / f"{name}.yaml", overrides)
    funnel = report["steps"]
    assert [s["kind"] for s in funnel] == ["inputs"] + [s.kind for s in recipe.steps]
    assert all(b["rows_in"] == a["rows_out"] for a, b in zip(funnel, funnel[1:]))
    assert report["rows"]["out"] == funnel[-1]["rows_out"] > 0
    assert report["rows"]["out"] + report["rows"]["rejected"] >= funnel[0]["rows_out"]
    # datasets reads the folder with the recipe's splits
    ds = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "hf"))
    splits = {"train", "validation"} if recipe.config.output.validation else {"train"}
    assert set(ds) == splits == set(report["rows"]["splits"])
    assert {k: len(v) for k, v in ds.items()} == report["rows"]["splits"]
    assert sum(len(v) for v in ds.values()) == report["rows"]["out"]
    for row in ds["train"]:
        assert row["messages"][-1]["role"] == "assistant" and row["messages"][-1]["content"].strip()
    CHECKS[name](out, report)


def check_curate_existing(out, report):
    dropped = {s["kind"]: s["dropped"] for s in report["steps"][1:]}
    assert dropped == {  # the problems planted in recipes/data/existing_pairs.jsonl, each caught once
        "exact_dedup": {"exact duplicate": 5},
        "heuristics": {"empty response": 2, "response too short": 2, "refusal or AI boilerplate": 1},
        "minhash_dedup": {"near duplicate": 5},
        "decontaminate": {"overlaps eval set": 4},
    }
    assert report["rows"] == {"in": 79, "out": 60, "rejected": 19, "splits": {"train": 54, "validation": 6}}
    assert report["llm"]["requests"] == 0


def check_nuggets_select(out, report):
    nuggets = report["steps"][-1]
    assert nuggets["rows_out"] == math.ceil(0.5 * nuggets["rows_in"])
    records = pl.read_parquet(out / "records.parquet")
    scores = records["score_nuggets"]
    assert scores.null_count() == 0 and ((scores >= 0) & (scores <= 1)).all()
    assert (records["score_nuggets_anchors"] == 2).all()
    rejected = pl.read_parquet(out / "rejects.parquet").filter(pl.col("step").str.ends_with("nuggets"))
    assert rejected.height == nuggets["rows_in"] - nuggets["rows_out"]
    assert rejected["score_nuggets"].max() <= scores.min()  # the top half by golden score was kept


def check_mixture(out, report):
    steps = {s["kind"]: s for s in report["steps"]}
    assert steps["responses"]["llm"]["requests"] == 4  # only the 4 seeds were sent to the teacher
    records = pl.read_parquet(out / "records.parquet")
    teacher = records.select("source", pl.col("meta").struct.field("teacher").is_not_null().alias("answered"))
    assert teacher.group_by("source").agg(pl.col("answered").all().alias("all"), pl.col("answered").any().alias("any")).sort("source").rows() == [
        ("existing-pairs", False, False), ("howto-chats", False, False), ("seeds-answered", True, True)]
    rejects = pl.read_parquet(out / "rejects.parquet")
    # cross-source dedup (the how-to set asks a seed's and an existing pair's question again, and rewords
    # another pair's) and decontamination
    for reason in ("exact duplicate", "near duplicate"):
        assert "howto-chats" in rejects.filter(pl.col("reason") == reason)["source"].to_list(), reason
    assert rejects.filter(pl.col("reason") == "overlaps eval set").height >= 1
    mix = report["mix"]["sources"]
    assert set(mix) == {"seeds-answered", "existing-pairs", "howto-chats"}
    for source, share in (("seeds-answered", 0.2), ("existing-pairs", 0.5), ("howto-chats", 0.3)):
        assert mix[source]["requested_share"] == pytest.approx(share)
    assert set(report["sources"]) == set(mix)
    val = pl.read_parquet(out / "data" / "validation.parquet")
    assert set(val["source"]) == set(mix)  # stratified by source


CHECKS = {"curate-existing": check_curate_existing, "nuggets-select": check_nuggets_select, "mixture": check_mixture}


def strip(obj, keys):
    if isinstance(obj, dict):
        return {k: strip(v, keys) for k, v in obj.items() if k not in keys}
    if isinstance(obj, list):
        return [strip(v, keys) for v in obj]
    return obj


def assert_same_outputs(a: Path, b: Path):
    files = sorted(p.relative_to(a) for p in (a / "data").iterdir()) + [Path(n) for n in ("records.parquet", "rejects.parquet", "README.md")]
    assert sorted(p.relative_to(b) for p in (b / "data").iterdir()) == files[:-3]
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), f"{rel} differs between two runs"
    ra, rb = (json.loads((d / "report.json").read_text()) for d in (a, b))
    assert strip(ra, TIMING | CACHE_COUNTERS) == strip(rb, TIMING | CACHE_COUNTERS)


def test_rerun_into_a_fresh_folder_is_byte_identical(runs):
    name, overrides = CATALOGUE["curate-existing"].values
    assert_same_outputs(runs(name, overrides), runs(name, overrides, "second"))


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_rerun_with_a_shared_cache_is_byte_identical(runs):
    """The mixture: teacher answers (from the shared cache), cross-source dedup, mix sampling,
    shuffle and split all repeat exactly."""
    pytest.importorskip("llama_cpp", reason="needs the embedded extra: pip install -e '.[embedded]'")
    name, overrides = CATALOGUE["mixture"].values
    first = runs(name, overrides)
    second = runs(name, overrides, "second")
    assert_same_outputs(first, second)
    report = json.loads((second / "report.json").read_text())
    assert report["llm"]["sent"] == 0 and report["llm"]["cache_hits"] == 4  # the second run sent nothing


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("name, overrides", FOREIGN)
def test_recipe_on_foreign_data(name, overrides, request, tmp_path):
    """A recipe pointed at another input (in this process: the CLI costs seconds of imports per
    call): the run, the report rebuilt as `curate report` does and the card go through, and the
    final data meets every expectation (or, with no row left, fails only "at least 1 row")."""
    if not SHARED_DATA.exists():
        pytest.skip(f"shared data not found: {SHARED_DATA}")
    if request.node.get_closest_marker("slow"):
        pytest.importorskip("llama_cpp", reason="needs the embedded extra: pip install -e '.[embedded]'")
    recipe = load_recipe(ROOT / "recipes" / f"{name}.yaml", overrides)
    out = tmp_path / "out"
    report = run_recipe(recipe, out, show_progress=False)
    funnel = report["steps"]
    assert all(b["rows_in"] == a["rows_out"] for a, b in zip(funnel, funnel[1:]))
    assert report["rows"]["out"] == funnel[-1]["rows_out"] == sum(report["rows"]["splits"].values())

    failed = [c["expectation"] for c in report["validation"]["results"] if not c["success"]]
    assert failed == ([] if report["rows"]["out"] else ["at least 1 row"]), report["validation"]
    records = pl.read_parquet(out / "records.parquet")
    assert (records["meta"].struct.field("finish_reason") != "length").all()  # no cut answer kept

    # the card lists every score column of the report, those with no value too, and the inputs
    card = (out / "README.md").read_text()
    for step, sec in report["filters"].items():
        for col, sc in sec["scores"].items():
            assert f"| {step} | {col} | " in card and (sc["summary"] or "| 0 | - | - | - |" in card), col
    for inp in recipe.config.inputs:
        assert f"| {md_literal(inp.path)} | " in card  # escaped: a path may hold Markdown characters

    # `curate report` rebuilds the same report and card from the folder
    again = rebuild_report(out)
    assert strip(again, TIMING) == strip(json.loads(json.dumps(report)), TIMING)
    assert (out / "README.md").read_text() == card
    print(f"\n{request.node.callspec.id}: {[(s['step'], s['rows_in'], s['rows_out'], s['dropped']) for s in funnel]}")
