"""The end of a run: shuffle, split into train/validation, convert to the trainer's format, write.

Layout: `<out>/data/{train,validation}.{parquet,jsonl}`: the file names `datasets` recognises as
splits, so `datasets.load_dataset(OUT)` loads the folder with the right splits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, model_validator

from curate.formats import DEFAULT_WRAPPER, Format, convert
from curate.io import write_jsonl, write_parquet


class OutputConfig(BaseModel):
    """`output:` in a recipe."""

    model_config = ConfigDict(extra="forbid")
    format: Format = "messages"
    files: list[Literal["parquet", "jsonl"]] = Field(default_factory=lambda: ["parquet", "jsonl"])
    reasoning: Literal["inline", "field", "drop"] = "inline"
    reasoning_wrapper: str = DEFAULT_WRAPPER
    validation: float | int = Field(0, ge=0)  # a fraction (< 1) or a row count (>= 1) held out
    stratify: str | None = "source"  # keep each source's share the same in both splits
    shuffle: bool = True

    @model_validator(mode="after")
    def _files_nonempty(self):
        if not self.files:
            raise ValueError("output.files needs at least one of parquet, jsonl")
        return self


def split(df: pl.DataFrame, cfg: OutputConfig, seed: int) -> dict[str, pl.DataFrame]:
    """{"train": ..., "validation": ...}: shuffled with `seed`, validation stratified by `cfg.stratify`."""
    if cfg.shuffle and df.height:
        df = df.sample(fraction=1.0, shuffle=True, seed=seed)
    if not cfg.validation or df.height == 0:
        return {"train": df}
    want = cfg.validation if cfg.validation >= 1 else cfg.validation * df.height
    want = min(int(round(want)), df.height - 1)
    if cfg.stratify and cfg.stratify in df.columns:
        # Largest-remainder apportionment: each group's validation rows in proportion to its size.
        sizes = df.group_by(cfg.stratify, maintain_order=True).len()
        exact = sizes["len"] * want / df.height
        base = exact.floor().cast(pl.Int64)
        extra = want - int(base.sum())
        order = (exact - base).arg_sort(descending=True)[:extra]
        quota = base.scatter(order, base.gather(order) + 1) if extra else base
        quotas = dict(zip(sizes[cfg.stratify].to_list(), quota.to_list()))
        rank = pl.int_range(pl.len()).over(cfg.stratify)
        is_val = df.select(rank < pl.col(cfg.stratify).replace_strict(quotas, return_dtype=pl.Int64)).to_series()
    else:
        is_val = pl.Series([i < want for i in range(df.height)])
    return {"train": df.filter(~is_val), "validation": df.filter(is_val)}


def write_splits(df: pl.DataFrame, cfg: OutputConfig, out: Path, seed: int,
                 replaceable: Callable[[Path], bool] = lambda path: False) -> dict[str, dict[str, str]]:
    """Write every split in every file type; return {split: {filetype: relative path}}.

    A file in `<out>/data/` that this call did not write but an earlier run did (`replaceable`,
    the folder's manifest: e.g. the validation split of a run that held rows out) is removed, so
    `datasets.load_dataset(OUT)` does not load it as a split. No other file is ever removed.
    """
    written: dict[str, dict[str, str]] = {}
    for name, part in split(df, cfg, seed).items():
        rows = convert(part, cfg.format, reasoning=cfg.reasoning, wrapper=cfg.reasoning_wrapper)
        for ext in cfg.files:
            path = out / "data" / f"{name}.{ext}"
            (write_parquet if ext == "parquet" else write_jsonl)(rows, path)
            written.setdefault(name, {})[ext] = str(path.relative_to(out))
    keep = {out / p for files in written.values() for p in files.values()}
    for stale in sorted((out / "data").glob("*")):
        if stale.is_file() and stale not in keep and replaceable(stale):
            stale.unlink()
    return written
