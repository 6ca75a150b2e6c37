"""Hub datasets as recipe inputs (curate/hub_inputs.py), read with `datasets` over real HTTP from
tests/servers/hub_server.py, the stand-in for the Hub on 127.0.0.1 (HF_ENDPOINT), with the HF
caches in tmp_path."""

import json

import polars as pl
import pytest

from curate.engine import run_recipe
from curate.errors import CurateError
from curate.recipe import load_recipe

ALPACA = [{"instruction": f"Name a fruit number {i}.", "input": "" if i % 3 else f"context {i}",
           "output": f"Fruit {i} is an apple.", "category": ["open_qa", "brainstorm"][i % 2], "difficulty": i % 3}
          for i in range(24)]


def put_alpaca(hub, tmp_path, rows=ALPACA, repo="tatsu-lab/alpaca", name="train-00000-of-00001.parquet") -> str:
    local = tmp_path / name
    pl.DataFrame(rows).write_parquet(local)
    return hub.add_dataset(repo, {f"data/{name}": local, "README.md": "---\nlicense: cc-by-nc-4.0\n---\n# alpaca\n"})


def write_recipe(tmp_path, inputs: str, extra: str = "") -> str:
    path = tmp_path / "r.yaml"
    path.write_text(f"name: hubin\ninputs: {inputs}\nsteps: [{{exact_dedup: {{}}}}]\n{extra}")
    return path


def test_a_hub_dataset_is_read_like_a_local_file(hub, tmp_path):
    put_alpaca(hub, tmp_path)
    pl.DataFrame(ALPACA).write_ndjson(tmp_path / "alpaca.jsonl")
    report = run_recipe(load_recipe(write_recipe(tmp_path, "[{path: tatsu-lab/alpaca}]")), tmp_path / "out", show_progress=False)
    local = run_recipe(load_recipe(write_recipe(tmp_path, "[{path: alpaca.jsonl}]")), tmp_path / "out2", show_progress=False)
    hub_rows = pl.read_parquet(tmp_path / "out" / "records.parquet")
    file_rows = pl.read_parquet(tmp_path / "out2" / "records.parquet")
    assert report["rows"]["out"] == local["rows"]["out"] == 24
    assert hub_rows.drop("source").equals(file_rows.drop("source"))
    assert set(hub_rows["source"]) == {"alpaca"}
    assert report["source_datasets"] == ["tatsu-lab/alpaca"] and local["source_datasets"] == []
    assert "source_datasets:\n- tatsu-lab/alpaca" in (tmp_path / "out" / "README.md").read_text()
    assert hub.calls("GET", r"/datasets/tatsu-lab/alpaca/resolve/[0-9a-f]{40}/data/train") >= 1  # the data came over HTTP


def skipped(report) -> list[bool]:
    return [s["skipped"] for s in report["steps"][1:]]


def test_a_new_commit_on_the_hub_reruns_the_steps_and_an_unchanged_one_does_not(hub, tmp_path):
    put_alpaca(hub, tmp_path)
    recipe = write_recipe(tmp_path, "[{path: tatsu-lab/alpaca}]")
    first = run_recipe(load_recipe(recipe), tmp_path / "out", show_progress=False)
    again = run_recipe(load_recipe(recipe), tmp_path / "out", show_progress=False)
    assert skipped(first) == [False] and skipped(again) == [True]
    # a commit that leaves the rows as they were still names another revision: the work reruns
    hub.add_dataset("tatsu-lab/alpaca", {"README.md": "---\nlicense: cc-by-nc-4.0\n---\n# alpaca, edited\n"})
    assert skipped(run_recipe(load_recipe(recipe), tmp_path / "out", show_progress=False)) == [False]
    put_alpaca(hub, tmp_path, rows=ALPACA[:10])
    changed = run_recipe(load_recipe(recipe), tmp_path / "out", show_progress=False)
    assert skipped(changed) == [False] and changed["rows"]["out"] == 10


def test_revision_split_and_config_are_read(hub, tmp_path):
    old = put_alpaca(hub, tmp_path)
    put_alpaca(hub, tmp_path, rows=ALPACA[:5])  # main now has 5 rows; `old` still has 24
    pl.DataFrame(ALPACA[:3]).write_parquet(tmp_path / "test.parquet")
    hub.add_dataset("tatsu-lab/alpaca", {"data/test-00000-of-00001.parquet": tmp_path / "test.parquet"})
    for inputs, rows in ((f"[{{path: tatsu-lab/alpaca, revision: {old}}}]", 24),
                         (f"[{{path: 'hf://datasets/tatsu-lab/alpaca@{old}'}}]", 24),
                         ("[{path: tatsu-lab/alpaca, split: test}]", 3),
                         ("[{path: tatsu-lab/alpaca, config: default, limit: 4}]", 4),
                         ("[{path: 'hf://datasets/tatsu-lab/alpaca/data/test-*.parquet'}]", 3)):
        report = run_recipe(load_recipe(write_recipe(tmp_path, inputs)), tmp_path / f"out{rows}", show_progress=False)
        assert report["rows"]["in"] == rows, inputs


