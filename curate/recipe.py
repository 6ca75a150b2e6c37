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

Unknown keys and wrong types are errors naming the key path (`steps[1].minhash_dedup.treshold`).
Overrides from the command line (`-o teacher.model=X`, `-o steps.1.minhash_dedup.threshold=0.9`,
or by step kind: `-o steps.minhash_dedup.threshold=0.9`) are applied before validation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from curate.errors import CurateError
from curate.llm.teacher import TeacherConfig
from curate.output import OutputConfig
from curate.registry import step_class
from curate.steps import Step


class InputConfig(BaseModel):
    """One input dataset; column names map it onto records when its shape is not detected."""

    model_config = ConfigDict(extra="forbid")
    path: str
    source: str | None = None
    prompt: str | None = None
    response: str | None = None
    system: str | None = None
    gold: str | None = None
    limit: int | None = Field(None, ge=1)


class RecipeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    seed: int = 0
    license: str | None = None  # of the output data, for the dataset card
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    inputs: list[InputConfig] = Field(default_factory=list)
    steps: list[dict[str, dict[str, Any] | None]] = Field(default_factory=list)
    output: OutputConfig = Field(default_factory=OutputConfig)
    cache: str | None = None  # response cache file; default <out>/cache/llm.sqlite


class Recipe:
    """A validated recipe: its config, its built steps, and the folder its relative paths start from."""

    def __init__(self, config: RecipeConfig, steps: list[Step], base_dir: Path, raw: dict, path: Path | None = None):
        self.config, self.steps, self.base_dir, self.raw, self.path = config, steps, base_dir, raw, path

    def resolve(self, rel: str) -> Path:
        p = Path(rel).expanduser()
        return p if p.is_absolute() else self.base_dir / p


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    path = Path(path)
    if not path.exists():
        raise CurateError(f"{path}: recipe not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise CurateError(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict):
        raise CurateError(f"{path}: a recipe must be a YAML mapping")
    for item in overrides:
        apply_override(raw, item)
    return build_recipe(raw, base_dir=path.parent, origin=str(path), path=path)


def build_recipe(raw: dict, base_dir: Path = Path("."), origin: str = "<recipe>", path: Path | None = None) -> Recipe:
    try:
        config = RecipeConfig.model_validate(raw)
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
            steps.append(cls.model_validate(params or {}))
        except ValidationError as exc:
            raise CurateError(f"{origin}: invalid recipe:\n{_format_errors(exc, prefix=f'steps[{i}].{kind}')}") from None
    return Recipe(config, steps, base_dir, raw, path)


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
    key, value = item.split("=", 1)
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
                node[idx] = yaml.safe_load(value)
                return
            node = node[idx]
        elif isinstance(node, dict):
            if last:
                node[part] = yaml.safe_load(value)
                return
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
        else:
            raise CurateError(f"override {key!r}: {where} is not a mapping or list")
