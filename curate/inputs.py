"""A recipe's inputs, read once and checked whole before the run writes anything.

Each input is scanned a part's worth of rows at a time (curate.io.scan_table), mapped onto records
and split into valid and invalid rows (curate.records.split_invalid); errors name the file and row
as if the file had been read whole. The rows wait in memory while they fit in one part, and in
unnamed temporary files beyond that (gone when the run ends or dies), so memory does not grow with
the inputs and nothing is written to the output folder before every input has been read. The run
then takes them as parts of `part_rows` valid rows, every part with every input's columns.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator

import polars as pl

from curate.concurrency import map_in_order
from curate.errors import CurateError
from curate.hub_inputs import hub_source, read_hub
from curate.io import scan_table, to_records
from curate.shapes import RESPONSE_COLUMNS
from curate.records import concat, split_invalid
from curate.recipe import Recipe, check_output_columns

log = logging.getLogger(__name__)


def as_rejects(rejected: pl.DataFrame | None, step: str) -> pl.DataFrame:
    """Give every dropped row its `step`, a `reason` and a `detail` column (possibly null)."""
    if rejected is None:
        return pl.DataFrame(schema={"step": pl.String, "reason": pl.String, "detail": pl.String})
    if "reason" not in rejected.columns:
        raise CurateError(f"step {step} returned rejects without a 'reason' column")
    if "detail" not in rejected.columns:
        rejected = rejected.with_columns(pl.lit(None, dtype=pl.String).alias("detail"))
    return rejected.with_columns(pl.lit(step).alias("step"))


def reason_counts(rejected: pl.DataFrame | dict) -> dict[str, int]:
    """Dropped rows per reason, most first (ties in name order: group_by's order varies from run to
    run, and the card must not)."""
    if isinstance(rejected, pl.DataFrame):
        if rejected.height == 0:
            return {}
        rejected = dict(rejected.group_by("reason").len().iter_rows())
    return dict(sorted(rejected.items(), key=lambda kv: (-kv[1], kv[0])))


class _Frames:
    """Frames in order: in memory while they hold at most `rows` rows, then in unnamed temporary files."""

    def __init__(self, rows: int):
        self.rows, self.height = rows, 0
        self.memory: list[pl.DataFrame] = []
        self.files: list[Any] = []
        self.schemas: list[pl.Schema] = []

    def add(self, df: pl.DataFrame) -> None:
        self.height += df.height
        self.schemas.append(df.schema)
        self.memory.append(df)
        if self.height > self.rows or self.files:
            for frame in self.memory:
                f = tempfile.TemporaryFile()
                frame.write_ipc(f, compression="uncompressed")  # lz4 cost 0.33 s per 100k rows for 1.5x
                self.files.append(f)
            self.memory = []

    def __iter__(self) -> Iterator[pl.DataFrame]:
        if not self.files:
            yield from self.memory
            return
        for f in self.files:
            f.seek(0)
            yield pl.read_ipc(f)

    def schema(self) -> pl.Schema:
        return concat([pl.DataFrame(schema=s) for s in self.schemas]).schema

    def close(self) -> None:
        for f in self.files:
            f.close()
        self.files, self.memory = [], []


@dataclass
class Inputs:
    """The inputs of a run, read and checked (`read_inputs`); `parts()` gives them to the run."""

    part_rows: int
    valid: _Frames
    rejected: _Frames
    info: dict[str, Any] = field(default_factory=dict)  # the funnel's "inputs" row
    # what identifies each Hub input beyond its rows (curate.hub_inputs.HubSource.identity), for the step hashes
    identities: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return self.valid.height

    def columns(self) -> list[str]:
        return list(self.valid.schema())

    def parts(self) -> Iterator[tuple[pl.DataFrame, pl.DataFrame]]:
        """(valid rows, rejected rows) of each part: `part_rows` valid rows, every input's columns; the
        rejected rows go with the part being filled when they were read. Inputs that fit in one
        part are one part, concatenated as they were read."""
        if self.rows <= self.part_rows:
            yield concat(list(self.valid)), concat(list(self.rejected)) if self.rejected.schemas else as_rejects(None, "inputs")
            return
        schema = self.valid.schema()
        buffer: list[pl.DataFrame] = []
        pending: list[pl.DataFrame] = []
        held = 0
        for valid, rejected in zip(self.valid, self.rejected):
            pending.append(rejected)
            buffer.append(pl.concat([pl.DataFrame(schema=schema), valid], how="diagonal_relaxed"))
            held += valid.height
            while held >= self.part_rows:
                whole = pl.concat(buffer)
                yield whole.head(self.part_rows), concat(pending)
                rest = whole.slice(self.part_rows)
                buffer, pending, held = [rest], [], rest.height
        if held or pending:
            yield pl.concat(buffer) if buffer else pl.DataFrame(schema=schema), concat(pending)

    def close(self) -> None:
        self.valid.close()
        self.rejected.close()


def _hint_unread_responses(recipe: Recipe, inp, i: int, origin: str, valid: int, answered: int,
                           columns: list[str]) -> None:
    """Warn when an input's rows came without responses although a column could hold them: GSM8K's
    `answer` is read as each row's final answer (for answer checks), and a recipe that filters
    responses would then drop every row as "empty response". Not for recipes whose steps call a
    teacher (generators write the responses; prompts with answers are their input)."""
    if valid and not answered and inp.response is None and "answer" in columns \
            and not any(step.needs_llm for step in recipe.steps):
        log.warning("%s: no row has a response (no column named %s), and column 'answer' is read as each row's "
                    "final answer, for answer checks. If 'answer' holds the responses, say so: inputs[%d].response: "
                    "answer in the recipe, or -o inputs.%d.response=answer", origin, "/".join(RESPONSE_COLUMNS), i, i)


def read_inputs(recipe: Recipe, part_rows: int, workers: int = 1) -> Inputs:
    """Read and check every input before anything is written (bad input leaves no trace); `workers`
    frames are mapped and checked at once (the file is still read in order, on this thread)."""
    started = time.time()
    inputs = Inputs(part_rows, _Frames(part_rows), _Frames(part_rows))
    dropped: Counter = Counter()
    rows_in = 0
    try:
        for i, inp in enumerate(recipe.config.inputs):
            where = f"{recipe.path or 'recipe'}: inputs[{i}]"
            path = recipe.resolve(inp.path)
            hub = hub_source(inp.path, path, f"{where}.path")
            if hub is not None:
                tables, origin, source = read_hub(hub, inp, where, part_rows), hub.origin, hub.name
                inputs.identities.append(hub.identity)
            else:
                if not path.exists():
                    raise CurateError(f"{where}.path {inp.path!r}: no such file or folder "
                                      f"(looked in the recipe's folder {recipe.base_dir} and the working directory)")
                for key in ("split", "config", "revision"):
                    if getattr(inp, key) is not None:
                        raise CurateError(f"{where}.{key}: only Hub datasets take it; {inp.path!r} is a local file or folder")
                tables, origin, source = scan_table(path, part_rows, inp.limit), str(path), path.name.split(".")[0]
            read = valid = 0
            reasons: Counter = Counter()

            def numbered(tables=tables):
                first = 0
                for raw in tables:
                    yield first, raw
                    first += raw.height

            def check(item, inp=inp, origin=origin, source=source):
                first, raw = item
                records = to_records(raw, origin=origin, source=inp.source or source, prompt=inp.prompt,
                                     response=inp.response, system=inp.system, gold=inp.gold,
                                     source_column=inp.source_column, first_row=first)
                good, bad = split_invalid(records, origin, first)
                answered = good.select(pl.col("messages").list.eval(
                    pl.element().struct.field("role") == "assistant").list.any().sum()).item()
                return raw.height, good, as_rejects(bad, "inputs"), answered, raw.columns

            answered, columns = 0, []
            for height, good, bad, with_response, columns in map_in_order(check, numbered(), workers):
                inputs.valid.add(good)
                inputs.rejected.add(bad)
                read, valid = read + height, valid + good.height
                answered += with_response
                reasons.update(bad["reason"].to_list())
            _hint_unread_responses(recipe, inp, i, origin, valid, answered, columns)
            if reasons:
                listed = ", ".join(f"{r} {n}" for r, n in reason_counts(dict(reasons)).items())
                if not valid:
                    raise CurateError(f"{origin}: none of its {read} rows is a valid SFT row ({listed}); see "
                                      "`curate inspect` for its columns, or name them with inputs[].prompt/response")
                log.warning("%s: %d of %d rows rejected (%s); they are in rejects.parquet with step 'inputs'",
                            origin, read - valid, read, listed)
            rows_in += read
            dropped.update(reasons)
        if not recipe.config.inputs and not (recipe.steps and recipe.steps[0].is_source):
            raise CurateError(f"{recipe.path or 'recipe'}: no inputs given (add an `inputs:` list)")
        if not inputs.valid.schemas:
            inputs.valid.add(concat([]))  # a source step's empty start
        check_output_columns(recipe, inputs.columns())
    except BaseException:
        inputs.close()
        raise
    inputs.info = {"step": "inputs", "kind": "inputs", "rows_in": rows_in, "rows_out": inputs.rows,
                   "dropped": reason_counts(dict(dropped)), "seconds": round(time.time() - started, 3), "skipped": False}
    return inputs