@pytest.mark.parametrize("inputs, message", [
    ("[{path: tatsu-lab/alpacca}]", r"inputs\[0\]\.path: 'tatsu-lab/alpacca': no such file or folder here, and no dataset "
                                    r"'tatsu-lab/alpacca' on the Hub"),
    ("[{path: tatsu-lab/alpaca, split: validation}]", r"inputs\[0\]\.split: the Hub dataset 'tatsu-lab/alpaca' has no split "
                                                       r"'validation'; its splits are \['train'\]"),
    ("[{path: tatsu-lab/alpaca, config: nope}]", r"inputs\[0\]\.config: the Hub dataset 'tatsu-lab/alpaca' has no config 'nope'"),
    ("[{path: tatsu-lab/alpaca, revision: v9}]", r"inputs\[0\]\.revision: no revision 'v9' of the Hub dataset 'tatsu-lab/alpaca'"),
    ("[{path: 'hf://datasets/tatsu-lab/alpaca@v1', revision: v2}]", r"inputs\[0\]\.revision: 'v2', but the path names revision 'v1'"),
    ("[{path: d.jsonl, split: train}]", r"inputs\[0\]\.split: only Hub datasets take it; 'd.jsonl' is a local file"),
    ("[{path: 'hf://datasets/alpaca'}]", r"inputs\[0\]\.path: 'hf://datasets/alpaca' is not a Hub dataset path"),
    ("[{path: data/missing.jsonl}]", r"inputs\[0\]\.path 'data/missing.jsonl': no such file or folder"),
])
def test_bad_hub_inputs_name_the_recipe_key_before_anything_is_written(hub, tmp_path, inputs, message):
    put_alpaca(hub, tmp_path)
    (tmp_path / "d.jsonl").write_text(json.dumps({"prompt": "Hi?", "completion": "Hello."}) + "\n")
    with pytest.raises(CurateError, match=message):
        run_recipe(load_recipe(write_recipe(tmp_path, inputs)), tmp_path / "out", show_progress=False)
    assert not (tmp_path / "out").exists()


