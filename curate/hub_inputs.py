"""Hugging Face Hub datasets as recipe inputs.

    inputs:
      - path: tatsu-lab/alpaca                  # owner/name: a Hub dataset unless a local path of that name exists
      - {path: HuggingFaceH4/ultrachat_200k, split: train_sft, revision: main, config: default}
      - path: hf://datasets/owner/name@v1.0/data/*.parquet   # a revision and files inside the repo

The dataset is read with `datasets` in streaming mode, a part's rows at a time as Arrow tables, so
nothing but what is read is held and the datasets cache is not filled with the whole dataset
(`limit` stops the download early). The tables go through the same mapping as local files
(curate.io.to_records). The revision is pinned to the commit sha it names when the run starts,
and that sha, with the repo, config, split and files, is the input's identity in the run's step
hashes (`HubSource.identity`): a dataset that changed on the Hub reruns the work, one that did not
is reused. `HF_ENDPOINT`, `HF_TOKEN` and the HF cache variables are huggingface_hub's own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import polars as pl

from curate.errors import CurateError

# hf://datasets/<owner>/<name>[@<revision>][/<files in the repo>], as fsspec, polars and datasets write it
HUB_URL = re.compile(r"hf://datasets/(?P<repo>[^/@]+/[^/@]+)(?:@(?P<revision>[^/]+))?(?:/(?P<files>.*))?")
# owner/name as the Hub spells repository ids
REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
# a path ending so is a local file that is missing, never a Hub dataset
FILE_SUFFIXES = (".jsonl", ".json", ".ndjson", ".parquet", ".csv", ".tsv", ".txt", ".gz", ".yaml", ".yml")


@dataclass
class HubSource:
    """One Hub input: the repository, the revision as written (None: the default branch) and,
    once `open`ed, the commit sha it named then, the config and the split read."""

    repo: str
    revision: str | None = None
    files: str | None = None  # a file or glob inside the repo (hf:// paths)
    config: str | None = None
    split: str | None = None
    sha: str | None = None

    @property
    def identity(self) -> dict[str, str | None]:
        """What the step hashes take for this input: a new commit, config, split or file pattern reruns."""
        return {"hub": self.repo, "sha": self.sha, "config": self.config, "split": self.split, "files": self.files}

    @property
    def name(self) -> str:
        """The rows' default source: the dataset's name without its owner."""
        return self.repo.split("/", 1)[1]

    @property
    def origin(self) -> str:
        """How errors and rejects name it: hf://datasets/owner/name@sha, config and split."""
        at = f"@{self.sha[:12]}" if self.sha else (f"@{self.revision}" if self.revision else "")
        return f"hf://datasets/{self.repo}{at}{'/' + self.files if self.files else ''} [{self.config}/{self.split}]"


def hub_source(path: str, local: Path | None = None, where: str = "path") -> HubSource | None:
    """The Hub dataset an input path names, or None for a local one: `hf://datasets/...`, or
    `owner/name` when `local` (the path resolved on this machine) does not exist and the path
    does not end like a data file. Another hf:// path is an error naming `where`."""
    found = HUB_URL.fullmatch(path)
    if found:
        return HubSource(found["repo"], found["revision"], found["files"] or None)
    if path.startswith("hf://"):
        raise CurateError(f"{where}: {path!r} is not a Hub dataset path: write hf://datasets/owner/name"
                          "[@revision][/files in the repo], or owner/name")
    if local is not None and local.exists():
        return None
    if REPO_ID.fullmatch(path) and not path.lower().endswith(FILE_SUFFIXES):
        return HubSource(path)
    return None


def hub_dataset_id(path: str, local: Path | None = None) -> str | None:
    """The Hub dataset id (owner/name) an input path reads (`hub_source`), or None for a local one."""
    src = hub_source(path, local)
    return src.repo if src else None


