"""The end of a run: shuffle, split into train/validation, convert to the trainer's format, write.

Layout: `<out>/data/{train,validation}.{parquet,jsonl}`: the file names `datasets` recognises as
splits, so `datasets.load_dataset(OUT)` loads the folder with the right splits. When the kept rows
are more than a part (`engine.part_rows`), each split is written in shards of a part's rows,
`<out>/data/train-00000-of-00008.parquet` and so on (names `datasets` also reads as splits), in
the order one file would hold: the same seeded shuffle and stratified split, computed on each
row's number and stratify value alone, then one pass over the rows sends each to its shard
through unnamed temporary files (memory: a part and a shard).
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from curate.errors import CurateError
from curate.formats import DEFAULT_WRAPPER, Format, convert
from curate.io import write_jsonl, write_parquet


class OutputConfig(BaseModel):
    """`output:` in a recipe."""

    model_config = ConfigDict(extra="forbid")
    format: Format = "messages"
    files: list[Literal["parquet", "jsonl"]] = Field(default_factory=lambda: ["parquet", "jsonl"])
    reasoning: Literal["inline", "field", "drop"] = "inline"
    reasoning_wrapper: str = DEFAULT_WRAPPER
    validation: float | int = 0  # a fraction (< 1) or a row count (>= 1) held out
    stratify: str | None = "source"  # keep each source's share the same in both splits (checked against
    # the data's columns once the inputs are read: curate.recipe.check_output_columns)
    # more columns written beside the format's (id, source): input columns such as `category`, or
    # `source_id`, an input's own id; checked like `stratify`
    columns: list[str] = Field(default_factory=list)
    shuffle: bool = True

    @model_validator(mode="after")
    def _files_nonempty(self):
        if not self.files:
            raise ValueError("output.files needs at least one of parquet, jsonl")
        return self

    @field_validator("validation", mode="before")
    @classmethod
    def _not_a_boolean(cls, value):
        if isinstance(value, bool):  # YAML `true` would be read as the count 1
            raise ValueError("give a fraction below 1 (0.05) or a whole number of rows (200), not true/false")
        return value

    @field_validator("validation")
    @classmethod
    def _fraction_or_count(cls, value: float | int) -> float | int:
        """A float is a fraction in [0, 1); a row count is written as a whole number. 1.0 could
        mean one row or every row, so it is refused rather than guessed."""
        if isinstance(value, float) and math.isfinite(value) and value >= 1:
            raise ValueError(f"{value}: a fraction must be below 1 and a row count is a whole number (1.0 could "
                             "mean one row or all of them): write 1 for one row, or a fraction such as 0.05")
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{value} is not a size: give a fraction in [0, 1) or a whole number of rows")
        return value

    @field_validator("reasoning_wrapper")
    @classmethod
    def _wrapper_keeps_both(cls, wrapper: str) -> str:
        missing = [p for p in ("{reasoning}", "{answer}") if p not in wrapper]
        if missing:
            raise ValueError(f"the wrapper must hold {' and '.join(missing)}: the last answer is written as the "
                             f"wrapper with both filled in (default {DEFAULT_WRAPPER!r})")
        return wrapper


def split(df: pl.DataFrame, cfg: OutputConfig, seed: int) -> dict[str, pl.DataFrame]:
    """{"train": ..., "validation": ...}: shuffled with `seed`, validation stratified by `cfg.stratify`."""
    if cfg.shuffle and df.height:
        df = df.sample(fraction=1.0, shuffle=True, seed=seed)
    if not cfg.validation or df.height == 0:
        return {"train": df}
    want = cfg.validation if cfg.validation >= 1 else cfg.validation * df.height
    want = min(int(round(want)), df.height - 1)
    if cfg.stratify and cfg.stratify not in df.columns:  # checked at the start; a step dropped it since
        raise CurateError(f"output.stratify: the final data has no column {cfg.stratify!r} (a step left it out); its "
                          f"columns are {', '.join(df.columns)}")
    if cfg.stratify:
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


def write_splits(final, cfg: OutputConfig, out: Path, seed: int,
                 replaceable: Callable[[Path], bool] = lambda path: False, part_rows: int | None = None,
                 claim: Callable[[list[Path]], None] = lambda paths: None) -> dict[str, dict[str, str | list[str]]]:
    """Write every split in every file type; return {split: {filetype: relative path, or the list of
    shards}}. `final`: the kept rows, as a frame or as parts (curate.parts.Part); parts of more
    than `part_rows` rows in all are written in shards. `claim` lists files in the folder's
    manifest before they are written.

    A file in `<out>/data/` that this call did not write but an earlier run did (`replaceable`,
    the folder's manifest: e.g. the validation split of a run that held rows out) is removed, so
    `datasets.load_dataset(OUT)` does not load it as a split. No other file is ever removed.
    """
    from curate.parts import gather

    if isinstance(final, pl.DataFrame) or part_rows is None or sum(p.rows for p in final) <= part_rows:
        df = final if isinstance(final, pl.DataFrame) else gather(final)
        written = {}
        for name, part in split(df, cfg, seed).items():
            rows = convert(part, cfg.format, reasoning=cfg.reasoning, wrapper=cfg.reasoning_wrapper,
                           keep=("id", "source", *cfg.columns))
            for ext in cfg.files:
                path = out / "data" / f"{name}.{ext}"
                claim([path])
                (write_parquet if ext == "parquet" else write_jsonl)(rows, path)
                written.setdefault(name, {})[ext] = str(path.relative_to(out))
    else:
        written = _write_shards(final, cfg, out, seed, part_rows, claim)
    keep = {out / p for files in written.values() for entry in files.values()
            for p in ([entry] if isinstance(entry, str) else entry)}
    for stale in sorted((out / "data").glob("*")):
        if stale.is_file() and stale not in keep and replaceable(stale):
            stale.unlink()
    return written


CONVERTED = ("id", "source", "messages", "reasoning", "candidates")  # what `convert` reads


def _write_shards(parts: list, cfg: OutputConfig, out: Path, seed: int, shard_rows: int,
                  claim: Callable[[list[Path]], None]) -> dict[str, dict[str, list[str]]]:
    """`write_splits` for parts: `split` on each row's number (and stratify value) gives the order
    of every split; each row goes to its shard by one pass over the parts."""
    import pyarrow as pa

    from curate.parts import aligned, read_schema

    schema = read_schema(parts)
    columns = pl.Schema({c: t for c, t in schema.items() if c in CONVERTED or c in cfg.columns})
    strat = cfg.stratify if cfg.stratify in schema else None
    n = sum(p.rows for p in parts)
    compact = pl.DataFrame({"_curate_row": np.arange(n, dtype=np.int64)})
    if strat:
        compact = compact.with_columns(pl.concat([aligned(p.read([strat]), pl.Schema({strat: schema[strat]}))[strat]
                                                  for p in parts]).alias(strat))
    # the order of one file: `split` shuffles by the number of rows and the seed alone
    order = {name: frame["_curate_row"].to_numpy() for name, frame in split(compact, cfg, seed).items()}
    del compact
    shard = np.full(n, -1, np.int32)  # each row's shard (numbered over the splits) and place in it
    place = np.zeros(n, np.int64)
    shards = []  # (split, index, count)
    for name, rows in order.items():
        count = max(1, -(-len(rows) // shard_rows))
        for s in range(count):
            chunk = rows[s * shard_rows: (s + 1) * shard_rows]
            shard[chunk], place[chunk] = len(shards), np.arange(len(chunk))
            shards.append((name, s, count))
    reasoning = "reasoning" in columns and any(p.read(["reasoning"])["reasoning"].null_count() < p.rows
                                               for p in parts if "reasoning" in read_schema([p]))
    files = [tempfile.TemporaryFile() for _ in shards]
    writers: list = [None] * len(shards)
    target = None  # the arrow schema every shard's rows are written with
    try:
        lo = 0
        for p in parts:
            df = aligned(p.read([c for c in columns if c in read_schema([p])]), columns).with_columns(
                pl.Series("_curate_place", place[lo: lo + p.rows]), pl.Series("_curate_shard", shard[lo: lo + p.rows]))
            lo += p.rows
            for (k,), rows in df.partition_by("_curate_shard", as_dict=True).items():
                table = rows.drop("_curate_shard").to_arrow()
                target = target or table.schema
                if writers[k] is None:
                    writers[k] = pa.ipc.new_stream(files[k], target)
                writers[k].write_table(table.cast(target))
        for w in writers:
            if w is not None:
                w.close()
        written: dict[str, dict[str, list[str]]] = {}
        for k, (name, s, count) in enumerate(shards):
            files[k].seek(0)
            rows = pl.from_arrow(pa.ipc.open_stream(files[k]).read_all()) if writers[k] is not None else pl.DataFrame(schema=columns)
            files[k].close()
            rows = rows.sort("_curate_place").drop("_curate_place", strict=False)
            rows = convert(rows, cfg.format, reasoning=cfg.reasoning, wrapper=cfg.reasoning_wrapper,
                           keep=("id", "source", *cfg.columns))
            if cfg.reasoning == "field" and reasoning and "reasoning" not in rows.columns:  # as in the whole split
                extra = [c for c in ("id", "source") if c in rows.columns]
                rows = rows.select(*extra, pl.lit(None, dtype=pl.String).alias("reasoning"), pl.exclude(extra))
            for ext in cfg.files:
                path = out / "data" / f"{name}-{s:05d}-of-{count:05d}.{ext}"
                claim([path])
                (write_parquet if ext == "parquet" else write_jsonl)(rows, path)
                written.setdefault(name, {}).setdefault(ext, []).append(str(path.relative_to(out)))
    finally:
        for f in files:
            f.close()
    return written
