"""Cards that do not mislead (issue 13 part 5): the declared license is checked against the inputs'
and the teacher's, the card states one that can hold and says why, and it carries the Hub fields a
run knows (language, pretty_name, source_datasets, annotations_creators, dataset_info.features).
The card is parsed back with huggingface_hub's DatasetCard, and the folder loaded with datasets."""

import json
import logging

import datasets
import pytest
from huggingface_hub import DatasetCard

from curate.engine import run_recipe
from curate.licenses import LICENSES, check_licenses
from curate.parts import Part
from curate.recipe import build_recipe, load_recipe
from curate.hub_inputs import hub_dataset_id
from curate.report.compute import build_report
from curate.report.language import detect, language_shares
from curate.records import make_frame

ROWS = [{"prompt": f"What is fact number {i} about the sea?", "completion": f"The sea holds fact {i}, and it is salty."}
        for i in range(8)] + [{"prompt": "请介绍一下长城的历史。", "completion": "长城是中国古代修建的军事防御工程，全长两万多公里。"},
                              {"prompt": "Почему небо голубое?", "completion": "Потому что воздух рассеивает синий свет сильнее, чем красный."}]


def run(tmp_path, recipe: str, rows=ROWS, caplog=None):
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    (tmp_path / "r.yaml").write_text(recipe)
    if caplog is not None:
        caplog.set_level(logging.WARNING)
    report = run_recipe(load_recipe(tmp_path / "r.yaml"), tmp_path / "out", show_progress=False)
    return report, DatasetCard.load(tmp_path / "out" / "README.md")


def test_apache_declared_over_a_non_commercial_input_is_marked_and_warned(tmp_path, caplog):
    """The card used to say apache-2.0, with no warning."""
    report, card = run(tmp_path, "name: nc_mix\nlicense: apache-2.0\ninputs: [{path: d.jsonl, license: cc-by-nc-4.0}]\n"
                                 "steps: [{exact_dedup: {}}]\n", caplog=caplog)
    assert card.data.license == "cc-by-nc-4.0"
    assert "declares license apache-2.0, but input d.jsonl is cc-by-nc-4.0" in caplog.text  # in the run, up front
    assert report["license"]["declared"] == "apache-2.0" and not report["license"]["compatible"]
    assert "**Warning:** the recipe declares license apache-2.0" in card.text
    assert "License: cc-by-nc-4.0 (the recipe declares apache-2.0)" in card.text


def test_conflicting_licenses_make_the_card_say_other_with_details(tmp_path, caplog):
    report, card = run(tmp_path, "name: conflict\nlicense: apache-2.0\ninputs: [{path: d.jsonl, license: cc-by-sa-4.0, limit: 5},\n"
                                 "  {path: d.jsonl, source: other, license: cc-by-nc-4.0}]\nsteps: [{exact_dedup: {}}]\n",
                       caplog=caplog)
    meta = card.data.to_dict()
    assert meta["license"] == "other" and meta["license_name"] == "mixed-terms" and meta["license_link"] == "README.md"
    assert "requires its derivatives under cc-by-sa-4.0" in meta["license_details"] and "cc-by-nc-4.0" in meta["license_details"]
    assert "the card says license: other" in caplog.text


def test_a_compatible_license_stands_without_warnings(tmp_path, caplog):
    report, card = run(tmp_path, "name: fine\nlicense: apache-2.0\ninputs: [{path: d.jsonl, license: mit}]\n"
                                 "steps: [{exact_dedup: {}}]\n", caplog=caplog)
    assert card.data.license == "apache-2.0" and report["license"]["compatible"] and "license:" not in caplog.text
    assert "## License" not in card.text


