"""Tests of filters.fasttext_filter: a trained quality classifier and language ID through a model file."""

from __future__ import annotations

import json
import random
import sys

import pytest

pytest.importorskip("fasttext")

from curate.errors import CurateError, MissingExtra  # noqa: E402
from curate.records import make_frame  # noqa: E402
from filters.fasttext_filter import FastTextClassifier, LanguageID, _nan_prone_build  # noqa: E402

TOPICS = ["photosynthesis", "volcanoes", "vaccines", "rainbows", "tides", "magnets", "batteries", "bridges",
          "earthquakes", "glaciers", "compilers", "neurons", "satellites", "bread", "clouds", "engines",
          "bees", "coral", "rockets", "antibiotics"]
HELD_OUT = ["lasers", "wetlands", "printing presses", "telescopes"]


def good(topic: str, rng: random.Random) -> dict:
    steps = rng.sample(["First", "Next", "Then", "Finally", "As a result", "Because of this"], 3)
    return {"instruction": f"Explain how {topic} work.",
            "output": f"{steps[0]}, {topic} depend on a clear physical process. {steps[1]}, energy moves "
                      f"from one part to another, which explains the effect. {steps[2]}, we can see why "
                      f"{topic} matter in everyday life, for example in schools and hospitals."}


def bad(topic: str, rng: random.Random) -> dict:
    return {"instruction": f"Explain how {topic} work.",
            "output": rng.choice(["idk lol", "no", "search it yourself", "whatever", "?? not sure", "cant help"])}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def alpaca_frame(rows):
    return make_frame([{"messages": [{"role": "user", "content": r["instruction"]},
                                     {"role": "assistant", "content": r["output"]}]} for r in rows])


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CURATE_FASTTEXT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def quality_files(tmp_path):
    rng = random.Random(0)
    pos = [good(t, rng) for t in TOPICS for _ in range(2)]
    neg = [bad(t, rng) for t in TOPICS for _ in range(2)]
    return write_jsonl(tmp_path / "pos.jsonl", pos), write_jsonl(tmp_path / "neg.jsonl", neg)


def held_out_frame():
    rng = random.Random(1)
    return alpaca_frame([good(t, rng) for t in HELD_OUT] + [bad(t, rng) for t in HELD_OUT])


def test_two_files_train_score_and_split(quality_files, cache):
    pos, neg = quality_files
    f = FastTextClassifier(train_positive=pos, train_negative=neg)
    scored = f.score(held_out_frame())
    p = scored["score_fasttext"].to_list()
    assert all(x > 0.6 for x in p[:4]) and all(x < 0.4 for x in p[4:]), p
    kept, rejected = f.split(held_out_frame())
    assert len(kept) == 4 and rejected["reason"].to_list() == ["classifier probability too low"] * 4
    assert rejected["detail"][0].startswith("P(pos) = ")
    info = f.training_info()
    assert info["examples"] == {"neg": 40, "pos": 40} and not info["reused"]
    assert info["path"].startswith(str(cache))


def test_cached_model_is_reused_and_keyed_by_data(quality_files, cache, tmp_path):
    pos, neg = quality_files
    first = FastTextClassifier(train_positive=pos, train_negative=neg)
    a = first.score(held_out_frame())["score_fasttext"].to_list()
    again = FastTextClassifier(train_positive=pos, train_negative=neg)
    assert again.training_info()["reused"] and again.training_info()["path"] == first.training_info()["path"]
    assert again.score(held_out_frame())["score_fasttext"].to_list() == a
    other = write_jsonl(tmp_path / "neg2.jsonl", [bad(t, random.Random(5)) for t in TOPICS])
    changed = FastTextClassifier(train_positive=pos, train_negative=other)
    assert changed.training_info()["key"] != first.training_info()["key"]
    assert len(list(cache.glob("*.bin"))) == 2


def test_model_out_then_model_path_gives_the_same_scores(quality_files, tmp_path, cache):
    pos, neg = quality_files
    out = tmp_path / "models" / "quality.bin"
    trained = FastTextClassifier(train_positive=pos, train_negative=neg, model_out=str(out))
    a = trained.score(held_out_frame())["score_fasttext"].to_list()
    assert out.exists() and not cache.exists()
    loaded = FastTextClassifier(model_path=str(out), label="__label__pos")
    assert loaded.score(held_out_frame())["score_fasttext"].to_list() == a


