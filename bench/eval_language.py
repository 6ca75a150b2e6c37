"""How well the card's language detector (curate/report/language.py) tells languages apart.

    python bench/eval_language.py

Why a detector of our own: the card needs the few languages a dataset is mostly in, no
language-ID model ships with the project or can be downloaded at run time (fastText's lid.176 is a
download; `filters.fasttext_filter.LanguageID` takes one the user provides), and the installed
environment has no language-ID package. This prints, per set:
- the English sets in ../shared/data (every text field the card would see: prompts, and answers
  where a set has them): share detected as English, as another language, and undetermined;
- bench/data/multilingual_prompts.json (Chinese, Japanese, Thai, written for the dedup bench);
- SENTENCES below (one everyday request per language, written for this bench, 15 languages);
and the time per 1,000 texts.
"""

from __future__ import annotations

import gzip
import json
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from curate.report.language import detect  # noqa: E402

DATA = ROOT.parent / "shared" / "data"

SENTENCES = {
    "es": "Escribe un poema corto sobre el mar y explica lo que significa para ti.",
    "fr": "Écris un court poème sur la mer et explique ce qu'il signifie pour toi.",
    "de": "Schreibe ein kurzes Gedicht über das Meer und erkläre, was es für dich bedeutet.",
    "it": "Scrivi una breve poesia sul mare e spiega che cosa significa per te.",
    "pt": "Escreva um poema curto sobre o mar e explique o que ele significa para você.",
    "nl": "Schrijf een kort gedicht over de zee en leg uit wat het voor je betekent.",
    "ko": "바다에 관한 짧은 시를 쓰고 그것이 당신에게 어떤 의미인지 설명하세요.",
    "ru": "Напиши короткое стихотворение о море и объясни, что оно значит для тебя.",
    "uk": "Напиши короткий вірш про море і поясни, що він означає для тебе особисто.",
    "ar": "اكتب قصيدة قصيرة عن البحر واشرح ماذا تعني لك.",
    "hi": "समुद्र के बारे में एक छोटी कविता लिखिए और बताइए कि इसका आपके लिए क्या अर्थ है।",
    "vi": "Hãy viết một bài thơ ngắn về biển và giải thích ý nghĩa của nó đối với bạn.",
    "tr": "Deniz hakkında kısa bir şiir yaz ve bunun senin için ne anlama geldiğini açıkla.",
    "id": "Tulislah puisi pendek tentang laut dan jelaskan apa artinya bagi kamu.",
    "pl": "Napisz krótki wiersz o morzu i wyjaśnij, co on dla ciebie znaczy.",
}

# (set, file, the text fields of each row)
ENGLISH = [
    ("alpaca_eval", "eval_prompts/alpaca_eval_805.jsonl", ["instruction"]),
    ("mt_bench", "eval_prompts/mt_bench_question_80.jsonl", ["turns"]),
    ("vicuna", "eval_prompts/vicuna_bench_question_80.jsonl", ["text", "turns"]),
    ("lima_test", "eval_prompts/lima_test_300.jsonl", ["conversations"]),
    ("wizardlm_test", "eval_prompts/wizardlm_testset_218.jsonl", ["Instruction"]),
    ("selfinstruct_252", "eval_prompts/selfinstruct_user_oriented_252.jsonl", ["instruction", "instances"]),
    ("gsm8k_train", "gsm8k_train/train.jsonl", ["question", "answer"]),
    ("cherry_alpaca", "quality_cherry_alpaca_ifd/cherry_alpaca_5_percent.jsonl", ["instruction", "input", "output"]),
    ("alpaca_gpt4_bad", "nuggets_alpaca_gpt4/alpaca_gpt4_bad_scored.jsonl", ["instruction", "input", "output"]),
]


def texts(path: Path, fields: list[str]) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    out = []
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            parts = [json.dumps(row[k], ensure_ascii=False) if not isinstance(row[k], str) else row[k]
                     for k in fields if row.get(k)]
            out.append("\n".join(parts))
    return out


def main() -> None:
    print("| set | texts | detected as expected | another language | undetermined | ms / 1,000 texts |")
    print("|---|---|---|---|---|---|")
    sets = [(name, "en", texts(DATA / rel, fields)) for name, rel, fields in ENGLISH if (DATA / rel).exists()]
    own = json.loads((ROOT / "bench" / "data" / "multilingual_prompts.json").read_text())
    sets += [(f"multilingual_prompts {lang}", lang, own[lang]) for lang in ("zh", "ja", "th")]
    sets.append(("SENTENCES (15 languages)", None, list(SENTENCES.values())))
    for name, lang, items in sets:
        start = time.perf_counter()
        found = [detect(t) for t in items]
        ms = (time.perf_counter() - start) * 1e6 / max(len(items), 1)
        expected = list(SENTENCES) if lang is None else [lang] * len(items)
        right = sum(f == e for f, e in zip(found, expected))
        none = sum(f is None for f in found)
        print(f"| {name} | {len(items)} | {right / len(items):.1%} | {(len(items) - right - none) / len(items):.1%} "
              f"| {none / len(items):.1%} | {ms:.0f} |")
        wrong = Counter(f for f, e in zip(found, expected) if f != e and f is not None)
        if wrong:
            print(f"|  | wrong as: {dict(wrong.most_common(5))} | | | | |")


if __name__ == "__main__":
    main()