@pytest.mark.parametrize("declared, sources, card_license, warns", [
    ("apache-2.0", [("input a", "apache-2.0"), ("input b", "cc-by-4.0"), ("input c", "odc-by")], "apache-2.0", []),
    ("apache-2.0", [("input a", "cc-by-nc-4.0")], "cc-by-nc-4.0", ["non-commercial"]),
    ("cc-by-nc-sa-4.0", [("input a", "cc-by-nc-4.0")], "cc-by-nc-sa-4.0", []),  # stricter than needed: stands
    ("apache-2.0", [("input a", "cc-by-nc-sa-4.0"), ("input b", "cc-by-nc-4.0")], "cc-by-nc-sa-4.0", ["same license"]),
    ("apache-2.0", [("input a", "cc-by-sa-4.0")], "cc-by-sa-4.0", ["share-alike"]),
    ("cc-by-sa-4.0", [("input a", "cc-by-sa-4.0"), ("input b", "mit")], "cc-by-sa-4.0", []),
    ("apache-2.0", [("input a", "mit"), ("teacher llama", "llama3.1")], "llama3.1", ["Llama community license"]),
    ("apache-2.0", [("input a", "cc-by-nc-4.0"), ("teacher llama", "llama3.1")], "other", ["non-commercial"]),
    ("apache-2.0", [("input a", "cc-by-sa-4.0"), ("input b", "openrail")], "other", ["no one license"]),
    ("apache-2.0", [("input a", "cc-by-nc-nd-4.0")], "other", ["no derivatives"]),
    ("llama3", [("teacher llama", "llama3")], "llama3", ["improve any other LLM"]),
    ("apache-2.0", [("input a", None), ("input b", "other"), ("input c", "mit")], "apache-2.0",
     ["input a states no license", "input b is under 'other', which curate cannot check"]),
    (None, [("input a", "cc-by-nc-4.0")], "cc-by-nc-4.0", []),  # nothing declared: the card says what the input requires
    (None, [("input a", None)], "other", []),
])
def test_license_compatibility_table(declared, sources, card_license, warns):
    check = check_licenses(declared, sources)
    assert check.license == card_license
    assert len(check.warnings) == len(warns), check.warnings
    for needle, warning in zip(warns, check.warnings):
        assert needle in warning


def test_the_table_covers_the_common_hub_ids():
    for lic in ("apache-2.0", "mit", "cc-by-4.0", "cc-by-sa-4.0", "cc-by-nc-4.0", "cc-by-nc-sa-4.0", "odc-by", "llama3",
                "llama3.1", "openrail"):
        assert lic in LICENSES


def test_a_teacher_that_wrote_rows_brings_its_terms_and_the_machine_generated_tag(tmp_path):
    """Generation on the embedded teacher would be slow here, so the check is made on the recipe and
    a report built from rows in hand; the run path is test_pricing's over HTTP."""
    recipe = build_recipe({"name": "gen", "license": "apache-2.0", "inputs": [{"path": "s.jsonl", "license": "mit"}],
                           "teacher": {"backend": "openai", "model": "meta-llama/Llama-3.1-8B-Instruct",
                                       "base_url": "http://127.0.0.1:8000/v1", "license": "llama3.1"},
                           "steps": [{"responses": {}}]})
    final = make_frame([{"messages": [{"role": "user", "content": "Tell me about the sea and its waves."},
                                      {"role": "assistant", "content": "The sea is the body of salt water that covers the planet."}]}])
    report = _report(recipe, final, tmp_path)
    assert report["teacher"]["wrote_rows"] and report["license"]["license"] == "llama3.1"
    from curate.report.card import write_card

    write_card(recipe, report, tmp_path / "README.md")
    card = DatasetCard.load(tmp_path / "README.md")
    assert card.data.annotations_creators == ["machine-generated"] and card.data.license == "llama3.1"
    assert "teacher meta-llama/Llama-3.1-8B-Instruct is llama3.1" in card.text
    # a judge scores rows but writes none: no machine-generated tag, and its terms do not bind the data
    judged = build_recipe({"name": "judged", "teacher": {"backend": "openai", "model": "m", "license": "cc-by-nc-4.0"},
                           "steps": [{"judge": {}}]})
    assert not _report(judged, final, tmp_path)["teacher"]["wrote_rows"]


