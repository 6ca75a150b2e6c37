"""fastText classifiers as filters: a quality classifier trained from labelled examples given in
the recipe, and language identification with a user-provided fastText model.

The method is fastText supervised classification (Joulin et al. 2017, "Bag of Tricks for
Efficient Text Classification"): averaged word + word-n-gram (+ optional character n-gram)
embeddings into a linear softmax. Quality classifiers of this kind select pretraining and SFT data
in CCNet / DCLM (Li et al. 2024) / FineWeb-Edu; language ID with `lid.176.bin` (Joulin et al. 2016;
Grave et al. 2018) is the FineWeb / CCNet first pass.

Training data: two files (`train_positive` / `train_negative`, e.g. the kept and rejected rows of
an earlier run) or one file with a label column. The trained model is saved to `model_out`, or to
a cache folder under a name derived from a hash of the training texts, labels and settings, so a
rerun with the same data loads the model instead of training again.

Needs the `fasttext` extra: any package providing `import fasttext` that works under numpy 2
(the original `fasttext` wheels crash in predict). Checked on fasttext-numpy2 0.10.4: training
with wordNgrams=1 and no character n-grams always fails with "Encountered NaN" (so, with that
package, such settings are rejected up front), and training is not reproducible even with one
thread and a fixed seed: on a 36-sentence set, 23 distinct models in 30 runs and 1-2 NaN failures
per 30 (word bigrams), about 1 failure in 4 with character n-grams; a NaN run is retried up to
twice. fasttext-community 0.11.9 has none of this (30 of 30 runs identical, no NaN, unigrams
train), so the extra installs it. Applying a model trained elsewhere (lid.176.bin) is unaffected.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import polars as pl
from pydantic import Field as Setting
from pydantic import PrivateAttr, model_validator

from curate.errors import CurateError, require
from curate.io import atomic_path, read_records, read_table, to_records
from curate.records import message_text
from curate.steps import Filter, RecipePath, reasons
from filters.dedup import TextPart

_PREFIX = "__label__"
_MODELS: dict[tuple[str, int], Any] = {}  # (path, mtime) -> loaded model, shared by every filter
_LOCK = threading.Lock()


def _fasttext():
    return require("fasttext", extra="fasttext", package="fasttext-community")


@functools.lru_cache(maxsize=1)
def _nan_prone_build() -> bool:
    """True when `import fasttext` comes from fasttext-numpy2 (see the module docstring)."""
    try:
        return "fasttext-numpy2" in (importlib.metadata.packages_distributions().get("fasttext") or [])
    except Exception:  # pragma: no cover - metadata unreadable: assume the worst
        return True


def cache_dir() -> Path:
    """Where trained models go when no `model_out` is given: $CURATE_FASTTEXT_CACHE or ~/.cache/curate/fasttext."""
    return Path(os.environ.get("CURATE_FASTTEXT_CACHE") or Path.home() / ".cache" / "curate" / "fasttext")


def load_model(path: str | Path):
    """Load a fastText .bin once per process (reloaded if the file changes)."""
    path = Path(path)
    if not path.exists():
        raise CurateError(f"{path}: fastText model not found")
    key = (str(path.resolve()), path.stat().st_mtime_ns)
    with _LOCK:
        if key not in _MODELS:
            ft = _fasttext()
            try:
                _MODELS[key] = ft.load_model(str(path))
            except ValueError as exc:
                raise CurateError(f"{path}: not a fastText model ({exc})") from None
        return _MODELS[key]


def prepare(texts: pl.Series, lowercase: bool = True, split_punctuation: bool = True) -> list[str]:
    """One line per text, as fastText reads it: whitespace runs (newlines included, which
    fastText's predict refuses) become one space; optionally lowercase and put spaces around
    punctuation (fastText splits on whitespace only, so "good." and "good" would differ)."""
    s = texts.fill_null("")
    if lowercase:
        s = s.str.to_lowercase()
    if split_punctuation:
        s = s.str.replace_all(r"([^\w\s])", " $1 ")
    return s.str.replace_all(r"\s+", " ").str.strip_chars().to_list()


def train_model(
    texts: list[str],
    labels: list[str],
    path: str | Path,
    **settings: Any,
):
    """Train fastText on (prepared) texts and labels, save it atomically to `path`, return the model.

    settings are fastText's own names (epoch, lr, wordNgrams, dim, minn, maxn, minCount, loss,
    thread, seed).
    """
    ft = _fasttext()
    if len(texts) != len(labels) or not texts:
        raise CurateError("fastText training needs one label per text and at least one text")
    if len(set(labels)) < 2:
        raise CurateError(f"fastText training needs at least two labels; got {sorted(set(labels))}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "train.txt"
        with open(data, "w", encoding="utf-8") as fh:
            for text, label in zip(texts, labels):
                fh.write(f"{_PREFIX}{label} {text}\n")
        for attempt in range(3):  # fasttext-numpy2 diverges at random now and then (module docstring)
            try:
                model = ft.train_supervised(input=str(data), verbose=0, **settings)
                break
            except RuntimeError as exc:
                if "NaN" not in str(exc) or attempt == 2:
                    raise CurateError(
                        f"fastText training failed ({exc}); fasttext-numpy2 sometimes diverges at random: "
                        "retry, lower lr, or install fasttext-community (pip install 'curate-sft[fasttext]')"
                    ) from None
    with atomic_path(path) as out:  # a crash never leaves half a model where a rerun would load it
        model.save_model(str(out))
    return model


def predict_all(model, lines: list[str]) -> tuple[list[list[str]], list[np.ndarray]]:
    """Every label with its probability, for each line (labels without the __label__ prefix)."""
    if not lines:
        return [], []
    labels, probs = model.predict(lines, k=-1, threshold=0.0)
    return [[lab.removeprefix(_PREFIX) for lab in row] for row in labels], list(probs)


def _label_probability(model, lines: list[str], label: str) -> np.ndarray:
    names, probs = predict_all(model, lines)
    out = np.zeros(len(lines), np.float64)
    for i, (row_names, row_probs) in enumerate(zip(names, probs)):
        for name, p in zip(row_names, row_probs):
            if name == label:
                out[i] = min(float(p), 1.0)  # fastText's softmax can overshoot 1 by ~1e-5
                break
    return out


class FastTextClassifier(Filter):
    """Keep rows a fastText classifier gives `label` with probability >= `min_prob` (fastText,
    Joulin et al. 2017; the DCLM / FineWeb-Edu style of quality classifier).

    Either `model_path` (an existing .bin, e.g. a language-ID model with label="en") or training
    data: `train_positive` + `train_negative` files (labels "pos" and "neg") or `train_file` with a
    `label_column`. Training files are any format `curate.io` reads; the text used is `field` of
    each record, as for the rows scored. Score column: `score_<name>` = P(label).
    """

    kind: ClassVar[str] = "fasttext"
    code_version: ClassVar[int] = 1
    row_local: ClassVar[bool] = True
    decide_settings: ClassVar[tuple[str, ...]] = ("min_prob",)

    model_path: RecipePath | None = None
    train_positive: RecipePath | None = None
    train_negative: RecipePath | None = None
    train_file: RecipePath | None = None
    label_column: str = "label"
    label: str = "pos"
    min_prob: float = Setting(0.5, ge=0.0, le=1.0)
    field: TextPart = "text"
    lowercase: bool = True
    split_punctuation: bool = True
    # fastText training settings. fastText's own defaults (epoch 5, lr 0.1) underfit a few thousand
    # SFT rows; on the AlpacaEval win/loss split (bench/report_filters_real_data.py) epoch 25 at
    # lr 0.1 gave the best held-out accuracy, and lr 0.5 left P(win) biased low.
    epoch: int = Setting(25, ge=1)
    lr: float = Setting(0.1, gt=0.0)
    word_ngrams: int = Setting(2, ge=1)
    dim: int = Setting(64, ge=1)
    # Hash buckets for word n-grams (and char n-grams). fastText's default, 2M, makes a 2M x dim
    # matrix: 800 MB on disk at dim 100 and ~15 s to initialise and save, for any data size.
    bucket: int = Setting(200_000, ge=1)
    minn: int = Setting(0, ge=0)
    maxn: int = Setting(0, ge=0)
    min_count: int = Setting(1, ge=1)
    loss: Literal["softmax", "ns", "hs", "ova"] = "softmax"
    threads: int = Setting(1, ge=1)  # 1 = reproducible (fastText's multithreaded SGD is racy)
    seed: int = Setting(0, ge=0, lt=2**31)  # fastText's seed is a C int
    model_out: str | None = None

    _model: Any = PrivateAttr(default=None)
    _trained: dict = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _check(self):
        two = self.train_positive is not None or self.train_negative is not None
        if two and (self.train_positive is None or self.train_negative is None):
            raise ValueError("give both train_positive and train_negative")
        sources = [self.model_path is not None, two, self.train_file is not None]
        if sum(sources) != 1:
            raise ValueError("give exactly one of model_path, train_positive+train_negative, or train_file")
        if self.word_ngrams < 2 and self.maxn == 0 and self.model_path is None and _nan_prone_build():
            raise ValueError(
                "word_ngrams=1 with no character n-grams (maxn=0) makes fasttext-numpy2 0.10.4 fail "
                "with 'Encountered NaN'; use word_ngrams>=2 or set minn/maxn"
            )
        self.label = self.label.removeprefix(_PREFIX)
        return self

    # Training -----------------------------------------------------------------------------
    def fasttext_settings(self) -> dict[str, Any]:
        return dict(epoch=self.epoch, lr=self.lr, wordNgrams=self.word_ngrams, dim=self.dim, minn=self.minn,
                    maxn=self.maxn, minCount=self.min_count, bucket=self.bucket, loss=self.loss, thread=self.threads, seed=self.seed)

    def training_data(self) -> tuple[list[str], list[str]]:
        """(prepared texts, labels) from the training files."""
        if self.train_file is not None:
            table = read_table(self.train_file)
            if self.label_column not in table.columns:
                raise CurateError(f"{self.train_file}: label column {self.label_column!r} not found; "
                                  f"the columns are {table.columns}")
            keep = table[self.label_column].is_not_null()
            table = table.filter(keep)
            labels = [str(x).replace(" ", "_") for x in table[self.label_column].to_list()]
            texts = message_text(to_records(table.drop(self.label_column), origin=self.train_file), self.field)
            return self._prep(texts), labels
        texts, labels = [], []
        for path, lab in ((self.train_positive, "pos"), (self.train_negative, "neg")):
            t = self._prep(message_text(read_records(path), self.field))
            texts += t
            labels += [lab] * len(t)
        return texts, labels

    def _prep(self, texts: pl.Series) -> list[str]:
        return prepare(texts, self.lowercase, self.split_punctuation)

    def model(self):
        """The fastText model: loaded from model_path, or trained (once) from the training data."""
        if self._model is not None:
            return self._model
        if self.model_path is not None:
            self._model = load_model(self.model_path)
            return self._model
        texts, labels = self.training_data()
        settings = self.fasttext_settings()
        digest = hashlib.sha256()
        digest.update(json.dumps([settings, self.lowercase, self.split_punctuation], sort_keys=True).encode())
        for text, label in zip(texts, labels):
            digest.update(f"{label}\t{text}\n".encode())
        key = digest.hexdigest()[:16]
        path = Path(self.model_out) if self.model_out else cache_dir() / f"fasttext-{key}.bin"
        stamp = path.with_name(path.name + ".json")
        counts = {lab: labels.count(lab) for lab in sorted(set(labels))}
        if self.label not in counts:
            raise CurateError(f"label {self.label!r} is not among the training labels {sorted(counts)}")
        if path.exists() and stamp.exists() and json.loads(stamp.read_text()).get("key") == key:
            self._model = load_model(path)
            self._trained = {"path": str(path), "key": key, "examples": counts, "reused": True}
            return self._model
        start = time.perf_counter()
        model = train_model(texts, labels, path, **settings)
        stamp.write_text(json.dumps({"key": key, "examples": counts, "settings": settings}, indent=1))
        self._model = model
        self._trained = {"path": str(path), "key": key, "examples": counts, "reused": False,
                         "seconds": round(time.perf_counter() - start, 3)}
        return model

    def training_info(self) -> dict[str, Any]:
        """Where the trained model is, how many examples per label, and whether it was reused."""
        self.model()
        return dict(self._trained)

    # Scoring ------------------------------------------------------------------------------
    def probability(self, texts: pl.Series | list[str]) -> np.ndarray:
        """P(label) for raw texts (prepared as the training texts were)."""
        texts = texts if isinstance(texts, pl.Series) else pl.Series("text", texts, dtype=pl.String)
        model = self.model()
        labels = [lab.removeprefix(_PREFIX) for lab in model.get_labels()]
        if self.label not in labels:
            raise CurateError(f"the fastText model has no label {self.label!r}; its labels are {labels[:20]}")
        return _label_probability(model, self._prep(texts), self.label)

    def compute_scores(self, df: pl.DataFrame) -> pl.DataFrame:
        return df.with_columns(pl.Series(self.column, self.probability(message_text(df, self.field))))

    def decide(self, df: pl.DataFrame) -> tuple[pl.Series, pl.Series]:
        return reasons(df[self.column] >= self.min_prob, "classifier probability too low")

    def explain(self, df: pl.DataFrame) -> pl.Series:
        why = pl.format("P({}) = {}", pl.lit(self.label), df[self.column].round(3))
        return pl.select(why.alias("detail")).to_series()


class LanguageID(Filter):
    """Keep rows whose most likely language, by a fastText language-ID model the user provides
    (e.g. lid.176.bin, Joulin et al. 2016), is in `languages` with probability >= `min_prob`.
    0.65 is FineWeb's English threshold. Scores: `score_<name>_lang` and `score_<name>_prob`.
    Text is passed as the model was trained: newlines removed, case and punctuation kept."""

    kind: ClassVar[str] = "language_id"
    code_version: ClassVar[int] = 1
    row_local: ClassVar[bool] = True
    decide_settings: ClassVar[tuple[str, ...]] = ("languages", "min_prob")

    model_path: RecipePath
    languages: list[str] = Setting(default_factory=lambda: ["en"], min_length=1)
    min_prob: float = Setting(0.65, ge=0.0, le=1.0)
    field: TextPart = "text"

    def score_columns(self) -> list[str]:
        return [f"{self.column}_lang", f"{self.column}_prob"]

    def compute_scores(self, df: pl.DataFrame) -> pl.DataFrame:
        model = load_model(self.model_path)
        lines = prepare(message_text(df, self.field), lowercase=False, split_punctuation=False)
        names, probs = predict_all(model, lines)
        lang = [row[0] if row else None for row in names]
        prob = [min(float(p[0]), 1.0) if len(p) else 0.0 for p in probs]
        c_lang, c_prob = self.score_columns()
        return df.with_columns(pl.Series(c_lang, lang, dtype=pl.String), pl.Series(c_prob, prob, dtype=pl.Float64))

    def decide(self, df: pl.DataFrame) -> tuple[pl.Series, pl.Series]:
        c_lang, c_prob = self.score_columns()
        reason = (
            pl.when(~pl.col(c_lang).is_in(self.languages)).then(pl.lit("wrong language"))
            .when(pl.col(c_prob) < self.min_prob).then(pl.lit("language uncertain"))
            .otherwise(None)
        )
        reason = df.select(reason.alias("reason")).to_series()
        return reason.is_null().alias("keep"), reason

    def explain(self, df: pl.DataFrame) -> pl.Series:
        c_lang, c_prob = self.score_columns()
        return df.select(pl.format("{} ({})", pl.col(c_lang), pl.col(c_prob).round(3)).alias("detail")).to_series()


__all__ = ["FastTextClassifier", "LanguageID", "train_model", "load_model", "prepare", "predict_all", "cache_dir"]
