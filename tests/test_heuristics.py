import polars as pl

from curate.records import make_frame
from filters.heuristics import Heuristics, ends_mid_sentence


def rows(*pairs):
    return make_frame([{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": a}]} for p, a in pairs])


def test_each_rule_fires_with_its_reason():
    df = rows(
        ("Write a poem about rain.", ""),
        ("Name a fruit.", "Apple."),
        ("Describe the sea in detail please.", "Describe the sea in detail please."),
        ("Tell me a secret.", "I'm sorry, but I cannot help with that request, as it is private."),
        ("Tell me a joke.", "As an AI language model, I do not tell jokes but here is one anyway."),
        ("What is rain?", "Rain is water that falls from clouds when droplets grow heavy."),
        ("Write a lot.", " ".join(["word"] * 50)),
    )
    kept, rejected = Heuristics(min_response_words=3, max_response_words=40).split(df)
    assert kept["messages"].list.last().struct.field("content").to_list() == [
        "Rain is water that falls from clouds when droplets grow heavy."
    ]
    assert rejected["reason"].to_list() == [
        "empty response", "response too short", "response repeats the instruction",
        "refusal or AI boilerplate", "refusal or AI boilerplate", "response too long",
    ]


def test_rethreshold_uses_stored_scores_only(monkeypatch):
    df = Heuristics().score(rows(("Q?", "one two three four")))
    assert df["score_heuristics_response_words"].to_list() == [4]

    def rescoring(*_):
        raise AssertionError("keep() must not rescore")

    monkeypatch.setattr(Heuristics, "compute_scores", rescoring)
    mask, reason = Heuristics(min_response_words=5).keep(df)
    assert mask.to_list() == [False] and reason.to_list() == ["response too short"]


def test_works_on_a_datasets_dataset():
    import datasets

    ds = datasets.Dataset.from_polars(rows(("Q?", "a fine and long enough answer"), ("Q2?", "")))
    kept, rejected = Heuristics().split(ds)
    assert isinstance(kept, datasets.Dataset) and len(kept) == 1 and rejected[0]["reason"] == "empty response"


# ends_mid_sentence: cut texts (as a token limit leaves them) and finished ones that look alike.
CUT = [
    "Here are three tips.\n\n1. Take breaks.\n2. Sleep well.\n3. **Prioritize Tasks",  # the quickstart's
    "```python\ndef factorial(n):\n    return n * factorial(n - ",  # inside a code block
    "Thank you so much for watering my plants.\n\n[Your Name",  # unclosed bracket
    "Rain forms when water vapour cools and condenses into droplets that grow until they",
    "The water cycle has four stages. First, the sun heats the oceans and lakes, and the",
    "Steps:\n1. Boil the water.\n2. Add the tea leaves and let them steep for",
    "Here is a list of snacks:",
    "Apples are healthy, cheap,",
    "1. Mix the flour and salt.\n2. In a large bowl, beat the eggs together with the sugar until",
    "The three stages are listed below.\n1. Evaporation.\n2. Condensation.\n3.",
    "| name | age |\n|---|---|\n| Ann | 31 |\n| Bob | 4",
]
FINISHED = [
    "Rain is water that falls from clouds.",
    "Positive",  # a one-word label
    "The Great Gatsby",
    "The juice was too sour",  # a short answer without a full stop
    "Leaves fall gently down\nGolden crown upon the ground\nAutumn wears her gown",  # a poem
    "Red: Tomato\nOrange: Carrot\nGreen: Broccoli, Avocado",  # labels
    "```python\nprint('hi')\n```",
    "1. Apples\n2. Bananas\n3. Carrots",
    "SELECT * FROM students WHERE eye_color = 'blue';",
    "The answer is 42",
    "Use a list (mutable) or a tuple (immutable)",
    '"Believe you can and you\'re halfway there." - Theodore Roosevelt',
    "Thank you for your help.\n\nBest regards,",
    "Try these: yoga, walking, swimming, cycling",
    "Share your photos with #sunset #beach",
    "- Stay hydrated\n- Sleep well\n- Take breaks as often as you can",
    "The Top 10 Best Practices for Ethical and Impactful Journalism",
    "1) Python\n2) Java\n3) C++",
]


def test_ends_mid_sentence_on_cut_and_finished_texts():
    assert [t for t in CUT if not ends_mid_sentence(t)] == []
    assert [t for t in FINISHED if ends_mid_sentence(t)] == []
    assert not ends_mid_sentence("") and not ends_mid_sentence(None)


def test_mid_sentence_drops_only_rows_without_a_finish_reason():
    """Existing data (no finish reason) is judged by its text; a teacher's row by its finish reason,
    so a kept "length" row (keep_truncated) is left to validation and a "stop" row is never dropped."""
    cut = CUT[3]
    df = make_frame([
        {"messages": [{"role": "user", "content": "How does rain form?"}, {"role": "assistant", "content": cut}]},
        {"messages": [{"role": "user", "content": "How does rain form, briefly?"}, {"role": "assistant", "content": cut}],
         "meta": {"finish_reason": "stop"}},
        {"messages": [{"role": "user", "content": "Why does it rain?"}, {"role": "assistant", "content": cut}],
         "meta": {"finish_reason": "length"}},
        {"messages": [{"role": "user", "content": "What is rain?"}, {"role": "assistant", "content": FINISHED[0]}]},
    ])
    kept, rejected = Heuristics().split(df)
    assert rejected["reason"].to_list() == ["response ends mid-sentence"]
    assert rejected["messages"][0][0]["content"] == "How does rain form?"
    assert kept.height == 3 and kept["score_heuristics_mid_sentence"].to_list() == [True, True, False]
    assert Heuristics(drop_mid_sentence=False).split(df)[1].height == 0


def test_mid_sentence_on_real_data():
    """Whole answers of public datasets are rarely flagged; the same answers cut at a random word
    mostly are (bench/eval_mid_sentence.py prints the full figures)."""
    import random
    import re

    from conftest import shared
    from curate.io import read_records
    from curate.records import message_text

    from filters.heuristics import mid_sentence

    answers = message_text(read_records(shared("nuggets_alpaca_gpt4", "alpaca_gpt4_bad_scored.jsonl")), "response").to_list()
    flagged = mid_sentence(pl.Series(answers)).sum()
    assert flagged / len(answers) < 0.002, flagged  # 9 of 9,038 when measured
    rng = random.Random(0)
    long = [a for a in answers if len(a.split()) >= 30]
    cut = [a[: rng.choice([m.start() for m in re.finditer(r"\s+", a.strip())])] for a in long]
    assert mid_sentence(pl.Series(cut)).sum() / len(cut) > 0.5  # 0.60 of 552 when measured


# Texts where Python's and polars' regex classes disagree (whitespace U+001C-U+001F and U+0085,
# combining marks in a word, the dotless i under IGNORECASE, digits other than 0-9, title case),
# with the answers of the row-by-row Python rule this vectorised one replaced.
UNICODE_EDGES = [
    ("Thank you for your help.\n\nBest regards,\x1c", False),
    ("Here is the plan:\x1f", True),
    ("He said it was fine, and the\u2028next part", False),
    ("Sıncerely,", False),
    ("Yours trulý,", False),
    ("Yours tru\u0301ly,", True),
    ("This is a**\u0301b bold", True),
    ("This is é**é fine", False),
    ("Steps.\n\n١٢.", True),
    ("Steps:\n1. Boil.\n\u0662", True),
    ("The list follows.\n²", False),
    ("Word.\x85and then a new line that goes on for a while", True),
    ("Ⅰntroduction To Ancient Roman History Books", False),
    ("ǅemal went to the market today and bought", False),
    ("A title\u3000line\u3000ends\u3000here\u3000with\u3000the", True),
]


def test_mid_sentence_reads_text_as_python_does():
    from filters.heuristics import mid_sentence

    texts = [t for t, _ in UNICODE_EDGES]
    assert mid_sentence(pl.Series(texts)).to_list() == [want for _, want in UNICODE_EDGES]
    assert mid_sentence(pl.Series([None, "", "  \n"], dtype=pl.String)).to_list() == [False, False, False]


def test_prompt_copy_counts_the_shared_words_of_the_project_tokenizer():
    """Against a Python reference built on `curate.text.words` (the tokenizer's one-text twin), on
    real rows; and text without spaces is compared by characters: a Chinese answer that repeats
    its instruction was 0.0 when a whole clause was one word."""
    from conftest import shared
    from curate.io import read_records
    from curate.records import message_text
    from curate.text import words
    from filters.heuristics import prompt_copy

    def grams(text):
        w = words(text)
        return {tuple(w[i:i + 3]) for i in range(len(w) - 2)} if len(w) >= 3 else ({tuple(w)} if w else set())

    df = read_records(shared("quality_cherry_alpaca_ifd", "cherry_alpaca_5_percent.jsonl"))
    prompts, responses = message_text(df, "prompt"), message_text(df, "response")
    want = [len(grams(r) & grams(p)) / len(grams(r)) if grams(r) else 0.0 for p, r in zip(prompts, responses)]
    assert prompt_copy(prompts, responses).to_list() == want
    zh = prompt_copy(pl.Series(["请写一首关于秋天的诗。"]), pl.Series(["请写一首关于秋天的诗，谢谢。"]))
    assert zh.to_list() == [0.8]
    kept, rejected = Heuristics(min_response_words=1).split(rows(("请写一首关于秋天的诗。", "请写一首关于秋天的诗吧。")))  # 8 of 9
    assert rejected["reason"].to_list() == ["response repeats the instruction"]
