"""`curate publish`: the Hub is unreachable here, so this is the one place a stand-in is used: a
recorder in place of huggingface_hub.HfApi that checks which files and settings the upload gets.
The folder itself is loaded with datasets.load_dataset to check it is what would be served."""

import json
from pathlib import Path

import datasets
import pytest
import yaml

from curate.engine import run_recipe
from curate.errors import CurateError
from curate.hub import publish
from curate.recipe import load_recipe


class RecordingHfApi:
    """Stand-in for huggingface_hub.HfApi (no network here): records the calls and the files that
    upload_folder's allow_patterns would select."""

    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kw):
        self.calls.append(("create_repo", repo_id, kw))
        return f"https://huggingface.co/datasets/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, allow_patterns, **kw):
        from fnmatch import fnmatch

        root = Path(folder_path)
        files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()
                       and any(fnmatch(str(p.relative_to(root)), pat) for pat in allow_patterns))
        self.calls.append(("upload_folder", repo_id, {"files": files, **kw}))


@pytest.fixture
def run_dir(tmp_path):
    rows = [{"prompt": f"Question {i}?", "completion": f"An answer for {i}."} for i in range(10)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "r.yaml").write_text("name: hub\nlicense: cc-by-4.0\ninputs: [{path: d.jsonl}]\nsteps: [{exact_dedup: {}}]\n"
                                     "output: {validation: 2}\n")
    run_recipe(load_recipe(tmp_path / "r.yaml"), tmp_path / "out", show_progress=False)
    return tmp_path / "out"


def test_publish_sends_data_card_recipe_and_reports(run_dir):
    api = RecordingHfApi()
    url = publish(run_dir, "me/my-sft", private=True, api=api)
    assert url == "https://huggingface.co/datasets/me/my-sft"
    (c1, repo1, kw1), (c2, repo2, kw2) = api.calls
    assert (c1, repo1, kw1["repo_type"], kw1["private"], kw1["exist_ok"]) == ("create_repo", "me/my-sft", "dataset", True, True)
    assert (c2, repo2, kw2["repo_type"]) == ("upload_folder", "me/my-sft", "dataset")
    assert kw2["files"] == ["README.md", "data/train.jsonl", "data/train.parquet", "data/validation.jsonl",
                            "data/validation.parquet", "gx/expectation_suite.json", "gx/expectation_suite_results.json",
                            "recipe.yaml", "rejects.parquet", "report.html", "report.json", "report.md"]
    card = (run_dir / "README.md").read_text()
    assert "license: cc-by-4.0" in card and "size_categories" in card and "train: 8, validation: 2" in card
    assert "| d.jsonl | - | not stated |" in card  # every input with its license (none given here)
    assert "Teacher: none (no step calls a model)" in card
    meta = yaml.safe_load(card.split("---")[1])  # the YAML header the Hub reads
    assert [(s["name"], s["num_examples"]) for s in meta["dataset_info"]["splits"]] == [("train", 8), ("validation", 2)]


def test_the_published_folder_loads_to_the_same_rows(run_dir):
    ds = datasets.load_dataset(str(run_dir))
    assert (len(ds["train"]), len(ds["validation"])) == (8, 2)
    local = datasets.load_dataset("parquet", data_files=str(run_dir / "data" / "train.parquet"), split="train")
    assert sorted(ds["train"]["id"]) == sorted(local["id"])


def test_publish_refuses_an_unfinished_folder(tmp_path):
    with pytest.raises(CurateError, match="not a finished run folder"):
        publish(tmp_path, "me/x", api=RecordingHfApi())
    with pytest.raises(CurateError, match="owner/name"):
        (tmp_path / "README.md").write_text("x"), (tmp_path / "data").mkdir()
        publish(tmp_path, "noslash", api=RecordingHfApi())
