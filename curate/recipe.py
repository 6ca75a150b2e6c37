"""Recipes: YAML files validated against a schema before anything runs.

    name: quickstart
    seed: 0
    teacher: {backend: embedded}          # see curate.llm.teacher.TeacherConfig
    inputs:
      - {path: data/seeds.jsonl, source: quickstart-seeds}
    steps:
      - responses: {n: 1, max_tokens: 256}
      - minhash_dedup: {threshold: 0.8}
    output: {format: messages, files: [parquet, jsonl], validation: 0.05}
    validate: {fail_on_error: true, expectations: [{expect_column_values_to_not_be_null: {column: source}}]}
                                          # great-expectations; see curate.report.validate

Relative file paths in a recipe (inputs, `cache`, `teacher.model_path`, `teacher.batch.folder`,
and step settings typed `RecipePath`: eval sets, anchor files, prompt templates, model files) are
read from the recipe's folder, so `data/seeds.jsonl` beside the recipe works from any working
directory; a path that is not there but exists from the working directory (e.g. given with `-o`
on the command line) is taken from there (`resolve_path`).

Unknown keys and wrong types are errors naming the key path (`steps[1].minhash_dedup.treshold`).
Overrides from the command line (`-o teacher.model=X`, `-o steps.1.minhash_dedup.threshold=0.9`,
or by step kind: `-o steps.minhash_dedup.threshold=0.9`) are applied before validation.
YAML anchors and aliases (`&base` / `*base`) work, but may add at most MAX_ALIAS_NODES values to
what is written, so a few lines cannot expand into billions (`load_yaml`); each use of an alias is
its own copy, so an override changes one place only.
"""

from __future__ import annotations

import copy
import logging
import os
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from curate.errors import CurateError
from curate.textfiles import read_text
from curate.licenses import recipe_licenses
from curate.llm.teacher import TeacherConfig
from curate.formats import FORMAT_COLUMNS
from curate.output import OutputConfig
from curate.registry import step_class
from curate.report.validate import ValidateConfig, check_columns, check_declared, view_columns
from curate.steps import SEED_LIMIT, Filter, Step, path_settings

log = logging.getLogger(__name__)

# How many values YAML aliases may add to a document beyond the ones written in it.
MAX_ALIAS_NODES = 100_000


class InputConfig(BaseModel):
    """One input dataset; column names map it onto records when its shape is not detected. `path`
    is a local file or folder, or a Hub dataset (`owner/name`, `hf://datasets/owner/name[@rev][/files]`)
    whose `split`, `config` and `revision` may be given (curate.hub_inputs)."""

    model_config = ConfigDict(extra="forbid")
    path: str
    split: str | None = None  # Hub datasets: default "train", or the only split
    config: str | None = None  # Hub datasets: the dataset's configuration (subset)
    revision: str | None = None  # Hub datasets: a branch, tag or commit sha; default the main branch
    source: str | None = None
    prompt: str | None = None
    response: str | None = None
    system: str | None = None
    gold: str | None = None
    source_column: str | None = None  # each row's source is this column's value (`source` where it is empty)
    limit: int | None = Field(None, ge=1)
    license: str | None = None  # of this input, listed in the dataset card