def test_one_file_with_label_column(tmp_path, cache):
    rng = random.Random(0)
    rows = [dict(good(t, rng), quality="high") for t in TOPICS] + [dict(bad(t, rng), quality="low") for t in TOPICS]
    path = write_jsonl(tmp_path / "labelled.jsonl", rows)
    f = FastTextClassifier(train_file=path, label_column="quality", label="high")
    p = f.score(held_out_frame())["score_fasttext"].to_list()
    assert all(x > 0.5 for x in p[:4]) and all(x < 0.5 for x in p[4:]), p
    with pytest.raises(CurateError, match="label 'pos' is not among"):
        FastTextClassifier(train_file=path, label_column="quality").score(held_out_frame())


def test_rethreshold_without_rescoring(quality_files, cache, monkeypatch):
    pos, neg = quality_files
    scored = FastTextClassifier(train_positive=pos, train_negative=neg).score(held_out_frame())

    def rescoring(*_):
        raise AssertionError("keep() must not rescore")

    monkeypatch.setattr(FastTextClassifier, "compute_scores", rescoring)
    for min_prob, n_kept in ((0.0, 8), (0.5, 4), (1.0, 0)):
        mask, _ = FastTextClassifier(train_positive=pos, train_negative=neg, min_prob=min_prob).keep(scored)
        assert mask.sum() == n_kept


def test_datasets_dataset_in_and_out(quality_files, cache):
    datasets = pytest.importorskip("datasets")
    pos, neg = quality_files
    ds = datasets.Dataset.from_polars(held_out_frame())
    kept, rejected = FastTextClassifier(train_positive=pos, train_negative=neg).split(ds)
    assert isinstance(kept, datasets.Dataset) and (len(kept), len(rejected)) == (4, 4)


def test_settings_are_checked(tmp_path):
    with pytest.raises(ValueError, match="exactly one of"):
        FastTextClassifier()
    with pytest.raises(ValueError, match="both train_positive and train_negative"):
        FastTextClassifier(train_positive="a.jsonl")
    with pytest.raises(ValueError, match="exactly one of"):
        FastTextClassifier(model_path="m.bin", train_file="x.jsonl")
    if _nan_prone_build():  # fasttext-numpy2 0.10.4 cannot train word unigrams alone
        with pytest.raises(ValueError, match="Encountered NaN"):
            FastTextClassifier(train_file="x.jsonl", word_ngrams=1)
    with pytest.raises(ValueError, match="unknown|extra"):
        FastTextClassifier(model_path="m.bin", treshold=0.3)
    with pytest.raises(CurateError, match="not found"):
        FastTextClassifier(model_path=str(tmp_path / "missing.bin")).score(held_out_frame())


def test_missing_fasttext_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "fasttext", None)  # import fasttext -> ImportError
    f = FastTextClassifier(train_file=write_jsonl(tmp_path / "t.jsonl", [{"instruction": "a", "label": "x"},
                                                                        {"instruction": "b", "label": "y"}]),
                           label="x", model_out=str(tmp_path / "m.bin"))
    with pytest.raises(MissingExtra, match=r"fasttext-community.*curate-sft\[fasttext\]"):
        f.score(held_out_frame())


# --- language ID through a model file ----------------------------------------------------------------