def read_hub(src: HubSource, inp, where: str, rows: int) -> Iterator[pl.DataFrame]:
    """An input's rows from the Hub as frames of at most `rows` rows: `open_hub` now (its errors
    before anything is read), then `scan_hub` as the frames are taken. `inp` is the recipe's
    InputConfig (revision, config, split, limit)."""
    stream = open_hub(src, inp.revision, inp.config, inp.split, where)
    return scan_hub(stream, rows, inp.limit, src.origin)


def open_hub(src: HubSource, revision: str | None, config: str | None, split: str | None, where: str):
    """Resolve `src` (the revision to a commit sha, the config and the split) and return the
    streaming split to read. Errors name the recipe key (`where`: "recipe.yaml: inputs[0]") and
    what the Hub has, before anything is read or written."""
    import datasets
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    if src.revision and revision and src.revision != revision:
        raise CurateError(f"{where}.revision: {revision!r}, but the path names revision {src.revision!r}; give one")
    src.revision = src.revision or revision
    if constants.HF_HUB_OFFLINE:
        raise CurateError(f"{where}.path: {src.repo!r} is a Hub dataset, and HF_HUB_OFFLINE is set; unset it to "
                          "read from the Hub, or give a local file")
    try:
        info = HfApi().dataset_info(src.repo, revision=src.revision)
    except RevisionNotFoundError:
        raise CurateError(f"{where}.revision: no revision {src.revision!r} of the Hub dataset {src.repo!r}") from None
    except RepositoryNotFoundError:
        raise CurateError(f"{where}.path: {src.repo!r}: no such file or folder here, and no dataset {src.repo!r} on "
                          f"the Hub ({constants.ENDPOINT}; a private or gated one needs HF_TOKEN)") from None
    except (HfHubHTTPError, OSError) as exc:
        raise CurateError(f"{where}.path: cannot reach the Hub for {src.repo!r} ({constants.ENDPOINT}): "
                          f"{_first_line(exc)}") from None
    src.sha = info.sha
    try:
        splits = datasets.load_dataset(src.repo, name=config, revision=src.sha, data_files=src.files, streaming=True)
    except ValueError as exc:
        if config is not None and "BuilderConfig" in str(exc):
            names = re.search(r"Available: (.*)", str(exc))
            raise CurateError(f"{where}.config: the Hub dataset {src.repo!r} has no config {config!r}"
                              + (f"; its configs are {names.group(1)}" if names else "")) from None
        raise CurateError(f"{where}: cannot read the Hub dataset {src.repo!r}: {_first_line(exc)}") from None
    except (FileNotFoundError, OSError) as exc:  # datasets' DatasetNotFoundError, files matching nothing
        raise CurateError(f"{where}.path: cannot read the Hub dataset {src.repo!r}: {_first_line(exc)}") from None
    if not isinstance(splits, dict):
        splits = {split or "train": splits}
    names = list(splits)
    if split is None:
        if "train" not in names and len(names) > 1:
            raise CurateError(f"{where}.split: the Hub dataset {src.repo!r} has splits {names} and none is 'train'; "
                              "name one")
        split = "train" if "train" in names else names[0]
    elif split not in names:
        raise CurateError(f"{where}.split: the Hub dataset {src.repo!r} has no split {split!r}; its splits are {names}")
    stream = splits[split]
    src.config, src.split = config or stream.info.config_name, split
    return stream


def scan_hub(stream, rows: int, limit: int | None, origin: str) -> Iterator[pl.DataFrame]:
    """The rows of an opened split as polars frames of at most `rows` rows (the first `limit`)."""
    seen = 0
    try:
        for table in stream.with_format("arrow").iter(batch_size=min(rows, limit or rows)):
            if limit is not None and seen + table.num_rows > limit:
                table = table.slice(0, limit - seen)
            if table.num_rows:
                yield pl.from_arrow(table)
            seen += table.num_rows
            if limit is not None and seen >= limit:
                return
    except (OSError, ValueError) as exc:
        raise CurateError(f"{origin}: cannot read: {_first_line(exc)}") from None
    if not seen:
        raise CurateError(f"{origin}: the split is empty (no rows)")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