class EngineConfig(BaseModel):
    """`engine:` in a recipe: which engine runs it and how the run is cut into parts. Outputs do not
    depend on it (a run in one part and a run in many, local or on Ray, give the same rows), but
    memory does: the local engine holds about one part of rows at a time, plus the compact state of
    global steps. `engine: ray` is short for `engine: {name: ray}` (curate.engines.ray)."""

    model_config = ConfigDict(extra="forbid")
    name: Literal["local", "ray"] = "local"
    part_rows: int = Field(100_000, ge=1)  # rows per part (and per output shard, when the data is larger)
    # local: parts worked at once by steps that allow it (numpy and polars work, no model); each
    # holds its part in memory. Default: the machine's cores, at most 4.
    workers: int | None = Field(None, ge=1)
    # the parts every step writes under <out>/steps/ (the files the user keeps are compressed anyway):
    # uncompressed is the fastest (lz4 took 0.21 s a 100k-row part against 0.09 s); at 1M Alpaca-style
    # rows they take 4.3 GB uncompressed, 2.9 GB lz4, ~2 GB zstd (bench/README.md). The choice changes
    # no row and redoes no step.
    part_compression: Literal["uncompressed", "lz4", "zstd"] = "uncompressed"
    # ray: the cluster to join (`ray start --head` prints it; else RAY_ADDRESS, else a Ray started for the run)
    address: str | None = None
    # ray: teacher actors (each loads the model once): default one per `actor_gpus` GPUs, or per
    # `actor_cpus` CPUs without GPUs; 1 for backend openai (each actor keeps max_concurrency requests in flight)
    actors: int | None = Field(None, ge=1)
    actor_cpus: float = Field(1.0, ge=0)
    actor_gpus: float = Field(0.0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _engine_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _ray_settings_need_ray(self) -> "EngineConfig":
        """Ray's settings on the local engine would silently mean nothing."""
        given = [k for k in ("address", "actors", "actor_cpus", "actor_gpus") if k in self.model_fields_set]
        if self.name == "local" and given:
            raise ValueError(f"engine.{given[0]} applies to the ray engine only (engine.name: ray, or --engine ray)")
        if self.name == "ray" and "workers" in self.model_fields_set:
            raise ValueError("engine.workers applies to the local engine only (on Ray, tasks take the cluster's CPUs)")
        return self

    def local_workers(self) -> int:
        """Parts the local engine works at once."""
        return self.workers or max(1, min(4, os.cpu_count() or 1))


class RecipeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    seed: int = Field(0, ge=0, lt=SEED_LIMIT)
    license: str | None = None  # of the output data, for the dataset card; checked by curate/licenses.py
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    inputs: list[InputConfig] = Field(default_factory=list)
    steps: list[dict[str, dict[str, Any] | None]] = Field(default_factory=list)
    output: OutputConfig = Field(default_factory=OutputConfig)
    cache: str | None = None  # response cache file; default <out>/cache/llm.sqlite
    engine: EngineConfig = Field(default_factory=EngineConfig)
    # `validate:` (curate.report.validate); not named `validate`, which is a BaseModel method
    checks: ValidateConfig = Field(default_factory=ValidateConfig, alias="validate")

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        """The name is the default run folder, runs/<name>: one plain folder name, so no recipe can
        send its output outside runs/ (`../x`, `/tmp/x`) or into runs/ itself (`.`)."""
        if not PLAIN_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a plain folder name (letters, digits, '.', '_', '-'; starting with a "
                             "letter or digit; at most 100 characters): it names the run folder runs/<name>")
        return name


class Recipe:
    """A validated recipe: its config, its built steps, and the folder its relative paths start from."""

    def __init__(self, config: RecipeConfig, steps: list[Step], base_dir: Path, raw: dict, path: Path | None = None):
        self.config, self.steps, self.base_dir, self.raw, self.path = config, steps, base_dir, raw, path

    def resolve(self, rel: str) -> Path:
        return Path(resolve_path(rel, self.base_dir))


def resolve_path(rel: str, base_dir: Path) -> str:
    """Where a recipe's relative path points: the recipe's folder first; else the working
    directory if the file is there (a path typed on the command line); else it is left as given
    (it may be a model id, or a file a step creates)."""
    p = Path(rel).expanduser()
    if p.is_absolute():
        return str(p)
    if (base_dir / p).exists():
        return str(base_dir / p)
    return str(p)


def _resolve_settings(cls: type, params: dict, base_dir: Path) -> dict:
    """A copy of a step's settings with the RecipePath values resolved, also inside a nested step
    (best_of_n's `judge`)."""
    def fix(value: Any) -> Any:
        if isinstance(value, str):
            return resolve_path(value, base_dir)
        if isinstance(value, list):
            return [fix(v) for v in value]
        if isinstance(value, dict):
            return {k: fix(v) for k, v in value.items()}
        return value  # a wrong type: validation names it

    paths = path_settings(cls)
    out = {}
    for key, value in params.items():
        field = cls.model_fields.get(key)
        nested = field.annotation if field else None
        if key in paths:
            value = fix(value)
        elif isinstance(value, dict) and isinstance(nested, type) and issubclass(nested, BaseModel):
            value = _resolve_settings(nested, value, base_dir)
        out[key] = value
    return out


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    path = Path(path)
    if not path.exists():
        raise CurateError(f"{path}: recipe not found")
    if path.is_dir():
        raise CurateError(f"{path}: a folder; give the recipe's YAML file")
    text = read_text(path)
    try:
        raw = load_yaml(text, str(path))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise CurateError(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict):
        raise CurateError(f"{path}: a recipe must be a YAML mapping")
    if isinstance(raw.get("engine"), str):  # `engine: ray`, so that -o engine.part_rows=... adds to it
        raw["engine"] = {"name": raw["engine"]}
    for item in overrides:
        apply_override(raw, item)
    return build_recipe(raw, base_dir=path.parent, origin=str(path), path=path)


def load_yaml(text: str, where: str, lines: bool = True) -> Any:
    """Parse YAML with the safe loader, bounding what aliases expand to (`MAX_ALIAS_NODES`).

    The loader builds an alias as a reference to its anchor's object, so a few lines of aliases
    of aliases (a "billion laughs") load at once, then expand in validation, hashing and JSON
    into billions of values. The node graph is measured before anything is built. `where` names
    the text in errors, with `:line` when `lines`."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        _check_expansion(root, where, lines)
        return _unshared(loader.construct_document(root))
    except RecursionError:
        raise CurateError(f"{where}: the YAML is nested too deeply") from None
    finally:
        loader.dispose()


def _check_expansion(root: yaml.Node, where: str, lines: bool) -> None:
    sizes: dict[int, int] = {}  # id(node) -> values under it, aliases expanded
    open_nodes: set[int] = set()
    at = (lambda node: f"{where}:{node.start_mark.line + 1}") if lines else (lambda node: where)

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise CurateError(f"{at(node)}: a YAML alias refers to itself (it sits inside its own anchor)")
        open_nodes.add(key)
        if isinstance(node, yaml.SequenceNode):
            sizes[key] = 1 + sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            sizes[key] = 1 + sum(size(k) + size(v) for k, v in node.value)
        else:
            sizes[key] = 1
        open_nodes.discard(key)
        return sizes[key]

    total = size(root)
    if total - len(sizes) <= MAX_ALIAS_NODES:  # len(sizes): the values written
        return
    # Name the key whose value expands: follow the largest value down through mappings (and
    # through lists of mappings, such as `steps`).
    node, keypath = root, ""
    while True:
        if isinstance(node, yaml.MappingNode):
            options = [(f".{k.value}" if keypath else str(k.value), v) for k, v in node.value]
        elif isinstance(node, yaml.SequenceNode):
            options = [(f"[{i}]", c) for i, c in enumerate(node.value) if isinstance(c, yaml.MappingNode)]
        else:
            options = []
        label, child = max(options, key=lambda o: sizes[id(o[1])], default=(None, None))
        if child is None or sizes[id(child)] <= MAX_ALIAS_NODES:
            break
        node, keypath = child, keypath + label
    raise CurateError(f"{at(node)}: {keypath + ': ' if keypath else ''}YAML aliases expand this to {total:,} values, "
                      f"{total - len(sizes):,} more than written; at most {MAX_ALIAS_NODES:,} more are allowed")


def _unshared(value: Any) -> Any:
    """A copy in which each use of a YAML alias is its own object (the loader shares them)."""
    if isinstance(value, dict):
        return {k: _unshared(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unshared(v) for v in value]
    return value


def build_recipe(raw: dict, base_dir: Path = Path("."), origin: str = "<recipe>", path: Path | None = None) -> Recipe:
    """Validate `raw` and build its steps. `raw` is kept as written, less the credentials in URLs
    (for recipe.yaml and the card); the built config and steps hold the resolved paths and the URLs
    as given."""
    checked = copy.deepcopy(raw)
    teacher = checked.get("teacher")
    if isinstance(teacher, dict) and isinstance(teacher.get("model_path"), str):
        teacher["model_path"] = resolve_path(teacher["model_path"], base_dir)
    batch = teacher.get("batch") if isinstance(teacher, dict) else None
    if isinstance(batch, dict) and isinstance(batch.get("folder"), str):
        batch["folder"] = resolve_path(batch["folder"], base_dir)
    try:
        config = RecipeConfig.model_validate(checked)
    except ValidationError as exc:
        raise CurateError(f"{origin}: invalid recipe:\n{_format_errors(exc)}") from None
    steps = []
    for i, item in enumerate(config.steps):
        if len(item) != 1:
            raise CurateError(f"{origin}: steps[{i}]: each step is a mapping with one key, the step kind; got {list(item)}")
        (kind, params), = item.items()
        try:
            cls = step_class(kind)
        except CurateError as exc:
            raise CurateError(f"{origin}: steps[{i}]: {exc}") from None
        try:
            steps.append(cls.model_validate(_resolve_settings(cls, params or {}, base_dir)))
        except ValidationError as exc:
            raise CurateError(f"{origin}: invalid recipe:\n{_format_errors(exc, prefix=f'steps[{i}].{kind}')}") from None
    _name_filters(steps, origin)
    check_declared(config.checks, origin)
    recipe = Recipe(config, steps, base_dir, redact_secrets(raw), path)
    for warning in recipe_licenses(recipe).warnings:  # before anything runs; the card repeats them
        log.warning("%s: license: %s", origin, warning)
    return recipe


PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_SECRET_PARAM = re.compile(r"key|token|secret|password|passwd|signature|sig|auth", re.IGNORECASE)


def redact_url(url: str) -> str:
    """A URL without the credentials it may carry: user:password@ and secret-looking query
    parameters become ***. Anything that is not an absolute URL comes back unchanged."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if not parts.scheme or not parts.netloc:
        return url
    netloc, query = parts.netloc, parts.query
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(_SECRET_PARAM.search(k) for k, _ in pairs):
        query = urlencode([(k, "***" if _SECRET_PARAM.search(k) else v) for k, v in pairs])
    if (netloc, query) == (parts.netloc, parts.query):
        return url  # as typed, so the step hash of a URL without credentials stays what it was
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_command(argv: list[str]) -> str:
    """A command line fit to write down (the output folder's lock): URLs in it, including those of
    `-o key=URL` overrides, without credentials, and the value of a secret-looking key as ***."""
    words = []
    for word in argv:
        key, eq, value = word.partition("=")
        if not eq or "://" in key:  # no setting, or a URL whose query holds the '='
            words.append(redact_url(word))
        elif _SECRET_PARAM.search(key.rsplit(".", 1)[-1]):
            words.append(f"{key}=***")
        else:
            words.append(f"{key}={redact_url(value)}")
    return " ".join(words)


def redact_secrets(raw: Any) -> Any:
    """A copy of a raw recipe with every URL's credentials redacted (`redact_url`): `Recipe.raw` is
    what gets written (recipe.yaml, the card), so a key typed into `teacher.base_url` stays out of them."""
    if isinstance(raw, dict):
        return {k: redact_secrets(v) for k, v in raw.items()}
    if isinstance(raw, list):
        return [redact_secrets(v) for v in raw]
    return redact_url(raw) if isinstance(raw, str) and "://" in raw else raw


def _name_filters(steps: list[Step], origin: str) -> None:
    """Give every filter its own score columns. An unnamed filter is named after its kind, or
    `<kind>_2`, `<kind>_3`... when an earlier filter has that name (so recipes with one filter
    of a kind keep their `score_<kind>` columns); a given `name` must be unique and must not be the
    kind of another, unnamed filter (which would be named after its kind)."""
    filters = [(i, s) for i, s in enumerate(steps) if isinstance(s, Filter)]
    taken: dict[str, int] = {}
    for i, step in filters:
        clash = taken.get(step.name) if step.name else None
        if clash is None and step.name and step.name != step.kind:
            clash = next((j for j, other in filters if not other.name and other.kind == step.name), None)
        if clash is not None:
            raise CurateError(f"{origin}: steps[{i}].{step.kind}.name: {step.name!r} is also the score name of "
                              f"steps[{clash}] ({steps[clash].kind}); give each filter its own name")
        if step.name:
            taken[step.name] = i
    for i, step in filters:
        if step.name:
            continue
        name, n = step.kind, 1
        while name in taken:
            n += 1
            name = f"{step.kind}_{n}"
        if n > 1:
            step.name = name
        taken[name] = i


def _format_errors(exc: ValidationError, prefix: str = "") -> str:
    lines = []
    for err in exc.errors():
        loc = prefix
        for part in err["loc"]:
            loc += f"[{part}]" if isinstance(part, int) else (f".{part}" if loc else str(part))
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"  {loc or '<top>'}: {msg}")
    return "\n".join(lines)