# Input columns outside the record schema -------------------------------------------------------
def alpaca_file(tmp_path) -> str:
    rows = [{"id": f"src-{i}", **r} for i, r in enumerate(ALPACA)]
    (tmp_path / "alpaca.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return "alpaca.jsonl"


def test_extra_input_columns_are_kept_and_written_when_asked(tmp_path):
    recipe = write_recipe(tmp_path, f"[{{path: {alpaca_file(tmp_path)}}}]",
                          "output: {validation: 6, stratify: category, columns: [category, difficulty, source_id]}\n")
    run_recipe(load_recipe(recipe), tmp_path / "out", show_progress=False)
    records = pl.read_parquet(tmp_path / "out" / "records.parquet")
    assert {"category", "difficulty", "source_id"} <= set(records.columns)
    assert records.filter(pl.col("source_id") == "src-7").row(0, named=True)["difficulty"] == 1
    train, val = (pl.read_parquet(tmp_path / "out" / "data" / f"{s}.parquet") for s in ("train", "validation"))
    assert train.columns == ["id", "source", "category", "difficulty", "source_id", "messages"]
    # stratified by category: 3 of the 6 held-out rows from each of the two equal categories
    assert val["category"].value_counts().sort("category").rows() == [("brainstorm", 3), ("open_qa", 3)]
    # without output.columns the data files hold the format's columns, and records.parquet every column
    run_recipe(load_recipe(write_recipe(tmp_path, "[{path: alpaca.jsonl}]")), tmp_path / "plain", show_progress=False)
    assert pl.read_parquet(tmp_path / "plain" / "data" / "train.parquet").columns == ["id", "source", "messages"]


def test_mix_by_a_column_and_source_column_route_steps(tmp_path):
    name = alpaca_file(tmp_path)
    recipe = tmp_path / "m.yaml"
    recipe.write_text(f"name: m\ninputs: [{{path: {name}, source_column: category}}]\n"
                      "steps:\n- heuristics: {sources: [open_qa], min_response_words: 50}\n"
                      "- mix: {by: difficulty, quotas: {'0': 2, '1': 3}}\n")
    report = run_recipe(load_recipe(recipe), tmp_path / "out", show_progress=False)
    records = pl.read_parquet(tmp_path / "out" / "records.parquet")
    # the heuristics step saw only the open_qa rows (all too short) and passed brainstorm's through
    assert report["steps"][1]["dropped"] == {"response too short": 12} and set(records["source"]) == {"brainstorm"}
    assert sorted(records["difficulty"].to_list()) == [0, 0, 1, 1, 1]
    assert report["mix"]["by"] == "difficulty"
    rejects = pl.read_parquet(tmp_path / "out" / "rejects.parquet")
    assert rejects.filter(pl.col("step") == "02-mix")["reason"].value_counts().sort("reason").rows() == [
        ("difficulty not in the mixture", 4), ("over mixture quota", 3)]


@pytest.mark.parametrize("setting, key", [("output: {stratify: categry}", "output.stratify: no column 'categry'"),
                                          ("output: {columns: [difficulty, level]}", r"output.columns\[1\]: no column 'level'"),
                                          ("output: {columns: [messages]}", "written by the 'messages' format itself")])
def test_a_column_the_data_lacks_is_refused_before_any_step(tmp_path, setting, key):
    recipe = write_recipe(tmp_path, f"[{{path: {alpaca_file(tmp_path)}}}]", setting + "\n")
    with pytest.raises(CurateError, match=key):
        run_recipe(load_recipe(recipe), tmp_path / "out", show_progress=False)
    assert not (tmp_path / "out").exists()


def test_mix_by_a_missing_column_is_refused_before_any_step(tmp_path):
    recipe = tmp_path / "m.yaml"
    recipe.write_text(f"name: m\ninputs: [{{path: {alpaca_file(tmp_path)}}}]\nsteps: [{{mix: {{by: level, weights: {{a: 1}}}}}}]\n")
    with pytest.raises(CurateError, match=r"steps\[0\].mix: no column 'level' in the data"):
        run_recipe(load_recipe(recipe), tmp_path / "out", show_progress=False)


def test_extra_columns_of_a_hub_dataset_are_kept(hub, tmp_path):
    put_alpaca(hub, tmp_path)
    recipe = write_recipe(tmp_path, "[{path: tatsu-lab/alpaca}]",
                          "output: {validation: 4, stratify: category, columns: [category, difficulty]}\n")
    run_recipe(load_recipe(recipe), tmp_path / "out", show_progress=False)
    val = pl.read_parquet(tmp_path / "out" / "data" / "validation.parquet")
    assert val.columns == ["id", "source", "category", "difficulty", "messages"]
    assert val["category"].value_counts().sort("category").rows() == [("brainstorm", 2), ("open_qa", 2)]


def test_real_file_with_extra_columns(tmp_path):
    """AlpacaEval's 805 prompts carry `dataset` (the eval set each came from) and their own `id`."""
    from tests.conftest import shared

    path = shared("eval_prompts", "alpaca_eval_805.jsonl")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: ae\ninputs: [{{path: {path}}}]\nsteps: [{{exact_dedup: {{}}}}]\n"
                      "output: {validation: 0.1, stratify: dataset, columns: [dataset, source_id]}\n")
    run_recipe(load_recipe(recipe), tmp_path / "out", show_progress=False)
    train, val = (pl.read_parquet(tmp_path / "out" / "data" / f"{s}.parquet") for s in ("train", "validation"))
    shares = {d: n / 805 for d, n in pl.concat([train, val])["dataset"].value_counts().iter_rows()}
    held = {d: n / val.height for d, n in val["dataset"].value_counts().iter_rows()}
    assert set(held) == set(shares) and all(abs(held[d] - shares[d]) < 0.03 for d in shares)
    assert val["source_id"].str.starts_with("alpaca_eval_").all()