LANG = {
    "en": ["The weather is nice today and the children are playing outside.",
           "I would like a cup of coffee with milk, please.",
           "Where is the nearest train station?",
           "My brother works in a hospital in the city.",
           "We are going to the beach this weekend with our friends.",
           "This book is about the history of the old kingdom.",
           "Can you help me find my keys?",
           "The students are reading in the library.",
           "She bought fresh bread and cheese at the market.",
           "Thank you very much for your kind message.",
           "The river flows slowly through the green valley.",
           "Please close the window because it is cold."],
    "fr": ["Il fait beau aujourd'hui et les enfants jouent dehors.",
           "Je voudrais une tasse de café au lait, s'il vous plaît.",
           "Où est la gare la plus proche ?",
           "Mon frère travaille dans un hôpital en ville.",
           "Nous allons à la plage ce week-end avec nos amis.",
           "Ce livre parle de l'histoire du vieux royaume.",
           "Pouvez-vous m'aider à trouver mes clés ?",
           "Les étudiants lisent dans la bibliothèque.",
           "Elle a acheté du pain frais et du fromage au marché.",
           "Merci beaucoup pour votre gentil message.",
           "La rivière coule lentement à travers la vallée verte.",
           "Fermez la fenêtre s'il vous plaît, parce qu'il fait froid."],
    "de": ["Das Wetter ist heute schön und die Kinder spielen draußen.",
           "Ich hätte gern eine Tasse Kaffee mit Milch, bitte.",
           "Wo ist der nächste Bahnhof?",
           "Mein Bruder arbeitet in einem Krankenhaus in der Stadt.",
           "Wir fahren dieses Wochenende mit unseren Freunden an den Strand.",
           "Dieses Buch handelt von der Geschichte des alten Königreichs.",
           "Kannst du mir helfen, meine Schlüssel zu finden?",
           "Die Studenten lesen in der Bibliothek.",
           "Sie hat frisches Brot und Käse auf dem Markt gekauft.",
           "Vielen Dank für deine freundliche Nachricht.",
           "Der Fluss fließt langsam durch das grüne Tal.",
           "Bitte schließe das Fenster, weil es kalt ist."],
}
LANG_HELD_OUT = [("en", "The children are reading a book about the river."),
                 ("fr", "Les enfants lisent un livre sur la rivière."),
                 ("de", "Die Kinder lesen ein Buch über den Fluss.")]


@pytest.fixture
def lid_model(tmp_path, cache):
    """A tiny language-ID model trained here from handmade sentences and saved to a file: it stands
    in for lid.176.bin, which cannot be downloaded on this machine. Word features only: with
    character n-grams (as lid.176 has) fasttext-numpy2 0.10.4 trains non-reproducibly and now and
    then fails with NaN (see filters/fasttext_filter.py), which would make this test flaky."""
    rows = [{"text": s, "lang": lang} for lang, sents in LANG.items() for s in sents]
    path = write_jsonl(tmp_path / "lid_train.jsonl", rows)
    out = tmp_path / "lid.tiny.bin"
    FastTextClassifier(train_file=path, label_column="lang", label="en", field="prompt", lowercase=False,
                       split_punctuation=False, epoch=100, lr=0.5, dim=16, bucket=20_000,
                       model_out=str(out)).training_info()  # raw text, as LanguageID passes it
    return str(out)


def lang_frame():
    return make_frame([{"messages": [{"role": "user", "content": s}]} for _, s in LANG_HELD_OUT])


def test_language_id_with_a_model_file(lid_model):
    f = LanguageID(model_path=lid_model, languages=["en"], min_prob=0.4)
    scored = f.score(lang_frame())
    assert scored["score_language_id_lang"].to_list() == ["en", "fr", "de"]
    # with fasttext-numpy2, training is not reproducible: 0.55-0.99 seen over 30 runs; chance is 0.33.
    assert all(p > 0.4 for p in scored["score_language_id_prob"].to_list())
    kept, rejected = f.split(lang_frame())
    assert len(kept) == 1 and rejected["reason"].to_list() == ["wrong language"] * 2
    assert rejected["detail"][0].startswith("fr (")
    _, reason = LanguageID(model_path=lid_model, languages=["en", "de"], min_prob=1.0).keep(scored)
    assert reason.to_list() == ["language uncertain", "wrong language", "language uncertain"]


def test_classifier_probability_of_one_language_through_model_path(lid_model):
    f = FastTextClassifier(model_path=lid_model, label="fr", lowercase=False, split_punctuation=False)
    p = f.score(lang_frame())["score_fasttext"].to_list()
    assert p[1] > 0.5 and p[0] < 0.5 and p[2] < 0.5
    with pytest.raises(CurateError, match="no label 'xx'"):
        FastTextClassifier(model_path=lid_model, label="xx").score(lang_frame())