def apply_override(raw: dict, item: str) -> None:
    """Set `a.b.c=value` in the raw recipe; the value is parsed as YAML (so 0.9 is a float)."""
    if "=" not in item:
        raise CurateError(f"override {item!r}: expected KEY.PATH=VALUE")
    key, text = item.split("=", 1)
    shown = item if len(item) <= 80 else item[:77] + "..."
    try:
        value = load_yaml(text, f"override {shown!r}", lines=False)
    except yaml.YAMLError as exc:
        raise CurateError(f"override {shown!r}: the value is not valid YAML ({getattr(exc, 'problem', exc)}); "
                          "quote it for the shell, e.g. -o 'seed=3' or -o 'steps.mix.weights={a: 1, b: 2}'") from None
    parts = key.strip().split(".")
    node: Any = raw
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            if part.isdigit():
                idx = int(part)
            else:  # steps.<kind>: the only step of that kind
                matches = [i for i, s in enumerate(node) if isinstance(s, dict) and part in s]
                if len(matches) != 1:
                    raise CurateError(f"override {key!r}: {where}: found {len(matches)} steps of kind {part!r}; use an index")
                idx = matches[0]
                if last:
                    raise CurateError(f"override {key!r}: name a setting of the step, e.g. {key}.n=2")
                if node[idx][part] is None:
                    node[idx][part] = {}
                node = node[idx][part]
                continue
            if idx >= len(node):
                raise CurateError(f"override {key!r}: {where}: index out of range")
            if last:
                node[idx] = value
                return
            node = node[idx]
        elif isinstance(node, dict):
            if last:
                node[part] = value
                return
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
        else:
            raise CurateError(f"override {key!r}: {where} is not a mapping or list")