# Filters given a frame that is not records -----------------------------------------------------
SHAPES = {
    "alpaca": pl.DataFrame({"id": [7, 8, 9], "instruction": ["Name a colour.", "Name a colour.", "Name a fruit."],
                            "input": ["", "", ""], "output": ["Blue is a colour.", "Blue is a colour.", "An apple."],
                            "category": ["a", "b", "c"]}),
    "sharegpt": pl.DataFrame({"conversations": [[{"from": "human", "value": p}, {"from": "gpt", "value": r}] for p, r in
                                                (("Name a colour.", "Blue is a colour."),) * 2 + (("Name a fruit.", "An apple."),)],
                              "id": ["x", "y", "z"]}),
    "prompt_response": pl.DataFrame({"prompt": ["Name a colour.", "Name a colour.", "Name a fruit."],
                                     "response": ["Blue is a colour.", "Blue is a colour.", "An apple."], "source": ["s"] * 3}),
}


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("as_dataset", [False, True])
def test_a_filter_takes_alpaca_sharegpt_and_prompt_response_frames(shape, as_dataset):
    import datasets

    from filters import ExactDedup

    frame = SHAPES[shape]
    given = datasets.Dataset.from_polars(frame) if as_dataset else frame
    kept, rejected = ExactDedup().split(given)
    scored = ExactDedup().score(given)
    assert all(isinstance(x, type(given)) for x in (kept, rejected, scored))
    kept, rejected, scored = (x.to_polars() if as_dataset else x for x in (kept, rejected, scored))
    # the caller's columns as they were (its own `id` and `source` too), then the scores
    assert scored.columns[:frame.width] == frame.columns and scored.select(frame.columns).equals(frame)
    assert "score_exact_dedup_group_size" in scored.columns and "messages" not in scored.columns
    assert kept.select(frame.columns).equals(frame[[0, 2]]) and rejected.select(frame.columns).equals(frame[[1]])
    assert rejected["reason"].to_list() == ["exact duplicate"]
    # scores it made are its own: re-thresholding them does not need the records
    assert ExactDedup().keep(scored)[0].to_list() == [True, False, True]


def test_a_frame_of_another_shape_is_refused_saying_what_to_call():
    from filters import ExactDedup

    with pytest.raises(ValueError, match=r"columns are \['question_body', 'reply'\].*curate.io.to_records\(df, prompt=..."):
        ExactDedup().score(pl.DataFrame({"question_body": ["Why?"], "reply": ["Because."]}))


def test_a_config_of_a_dataset_with_several_and_sharegpt_rows(hub, tmp_path):
    card = ("---\nconfigs:\n- config_name: en\n  data_files: en/*.parquet\n- config_name: fr\n  data_files: fr/*.parquet\n"
            "---\n# chats\n")
    for lang, (q, a) in {"en": ("Say hello.", "Hello there!"), "fr": ("Dis bonjour.", "Bonjour !")}.items():
        pl.DataFrame({"conversations": [[{"from": "human", "value": f"{q} ({i})"}, {"from": "gpt", "value": a}]
                                        for i in range(4 if lang == "en" else 3)],
                      "lang": [lang] * (4 if lang == "en" else 3)}).write_parquet(tmp_path / f"{lang}.parquet")
    hub.add_dataset("me/chats", {"README.md": card, "en/train.parquet": tmp_path / "en.parquet",
                                 "fr/train.parquet": tmp_path / "fr.parquet"})
    report = run_recipe(load_recipe(write_recipe(tmp_path, "[{path: me/chats, config: fr}]")), tmp_path / "out",
                        show_progress=False)
    rows = pl.read_parquet(tmp_path / "out" / "records.parquet")
    assert report["rows"]["out"] == 3 and set(rows["lang"]) == {"fr"}
    assert rows["messages"][0].to_list() == [{"role": "user", "content": "Dis bonjour. (0)"},
                                             {"role": "assistant", "content": "Bonjour !"}]
    with pytest.raises(CurateError, match=r"inputs\[0\]\.config: the Hub dataset 'me/chats' has no config 'de'; its configs are \['en', 'fr'\]"):
        run_recipe(load_recipe(write_recipe(tmp_path, "[{path: me/chats, config: de}]")), tmp_path / "out2", show_progress=False)


def test_a_hub_dataset_is_read_a_part_at_a_time(hub, tmp_path):
    """Above engine.part_rows rows the Hub's Arrow tables come a part at a time; the rows are the same."""
    put_alpaca(hub, tmp_path)
    run_recipe(load_recipe(write_recipe(tmp_path, "[{path: tatsu-lab/alpaca}]")), tmp_path / "one", show_progress=False)
    run_recipe(load_recipe(write_recipe(tmp_path, "[{path: tatsu-lab/alpaca}]", "engine: {part_rows: 10}\n")),
               tmp_path / "parts", show_progress=False)
    assert len(list((tmp_path / "parts" / "steps" / "00-inputs" / "parts").glob("?????.parquet"))) == 3
    one, parts = (pl.read_parquet(tmp_path / d / "records.parquet") for d in ("one", "parts"))
    assert parts.equals(one) and parts.height == 24
