"""Scripts written without spaces (Chinese, Japanese, Thai) in the shared text primitives, as
dedup, decontamination and diversity see them (issue 9 part 4)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from curate import text as T
from curate.records import make_frame
from filters.decontaminate import Decontaminate
from filters.dedup import MinHashDedup
from filters.diversity import hashing_embeddings

# 86 characters, 73 character 5-grams once punctuation is dropped.
ZH = ("小明有15个苹果，他给了小红3个，又买了8个。请问小明现在有多少个苹果？请写出详细的计算过程，"
      "并用一句话说明你的答案。然后再出一道类似的题目，把数字换成别的，让同学们练习。")
ZH_TWO_CHARS = ZH.replace("详细", "完整")  # two characters changed: character 5-gram Jaccard 67/79 = 0.85
ZH_OTHER = ("请将下面这句话翻译成英文：今天的天气非常好，我们去公园散步吧。翻译时请注意语气要自然，"
            "不要逐字直译，并解释你为什么选择这样的表达方式。最后再给出两种不同风格的译文。")
JA = ("太郎君はりんごを12個持っています。花子さんに5個あげて、お母さんから7個もらいました。"
      "今、太郎君はりんごを何個持っていますか？式と答えを書いて、考え方も説明してください。")
JA_TWO_CHARS = JA.replace("説明", "解説")
TH = ("ช่วยวางแผนการเที่ยวภูเก็ตสามวันสองคืนด้วยงบประมาณไม่เกิน 10000 บาท "
      "โดยแนะนำที่พักราคาประหยัด ร้านอาหารทะเลที่อร่อย และกิจกรรมที่เหมาะกับครอบครัวที่มีเด็กเล็ก")
TH_EDITED = TH.replace("อร่อย", "สด")  # one Thai word swapped for another


def frame(prompts):
    return make_frame([{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": "ok"}]}
                       for p in prompts])


def kept(prompts, **settings):
    mask, _ = MinHashDedup(field="prompt", **settings).keep(MinHashDedup(field="prompt", **settings).score(frame(prompts)))
    return mask.to_list()


def test_words_split_cjk_and_thai_into_characters():
    assert T.words("日本語のテキスト。次の文") == ["日", "本", "語", "の", "テ", "キ", "ス", "ト", "次", "の", "文"]
    # Latin words and numbers inside a CJK run stay whole; full-width forms fold first (NFKC).
    assert T.words("用Python写一个函数，返回１５") == ["用", "python", "写", "一", "个", "函", "数", "返", "回", "15"]
    assert T.words("ｶﾞｷﾞ") == ["ガ", "ギ"]  # half-width katakana with a voicing mark: one character each
    # Thai: a letter keeps its combining vowel and tone marks; leading vowels stand alone. (NFKC
    # splits SARA AM into NIKHAHIT, a mark, and SARA AA.)
    assert T.words("น้ำ ไทย") == ["\u0e19\u0e49\u0e4d", "\u0e32", "ไ", "ท", "ย"]
    assert T.words("한국어 문장") == ["한국어", "문장"]  # Korean is written with spaces: words as before
    assert T.shingles("中文", ngram=5) == {"中 文"}


def test_vectorised_tokenizer_matches_reference_on_cjk_and_thai():
    texts = [ZH, JA, TH, ZH_OTHER, "mixed 中文 and English, ｶﾞｷﾞ", "", "ภาษาไทย", ZH] * 3
    data, offs = T.arrow_strings(texts)
    hashes, word_offs = T.tokenize(data, offs)
    for i, text in enumerate(texts):
        assert np.array_equal(hashes[word_offs[i] : word_offs[i + 1]], T.hash_words(T.words(text))), text


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_chinese_prompts_two_characters_apart_are_near_duplicates(threshold):
    # Before: each prompt tokenised to a handful of "words" (one per punctuation-free run), so
    # the two shared no shingle and both were kept at every threshold down to 0.3.
    assert kept([ZH, ZH_TWO_CHARS, ZH_OTHER], threshold=threshold) == [True, False, True]


def test_japanese_and_thai_near_duplicates():
    assert kept([JA, JA_TWO_CHARS, ZH], threshold=0.7) == [True, False, True]
    assert kept([TH, TH_EDITED, JA], threshold=0.7) == [True, False, True]


def test_unrelated_chinese_prompts_sharing_a_template_are_kept():
    template = "请将下面这句话翻译成英文："
    rows = [template + s for s in ("今天的天气非常好，我们去公园散步吧。", "这本书我已经读了三遍，每次都有新的收获。",
                                   "他每天早上六点起床，然后去河边跑步。")]
    assert kept(rows, threshold=0.5) == [True, True, True]


def test_decontamination_flags_a_chinese_item_with_one_number_changed(tmp_path):
    item = "甲乙两人同时从相距120千米的两地相向而行，甲每小时走7千米，乙每小时走5千米，几小时后相遇？"
    evalset = tmp_path / "zh_eval.jsonl"
    evalset.write_text(json.dumps({"question": item}, ensure_ascii=False) + "\n", encoding="utf-8")
    rows = [
        item.replace("120", "150"),  # one number changed
        "请解答：" + item.replace("7千米", "8千米") + "请写出过程。",  # one number changed, wrapped in other text
        "甲乙两人同时从两地出发，请问他们会在哪里相遇？",  # same topic, no 13-character run in common
        ZH_OTHER,
    ]
    f = Decontaminate(eval_sets=[str(evalset)], field="prompt")
    mask, _ = f.keep(f.score(frame(rows)))
    assert mask.to_list() == [False, False, True, True]


def test_hashing_embeddings_see_shared_chinese_characters():
    e = hashing_embeddings([ZH, ZH_TWO_CHARS, ZH_OTHER, JA])
    assert float(e[0] @ e[1]) > 0.9  # was 0: each text was a few "words" that the other lacked
    assert float(e[0] @ e[2]) < 0.5
