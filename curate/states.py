"""What a global (STATE) step sees of the whole dataset: every row's compact state, asked through
`States` (a group-by, a column in row order) so that an engine answers where the state is
(polars here, Ray Data tasks in curate.engines.ray); rows read back by number (`Fetch`); and the
step's answer for every row (`Resolved`). The contract itself is in curate.steps."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import polars as pl

# Rows read back by number, for a STATE step's `resolve`: fetch(rows, columns) yields frames holding
# a `row` column (the row numbers, ascending) and those of `columns` the data has, for the given
# rows (sorted numbers); for no rows it yields one empty frame, so the columns' types are known.
Fetch = Callable[[np.ndarray, list[str]], Iterator[pl.DataFrame]]


# A STATE step's function over groups (`States.groups`): given a frame of rows in which every group
# of equal `key` is whole, the rows' results (any rows, same columns whatever the frame).
GroupFn = Callable[[pl.DataFrame], pl.DataFrame]


class States:
    """Every row's state of a STATE step (row i: the i-th row of the step's input), as the engine
    holds it: `resolve` asks it what it needs of the whole dataset, and the engine answers where
    the state is (PolarsStates here; curate.engines.ray.RayStates with Ray Data stages on a
    cluster). The questions are relational, so an engine may answer them anywhere: a group-by
    whose function sees each group whole, and a column read in row order."""

    @property
    def rows(self) -> int:
        raise NotImplementedError

    @property
    def schema(self) -> pl.Schema:
        raise NotImplementedError

    def chunks(self, column: str) -> Iterator[np.ndarray]:
        """One column of every row, in row order, a chunk at a time (a fingerprint over all rows)."""
        raise NotImplementedError

    def groups(self, keys: list[str], fn: GroupFn, columns: list[str] = ()) -> pl.DataFrame:
        """The group-by: for each column of `keys` on its own, `fn` over frames with `row` (Int64,
        ascending), `key` (that column) and `columns`, in which every group of equal keys is whole;
        the results of every call, concatenated in no particular order (sort what needs an order).
        `fn` runs where the engine puts it: a module-level function (or a partial of one), so that
        another process can run it."""
        raise NotImplementedError


class PolarsStates(States):
    """`States` over a polars LazyFrame of every row's state, in this process (the local engine,
    and a STATE step run as one batch): each group-by is one call of `fn` over all rows."""

    def __init__(self, state: pl.LazyFrame):
        self.state = state

    @property
    def rows(self) -> int:
        return self.state.select(pl.len()).collect().item()

    @property
    def schema(self) -> pl.Schema:
        return self.state.collect_schema()

    def chunks(self, column: str) -> Iterator[np.ndarray]:
        yield self.state.select(column).collect().to_series().to_numpy()

    def groups(self, keys: list[str], fn: GroupFn, columns: list[str] = ()) -> pl.DataFrame:
        # one key column at a time: the memory of one column of keys, not of all of them
        return pl.concat([self.group(key, fn, columns) for key in keys])

    def group(self, key: str, fn: GroupFn, columns: list[str] = (), part: int = 0, partitions: int = 1) -> pl.DataFrame:
        """`fn` over the rows of one key column; with `partitions`, only over the rows whose key
        (an integer: a hash) is `part` modulo `partitions`, so that each group is whole in one of
        the partitions and each partition may be done apart (curate.engines.ray)."""
        frame = self.state.select(pl.col(key).alias("key"), *columns).with_row_index("row")
        if partitions > 1:
            frame = frame.filter(pl.col("key") % partitions == part)
        return fn(frame.with_columns(pl.col("row").cast(pl.Int64)).collect())


@dataclass
class Resolved:
    """A STATE step's answer for the whole dataset, from `resolve`: results per row, keyed by the
    row's number (its position in the step's input, from 0) in column `row`, for the rows that need
    one (the others get the step's defaults in `apply`); JSON values every batch needs (a
    fingerprint); the step's stats. Small enough to hand to every batch."""

    rows: pl.DataFrame
    shared: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)

    def between(self, lo: int, hi: int) -> "Resolved":
        """The results for rows lo..hi-1 (`rows` is sorted by row)."""
        at = np.searchsorted(self.rows["row"].to_numpy(), [lo, hi]) if self.rows.height else [0, 0]
        return Resolved(self.rows.slice(int(at[0]), int(at[1] - at[0])), self.shared, self.stats)

    def aligned(self, rows: np.ndarray, columns: dict[str, pl.DataType]) -> pl.DataFrame:
        """`columns` of the results for `rows`, in that order; null where a row has none."""
        have = self.rows.select("row", *[pl.col(c) for c in columns if c in self.rows.columns])
        out = pl.DataFrame({"row": np.asarray(rows, np.int64)}).join(have, on="row", how="left", maintain_order="left")
        return out.select([(pl.col(c) if c in have.columns else pl.lit(None)).cast(t).alias(c) for c, t in columns.items()])


def frame_fetch(df: pl.DataFrame) -> Fetch:
    """A `Fetch` over an in-memory frame (a STATE step run as one batch)."""
    def fetch(rows: np.ndarray, columns: list[str]) -> Iterator[pl.DataFrame]:
        rows = np.asarray(rows, np.int64)
        have = [c for c in columns if c in df.columns]
        yield df.select(have)[rows].with_columns(pl.Series("row", rows)).select("row", *have)
    return fetch