def _report(recipe, final, out) -> dict:
    steps = [{"step": "inputs", "rows_in": final.height, "rows_out": final.height}]
    in_hand = [Part(out / "records.parquet", "", final.height, final)]  # the final rows as the engine hands them
    return build_report(recipe, steps, in_hand, [], _data(final, out), 0.0, out, {})


def _data(final, out) -> dict:
    (out / "data").mkdir(exist_ok=True)
    final.select("id", "messages").write_parquet(out / "data" / "train.parquet")
    return {"train": {"parquet": "data/train.parquet"}}


def test_hub_fields_parse_back_and_the_folder_still_loads(tmp_path):
    report, card = run(tmp_path, "name: my-sft_v2\nlicense: mit\ninputs: [{path: d.jsonl, license: mit}]\n"
                                 "steps: [{exact_dedup: {}}]\noutput: {validation: 2}\n")
    meta = card.data.to_dict()
    assert meta["pretty_name"] == "My sft v2"
    assert meta["language"][0] == "en" and set(meta["language"]) == {"en", "ru", "zh"}  # most rows first
    assert meta["multilinguality"] == ["multilingual"] and "annotations_creators" not in meta  # no teacher wrote rows
    assert "source_datasets" not in meta  # local inputs only
    names = [f["name"] for f in meta["dataset_info"]["features"]]
    loaded = datasets.load_dataset(str(tmp_path / "out"))
    assert list(loaded["train"].features) == names and (len(loaded["train"]), len(loaded["validation"])) == (8, 2)
    # what the card declares is what datasets reads from the files
    from datasets.info import DatasetInfosDict

    assert DatasetInfosDict.from_dataset_card_data(card.data)["default"].features == loaded["train"].features
    assert [s["name"] for s in meta["dataset_info"]["splits"]] == ["train", "validation"]


def test_features_with_jsonl_only_output_are_left_out_and_the_folder_loads(tmp_path):
    report, card = run(tmp_path, "name: j\ninputs: [{path: d.jsonl}]\nsteps: [{exact_dedup: {}}]\noutput: {files: [jsonl]}\n")
    assert "dataset_info" not in card.data.to_dict()
    assert len(datasets.load_dataset(str(tmp_path / "out"))["train"]) == 10


def test_hub_inputs_are_source_datasets():
    assert hub_dataset_id("hf://datasets/HuggingFaceH4/ultrachat_200k/data/train_sft-*.parquet") == "HuggingFaceH4/ultrachat_200k"
    assert hub_dataset_id("hf://datasets/tatsu-lab/alpaca@main/data/x.parquet") == "tatsu-lab/alpaca"
    assert hub_dataset_id("data/seeds.jsonl") is None and hub_dataset_id("/abs/hf/datasets/a/b") is None


def test_source_datasets_in_the_card(tmp_path):
    recipe = build_recipe({"name": "hub", "inputs": [{"path": "hf://datasets/tatsu-lab/alpaca/data/train.parquet"},
                                                     {"path": "local.jsonl"}], "steps": [{"exact_dedup": {}}]})
    final = make_frame([{"messages": [{"role": "user", "content": "What is the capital of France?"},
                                      {"role": "assistant", "content": "The capital of France is Paris."}]}])
    report = _report(recipe, final, tmp_path)
    from curate.report.card import write_card

    write_card(recipe, report, tmp_path / "README.md")
    assert DatasetCard.load(tmp_path / "README.md").data.source_datasets == ["tatsu-lab/alpaca"]


def test_language_detection_on_rows():
    frame = make_frame([{"messages": [{"role": "user", "content": t}, {"role": "assistant", "content": t}]}
                        for t in ["Tell me what the weather is like in the mountains.",
                                  "Dime qué tiempo hace en las montañas y por qué es así.", "print(1 + 2)"]])
    found = language_shares(frame)
    assert found["shares"] == {"en": 0.5, "es": 0.5} and found["undetermined"] == 1
    assert detect("海についての短い詩を書いて、説明してください。") == "ja" and detect("写一首关于大海的短诗。") == "zh"
