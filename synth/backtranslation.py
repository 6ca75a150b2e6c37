"""`backtranslation`: turn unlabelled documents into (instruction, response) rows by writing the
instruction each document segment answers.

Instruction backtranslation (Humpback; Li et al. 2023, "Self-Alignment with Instruction
Backtranslation", arXiv 2308.06259): a backward model writes, for each unlabelled web passage, an
instruction the passage would answer (self-augmentation); the model then rates each (instruction,
passage) pair and only the high-rated ones are kept (self-curation, 1-5 scale, keep >= 4 or = 5).

This step is the self-augmentation half. Each input row's user text (`message_text(df, "prompt")`:
a `text` column of jsonl/parquet, a .txt file or a folder of .txt files, or any column named as
`prompt` in the recipe's input) is one document. It is cut into segments of at most `max_words`
words on paragraph boundaries (adjacent paragraphs are packed together; a paragraph longer than
`max_words` is cut between sentences); segments shorter than `min_words` go to rejects ("segment too
short"). The teacher writes the instruction; the output row is user = instruction, assistant = the
segment verbatim, source "backtranslation/<input source>", with `bt_document` (input row id) and
`bt_segment` (index in the document). Outputs that do not parse as an instruction go to rejects with
the raw text: empty, too short, too long or cut at max_tokens, copied from the document, or
mentioning the prompt itself ("the passage", "the user": `scaffold_phrases`, as Evol-Instruct's
elimination does for copied prompt words). The model's wrapping (a "Here is the instruction:" line,
a label, 'The user asked, "..."') is removed first.

Self-curation is the next step of a recipe, the `judge` filter; Humpback's rule is `method: rating,
scale: 5, min_score: 4`, which grades how well the response (the segment) answers the instruction.
The embedded demo (recipes/backtranslation.yaml) uses the judge's expected-score mode with a low
threshold instead, since the 135M judge writes no readable score; its comments say why and how to
go back. Humpback's own model is fine-tuned in both directions first; here the teacher is used as
it is, through the LLM layer only.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import polars as pl
from pydantic import Field, model_validator

from curate.llm import Request, Response
from curate.records import message_text
from curate.steps import Context, RecipePath
from synth.base import Asked, PromptTemplate, Reject, RowGenerator, build_rows

_PARAGRAPH = re.compile(r"\n\s*\n")
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[A-Z0-9])")
_LABEL = re.compile(r"^[\s#*\"'`]*(?:(?:the\s+)?(?:user'?s?\s+)?(?:instruction|question|request|prompt|query)"
                    r"|user(?:\s+asked)?)[\s#*]*:[\s#*]*", re.IGNORECASE)
_WORDS = re.compile(r"\w+")
_PREAMBLE = re.compile(r"\b(?:instructions?|questions?|requests?|prompts?|query)\b|^\W*here\b", re.IGNORECASE)
# 'The user asked, "How do tides work?"' -> the quoted question
_REPORTED = re.compile(r"^(?:the\s+)?user\s+(?:asked|asks|requested|requests|wrote|writes|said|says|wants to know)"
                       r"(?:\s+you)?\s*[,:]?\s*[\"\u201c](.+)[\"\u201d]\s*\.?$", re.IGNORECASE | re.DOTALL)
# Words of the prompt: an instruction that mentions them depends on text the row will not contain.
SCAFFOLD_PHRASES = ["the passage", "this passage", "provided passage", "original passage", "above passage",
                    "the text above", "the user", "user's", "the assistant"]


def n_words(text: str) -> int:
    return len(text.split())


def _split_long(paragraph: str, max_words: int) -> list[str]:
    """A paragraph longer than max_words as sentence-packed chunks; a sentence longer than
    max_words is cut between words (the only case where a segment ends mid-sentence)."""
    units: list[str] = []
    for sentence in _SENTENCE.split(paragraph):
        words = sentence.split()
        units += [" ".join(words[i:i + max_words]) for i in range(0, len(words), max_words)] if len(words) > max_words else [sentence]
    return _pack(units, max_words, " ")


def _pack(units: list[str], max_words: int, sep: str) -> list[str]:
    chunks: list[list[str]] = []
    size = 0
    for u in units:
        w = n_words(u)
        if chunks and size + w <= max_words:
            chunks[-1].append(u)
            size += w
        else:
            chunks.append([u])
            size = w
    return [sep.join(c) for c in chunks]


def segment(text: str, max_words: int) -> list[str]:
    """Segments of at most max_words words: whole paragraphs packed greedily in order; a paragraph
    that alone exceeds max_words is cut between sentences. Whitespace inside paragraphs is kept."""
    segments: list[str] = []
    run: list[str] = []
    for para in (p.strip() for p in _PARAGRAPH.split(text or "")):
        if not para:
            continue
        if n_words(para) > max_words:
            segments += _pack(run, max_words, "\n\n") if run else []
            run = []
            segments += _split_long(para, max_words)
        else:
            run.append(para)
    segments += _pack(run, max_words, "\n\n") if run else []
    return segments


def strip_label(text: str) -> str:
    """The instruction without the model's wrapping: a short first line ending in ':' ("Here's the
    user's instruction:"), a leading label ("Instruction:"), reported speech ('The user asked,
    "..."') and wrapping quotes. Nothing else is changed."""
    text = (text or "").strip()
    first, sep, rest = text.partition("\n")
    if sep and first.rstrip().endswith(":") and len(first.split()) <= 10 and rest.strip() and _PREAMBLE.search(first):
        text = rest.strip()
    text = _LABEL.sub("", text, count=1).strip()
    reported = _REPORTED.match(text)
    if reported:
        text = reported.group(1).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`":
        text = text[1:-1].strip()
    return text


def copy_share(instruction: str, document: str, n: int = 4) -> float:
    """The share of the instruction's word n-grams that occur in the document (0 when it has none)."""
    iw, dw = _WORDS.findall(instruction.lower()), _WORDS.findall(document.lower())
    grams = {tuple(iw[i:i + n]) for i in range(len(iw) - n + 1)}
    if not grams:
        return 0.0
    doc = {tuple(dw[i:i + n]) for i in range(len(dw) - n + 1)}
    return len(grams & doc) / len(grams)


def instruction_failure(instruction: str, segment_text: str, finish_reason: str | None, *, min_words: int,
                        max_words: int, max_copy: float, scaffold: list[str] = SCAFFOLD_PHRASES) -> str | None:
    """Why a parsed instruction is not usable (None when it is)."""
    if not _WORDS.search(instruction):
        return "instruction empty"
    if finish_reason == "length" or n_words(instruction) > max_words:
        return "instruction too long"
    if n_words(instruction) < min_words:
        return "instruction too short"
    if copy_share(instruction, segment_text) > max_copy:
        return "instruction copies the document"
    low = instruction.lower()
    if any(p.lower() in low for p in scaffold):
        return "instruction copies prompt words"
    return None


class Backtranslation(RowGenerator):
    """Write, for each document segment, the instruction it answers; the segment is the response.
    A RowGenerator whose units are the segments: each is asked about on its own."""

    kind: ClassVar[str] = "backtranslation"
    code_version: ClassVar[int] = 1
    max_words: int = Field(300, ge=1)  # segment length bound
    min_words: int = Field(40, ge=1)  # shorter segments are dropped ("segment too short")
    template: RecipePath | None = None  # prompt file with {document}; default synth/prompts/backtranslation_instruction.txt
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(128, ge=1)
    seed: int | None = None  # default: the recipe's seed
    min_instruction_words: int = Field(3, ge=1)
    max_instruction_words: int = Field(80, ge=1)
    max_copy: float = Field(0.5, ge=0, le=1)  # drop if this share of the instruction's 4-grams is in the segment
    scaffold_phrases: list[str] = Field(default_factory=lambda: list(SCAFFOLD_PHRASES))

    @model_validator(mode="after")
    def _bounds(self):
        if self.min_words > self.max_words:
            raise ValueError(f"min_words ({self.min_words}) must not exceed max_words ({self.max_words})")
        return self

    def instruction_prompt(self) -> PromptTemplate:
        """The prompt that asks for the instruction a segment answers ({document})."""
        return PromptTemplate(self.template, "backtranslation_instruction")

    def files(self) -> list[str]:
        return [*super().files(), str(self.instruction_prompt().path)]

    def prompt_template(self) -> str:
        return self.instruction_prompt().text

    def units(self, batch: pl.DataFrame) -> pl.DataFrame:
        """One row per document segment: the segment as the answer, the instruction still to write."""
        rows = [{"messages": [{"role": "assistant", "content": seg}], "source": f"{self.kind}/{source}",
                 "bt_document": doc_id, "bt_segment": i}
                for doc_id, source, doc in zip(batch["id"].to_list(), batch["source"].to_list(),
                                                message_text(batch, "prompt").to_list())
                for i, seg in enumerate(segment(doc, self.max_words))]
        return build_rows(rows)

    def requests(self, row: dict[str, Any], ctx: Context) -> list[Request] | Reject:
        seg = row["messages"][0]["content"]
        if n_words(seg) < self.min_words:
            return Reject("segment too short", f"{n_words(seg)} words")
        seed = ctx.seed if self.seed is None else self.seed
        return [Request.user(self.instruction_prompt().render(document=seg), max_tokens=self.max_tokens,
                             temperature=self.temperature, top_p=self.top_p, seed=seed)]

    def parse(self, row: dict[str, Any], request: Request, response: Response) -> dict[str, Any] | Reject:
        seg = row["messages"][0]["content"]
        instruction = strip_label(response.text or "")
        why = instruction_failure(instruction, seg, response.finish_reason, min_words=self.min_instruction_words,
                                  max_words=self.max_instruction_words, max_copy=self.max_copy,
                                  scaffold=self.scaffold_phrases)
        messages = [{"role": "user", "content": instruction or ""}, {"role": "assistant", "content": seg}]
        return Reject(why, response.text, messages=messages) if why else {"messages": messages}

    def batch_stats(self, asked: Asked, kept: pl.DataFrame) -> dict[str, Any]:
        return {"generation": {"documents": asked.rows_in, "segments": asked.rows.height,
                               "segments_too_short": len(asked.rejected), "generated": len(asked.requests),
                               "parsed": kept.height, "kept": kept.height}}