def check_output_columns(recipe: Recipe, columns: list[str]) -> None:
    """Settings that name a column (output.stratify, output.columns, validation, mix's `by`),
    checked once the inputs are read (their columns and the score columns the recipe's filters
    add are known then), before any step runs: a column the data lacks is an error, never a
    setting silently ignored."""
    where = str(recipe.path or "recipe")
    check_columns(recipe.config.checks, view_columns(columns, recipe.steps, recipe.config.output), where)
    out = recipe.config.output
    known = [*columns, *(c for s in recipe.steps if isinstance(s, Filter) for c in s.score_columns())]
    named = [("output.stratify", out.stratify, " (stratify by source, the default, or leave it out)")] if out.stratify else []
    named += [(f"output.columns[{i}]", c, "") for i, c in enumerate(out.columns)]
    named += [(f"steps[{i}].{s.kind}", c, "") for i, s in enumerate(recipe.steps) for c in s.columns_named()]
    for key, col, hint in named:
        if col not in known:
            raise CurateError(f"{where}: {key}: no column {col!r} in the data; its columns are {', '.join(known)}{hint}")
    taken = [c for c in out.columns if c in FORMAT_COLUMNS[out.format] or c in ("id", "source")]
    if taken:
        raise CurateError(f"{where}: output.columns: {taken} are written by the {out.format!r} format itself; "
                          "list only other columns")
