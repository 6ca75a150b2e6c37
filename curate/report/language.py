"""The languages of a run's rows, for the dataset card's `language` field (ISO 639-1 codes).

No language-ID model can be shipped or downloaded here (fastText's lid.176 is a download and
`filters.fasttext_filter.LanguageID` takes one the user provides), and the card needs only the few
languages a dataset is mostly in, so this is a light detector:
- a row with at least a quarter of its letters in a script used by one language (or one main one) is that language:
  Hangul is Korean, kana Japanese, Han without kana Chinese, Cyrillic Russian (Ukrainian with
  і ї є ґ), Arabic script Arabic (Persian or Urdu by their own letters), Devanagari Hindi, Thai, ...;
- a row in Latin script is the language whose most common function words it holds most of, each
  word weighted by 1 / the number of languages it is a function word in ("de" counts little);
- a row with too few letters or function words (code, numbers) is left undetermined.
bench/eval_language.py measures it on the shared English sets and on hand-written sentences.
"""

from __future__ import annotations

import re
from collections import Counter

import polars as pl

SAMPLE = 2000  # rows looked at; shares from 2000 rows are within ~2 points of the whole
MIN_SHARE = 0.05  # a language on the card: at least this share of the rows whose language was found
TEXT_CHARS = 2000  # of each row
MIN_LETTERS = 10
MIN_FUNCTION_WEIGHT = 1.5

# (language, characters of its script); the first script holding most of a row's letters decides.
SCRIPTS = [
    ("ko", "\uac00-\ud7af\u1100-\u11ff\u3130-\u318f"),
    ("ja", "\u3040-\u30ff"),  # kana; Han characters are counted with them below
    ("zh", "\u4e00-\u9fff\u3400-\u4dbf"),
    ("ru", "\u0400-\u04ff"),
    ("ar", "\u0600-\u06ff\u0750-\u077f"),
    ("he", "\u0590-\u05ff"),
    ("el", "\u0370-\u03ff"),
    ("hi", "\u0900-\u097f"),
    ("bn", "\u0980-\u09ff"),
    ("pa", "\u0a00-\u0a7f"),
    ("gu", "\u0a80-\u0aff"),
    ("ta", "\u0b80-\u0bff"),
    ("te", "\u0c00-\u0c7f"),
    ("kn", "\u0c80-\u0cff"),
    ("ml", "\u0d00-\u0d7f"),
    ("si", "\u0d80-\u0dff"),
    ("th", "\u0e00-\u0e7f"),
    ("lo", "\u0e80-\u0eff"),
    ("my", "\u1000-\u109f"),
    ("ka", "\u10a0-\u10ff"),
    ("hy", "\u0530-\u058f"),
    ("am", "\u1200-\u137f"),
    ("km", "\u1780-\u17ff"),
]
LATIN = "A-Za-z\u00c0-\u024f\u1e00-\u1eff"
# Letters that tell a language from the main one of its script.
VARIANTS = {"ru": [("uk", "іїєґІЇЄҐ")], "ar": [("ur", "ٹڈڑںےھ"), ("fa", "پچژگکی")]}
FUNCTION_WORDS = {
    "en": "the and of to is in that it for with are this you on be as was have not what a i how why can your my do "
          "does which who when their they we he she his her from by or an at will would should could me give write",
    "es": "el la de que y en los del las por un una es con para se no al lo como",
    "fr": "le la les de des et est un une du que en pour dans qui pas sur au avec ce",
    "de": "der die und das ist nicht ein eine zu den mit von sich auf dem für ich es sie auch",
    "it": "il di che la e è un una per non del della con sono le gli si da come anche",
    "pt": "o a de que e do da em um uma para com não os é no na se dos mais",
    "nl": "de het een en van is dat niet op te zijn voor met die ik je er maar ook wat",
    "pl": "i w nie na się z że do to jest jak o co ale po tak od za czy dla",
    "tr": "ve bir bu da de için ile çok ne mi ama daha gibi olarak var değil sonra her ki ben",
    "id": "yang dan di ini itu dengan untuk tidak dari dalam akan pada adalah saya ke juga ada bisa atau kami apa bagi kamu tentang",
    "vi": "của và là có không những được cho với một này các người trong đã để khi từ cũng",
    "sv": "och att det är som en på för med har inte av till den jag om ett var så men",
    "cs": "a se na je že to do jak ale jsem pro tak však co bylo jsou nebo jako podle",
}
_SCRIPT_RES = [(lang, re.compile(f"[{chars}]")) for lang, chars in SCRIPTS]
_LATIN_RE = re.compile(f"[{LATIN}]")
_WORD_RE = re.compile(f"[{LATIN}]+")


def _word_weights() -> dict[str, dict[str, float]]:
    langs_of = Counter(w for words in FUNCTION_WORDS.values() for w in set(words.split()))
    return {lang: {w: 1 / langs_of[w] for w in words.split()} for lang, words in FUNCTION_WORDS.items()}


_WEIGHTS = _word_weights()


def detect(text: str) -> str | None:
    """The ISO 639-1 code of the language `text` is mostly in, or None when it cannot tell."""
    text = text[:TEXT_CHARS]
    counts = {lang: len(rx.findall(text)) for lang, rx in _SCRIPT_RES}
    counts["ja"] += counts["zh"] if counts["ja"] > 0.05 * (counts["ja"] + counts["zh"]) else 0
    if counts["ja"] > counts["zh"]:
        counts["zh"] = 0
    latin = len(_LATIN_RE.findall(text))
    script, n = max(counts.items(), key=lambda kv: kv[1])
    if n + latin < MIN_LETTERS:
        return None
    if 3 * n >= latin:  # a quarter of the letters: Latin-script names and code inside Chinese or Russian text
        for variant, letters in VARIANTS.get(script, []):
            if sum(text.count(c) for c in letters) >= 2:
                return variant
        return script
    words = Counter(w.lower() for w in _WORD_RE.findall(text))
    scores = {lang: sum(words[w] * weight for w, weight in weights.items() if w in words)
              for lang, weights in _WEIGHTS.items()}
    lang, score = max(scores.items(), key=lambda kv: kv[1])
    return lang if score >= MIN_FUNCTION_WEIGHT else None


def row_texts(final: pl.DataFrame, limit: int = SAMPLE, seed: int = 0) -> list[str]:
    """The text of up to `limit` rows (all turns joined), a seeded sample when there are more."""
    if "messages" not in final.columns or final.height == 0:
        return []
    frame = final if final.height <= limit else final.sample(limit, seed=seed)
    joined = frame.select(pl.col("messages").list.eval(pl.element().struct.field("content")).list.join("\n"))
    return [t or "" for t in joined.to_series().to_list()]


def language_shares(final: pl.DataFrame) -> dict:
    """{"languages": codes for the card (each at least MIN_SHARE of the rows told, most first),
    "shares": {code: share}, "rows": rows looked at, "undetermined": rows it could not tell}."""
    texts = row_texts(final)
    found = Counter(detect(t) for t in texts)
    undetermined = found.pop(None, 0)
    told = sum(found.values())
    shares = {lang: round(n / told, 4) for lang, n in found.most_common()} if told else {}
    languages = [lang for lang, share in shares.items() if share >= MIN_SHARE]
    return {"languages": languages, "shares": shares, "rows": len(texts), "undetermined": undetermined,
            "method": "script and function words (curate/report/language.py)"}

