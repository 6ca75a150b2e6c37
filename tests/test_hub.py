"""`curate publish` against tests/servers/hub_server.py, a stand-in for the Hugging Face Hub on
127.0.0.1 (HF_ENDPOINT): huggingface_hub creates the repo and uploads over HTTP (LFS for the
parquet files), and what went up is loaded back from the stand-in with datasets.load_dataset."""

import importlib.util
import json
import subprocess
import sys

import datasets
import pytest
import yaml
from huggingface_hub import HfApi

from curate.engine import run_recipe
from curate.errors import CurateError
from curate.hub import publish
from curate.recipe import load_recipe
from tests.conftest import ROOT, shared
from tests.servers.hub_server import hub_env, hub_server


@pytest.fixture
def run_dir(tmp_path):
    rows = [{"prompt": f"Question {i}?", "completion": f"An answer for {i}."} for i in range(10)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "r.yaml").write_text("name: hub\nlicense: cc-by-4.0\ninputs: [{path: d.jsonl}]\nsteps: [{exact_dedup: {}}]\n"
                                     "output: {validation: 2}\n")
    run_recipe(load_recipe(tmp_path / "r.yaml"), tmp_path / "out", show_progress=False)
    return tmp_path / "out"


# gx/: the validation suite and its results, written when the `gx` extra is installed
GX_FILES = ["gx/expectation_suite.json", "gx/expectation_suite_results.json"]
UPLOADED = sorted(["README.md", "data/train.jsonl", "data/train.parquet", "data/validation.jsonl",
                   "data/validation.parquet", "recipe.yaml", "rejects.parquet", "report.html", "report.json",
                   "report.md", *(GX_FILES if importlib.util.find_spec("great_expectations") else [])])


def test_publish_sends_data_card_recipe_and_reports(hub, run_dir):
    url = publish(run_dir, "me/my-sft", private=True)
    assert url == f"{hub.url}/datasets/me/my-sft"
    assert hub.store.refs("me/my-sft")["private"] is True
    info = HfApi().dataset_info("me/my-sft")
    assert sorted(s.rfilename for s in info.siblings) == [".gitattributes", *UPLOADED]  # no steps/, cache/, records
    assert hub.calls("PUT", "^/lfs/") == 3  # the parquet files went up through LFS, the rest inline
    card = (run_dir / "README.md").read_text()
    assert "license: cc-by-4.0" in card and "size_categories" in card and "train: 8, validation: 2" in card
    assert "| d.jsonl | - | not stated |" in card  # every input with its license (none given here)
    assert "Teacher: none (no step calls a model)" in card
    meta = yaml.safe_load(card.split("---")[1])  # the YAML header the Hub reads
    assert [(s["name"], s["num_examples"]) for s in meta["dataset_info"]["splits"]] == [("train", 8), ("validation", 2)]
    assert info.card_data["license"] == "cc-by-4.0"  # the stand-in read the uploaded card's header
    # what went up loads back from the Hub, with its splits
    loaded = datasets.load_dataset("me/my-sft")
    local = datasets.load_dataset(str(run_dir))
    assert (len(loaded["train"]), len(loaded["validation"])) == (8, 2)
    assert sorted(loaded["train"]["id"]) == sorted(local["train"]["id"])
    # a second publish into the same repo is a new commit, and exist_ok keeps the repo
    assert publish(run_dir, "me/my-sft") == url and len(hub.store.refs("me/my-sft")["history"]) == 3


def test_the_published_folder_loads_to_the_same_rows(run_dir):
    ds = datasets.load_dataset(str(run_dir))
    assert (len(ds["train"]), len(ds["validation"])) == (8, 2)
    local = datasets.load_dataset("parquet", data_files=str(run_dir / "data" / "train.parquet"), split="train")
    assert sorted(ds["train"]["id"]) == sorted(local["id"])


def test_publish_refuses_an_unfinished_folder(hub, tmp_path):
    with pytest.raises(CurateError, match="not a finished run folder"):
        publish(tmp_path, "me/x")
    with pytest.raises(CurateError, match="owner/name"):
        (tmp_path / "README.md").write_text("x"), (tmp_path / "data").mkdir()
        publish(tmp_path, "noslash")
    assert not hub.requests  # refused before any request


@pytest.mark.slow  # three runs of the CLI (~25 s each on a busy 2-core machine)
def test_published_data_comes_back_as_a_hub_input_through_the_cli(tmp_path):
    """As a user runs it, with HF_ENDPOINT set: a real set from the shared data through a catalogue
    recipe, published with `curate publish`, then read back as a Hub input by the same recipe."""
    cherry = shared("quality_cherry_alpaca_ifd", "cherry_alpaca_5_percent.jsonl")
    with hub_server(tmp_path / "hub") as server:
        env = hub_env(server.url, tmp_path / "hf-home")

        def curate(*args: str) -> subprocess.CompletedProcess:
            proc = subprocess.run([sys.executable, "-m", "curate.cli", *args], cwd=ROOT, env=env, capture_output=True,
                                  text=True, timeout=600)
            assert proc.returncode == 0, proc.stderr
            return proc

        curate("run", "recipes/curate-existing.yaml", "--out", str(tmp_path / "first"), "--quiet",
               "-o", f"inputs.0.path={cherry}", "-o", "inputs.0.limit=300")
        curate("publish", str(tmp_path / "first"), "--repo", "me/cherry-curated")
        curate("run", "recipes/curate-existing.yaml", "--out", str(tmp_path / "again"), "--quiet",
               "-o", "inputs.0.path=me/cherry-curated", "-o", "output.validation=0")
        first, again = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("first", "again"))
        assert again["rows"]["in"] == first["rows"]["splits"]["train"] < first["rows"]["out"]  # the train split went up
        assert again["source_datasets"] == ["me/cherry-curated"]
        assert "source_datasets:\n- me/cherry-curated" in (tmp_path / "again" / "README.md").read_text()
        assert not server.unknown, server.unknown
