"""`structured`: answers as JSON that follows a schema, parsed into typed columns (structured outputs).

The teacher answers each row's conversation, as `responses` does, with one JSON object following a
schema given inline (`json_schema`), in a file (`json_schema_file`, hashed by content) or, from
Python, as a pydantic model class (`response_format`, as in the OpenAI SDK and curator; sent in
OpenAI's strict form, every field required and no others, as the OpenAI SDK sends a model). Each
backend holds generation to the schema the way it is built to: an OpenAI-compatible server gets
`response_format` (OpenAI's structured outputs; vLLM's server decodes by the schema, llama-cpp-python's
makes a grammar of it), the vLLM engine its structured-output sampling, the embedded model a
llama.cpp grammar made from the schema.

Every answer is then checked, because a backend may hold generation to less than the schema says
(OpenAI without strict mode, keywords a grammar converter ignores, a server that ignores the field):
with `jsonschema` against a JSON schema, with the model itself for a pydantic model. A kept row is the
conversation with the JSON text as its assistant turn, plus the object's top-level properties as
columns `<prefix><property>`, typed from the schema (`column_type`), so every batch has the same
columns. Rejects: "unparseable output" (not JSON), "schema validation failed" (what failed, then the
raw output), "truncated at max_tokens" (JSON cut before it closed).
"""

from __future__ import annotations

import functools
import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, ClassVar

import polars as pl
from pydantic import BaseModel, PrivateAttr, ValidationError, field_serializer, field_validator, model_validator

from curate.errors import CurateError
from curate.llm import Request, Response
from curate.records import CORE_COLUMNS
from curate.steps import Context, RecipePath, digest
from synth.base import TRUNCATED, PromptTemplate, Reject, cut_off
from synth.responses import Responses

# The reject reason of an answer that is JSON but does not follow the schema (detail: what failed,
# then the raw output).
SCHEMA_FAILED = "schema validation failed"
# Columns a property must not land on: the record's own, those rejects tables add, filters' scores.
RESERVED = (*CORE_COLUMNS, "reason", "detail", "step")
_MAX_ERRORS = 5  # validation errors listed in a reject's detail


class Structured(Responses):
    """Answer each row's conversation with JSON following a schema; its properties become columns.

    Exactly one of `json_schema` (a mapping in the recipe), `json_schema_file` (a .json file) or
    `response_format` (a pydantic model class, from Python). The schema's top level is an object; a
    property `p` becomes the column `<prefix>p` and may not land on a record column (`messages`,
    `answer`, ...): set `prefix`. With `schema_in_prompt` the system turn also shows the model the
    schema (`schema_prompt`, a file with {schema}), which a model needs in order to fill the fields
    well even where decoding is held to the schema; the kept conversation keeps that turn.
    """

    kind: ClassVar[str] = "structured"
    code_version: ClassVar[int] = 1
    json_schema: dict[str, Any] | None = None
    json_schema_file: RecipePath | None = None
    response_format: type[BaseModel] | None = None  # Python only
    prefix: str = ""
    schema_in_prompt: bool = True
    schema_prompt: RecipePath | None = None  # default synth/prompts/structured.txt
    _schema: dict[str, Any] = PrivateAttr(default_factory=dict)

    @field_validator("response_format", mode="before")
    @classmethod
    def _a_model_class(cls, value: Any) -> Any:
        if value is not None and not (isinstance(value, type) and issubclass(value, BaseModel)):
            raise ValueError(f"takes a pydantic model class (from Python), not {value!r}; "
                             "a recipe gives json_schema (inline) or json_schema_file")
        return value

    @field_serializer("response_format")
    def _model_name(self, model: type[BaseModel] | None) -> str | None:
        return None if model is None else f"{model.__module__}.{model.__qualname__}"

    @model_validator(mode="after")
    def _one_schema(self):
        """Check the schema now, so a bad one stops the recipe as it loads. A schema file that is
        not there is named when first needed (`schema_dict`), which is when the engine takes the
        steps' hashes, before any step runs: a recipe's copy in an output folder, which
        `curate report` loads, points at files beside it that are not there."""
        given = [n for n in ("json_schema", "json_schema_file", "response_format") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of json_schema (inline), json_schema_file (a .json file) or "
                             "response_format (a pydantic model class, from Python)"
                             + (f"; got {' and '.join(given)}" if given else ""))
        if self.response_format is not None:
            self._schema = checked(strict_form(self.response_format.model_json_schema()), "response_format", self.prefix)
        elif self.json_schema is not None:
            self._schema = checked(self.json_schema, "json_schema", self.prefix)
        elif Path(self.json_schema_file).is_file():
            self._schema = checked(read_schema_file(self.json_schema_file), "json_schema_file", self.prefix)
        return self

    # The schema -----------------------------------------------------------------------------
    def schema_dict(self) -> dict[str, Any]:
        """The schema asked for (a pydantic model's in OpenAI's strict form)."""
        if not self._schema:
            try:
                self._schema = checked(read_schema_file(self.json_schema_file), "json_schema_file", self.prefix)
            except ValueError as exc:
                raise CurateError(f"{self.kind}: {exc}") from None
        return self._schema

    def schema_text(self) -> str:
        """The schema as sent with every request: compact JSON with its keys in their given order
        (properties are written in that order, so it is part of what the teacher is asked)."""
        return schema_text(self.schema_dict())

    def columns(self) -> list[tuple[str, str, pl.DataType, Callable[[Any], Any]]]:
        """(property, column, polars type, converter) for each top-level property."""
        return schema_columns(self.schema_text(), self.prefix)

    def config_hash(self) -> str:
        # The settings' hash sorts keys; the schema's property order changes the requests.
        return digest(super().config_hash(), self.schema_text())

    def schema_note(self) -> PromptTemplate:
        """The system-prompt note that shows the schema ({schema}), with `schema_in_prompt`."""
        return PromptTemplate(self.schema_prompt, "structured")

    def files(self) -> list[str]:
        default = [str(self.schema_note().path)] if self.schema_in_prompt and not self.schema_prompt else []
        return [*super().files(), *default]

    def prompt_template(self) -> str:
        note = self.schema_note().text if self.schema_in_prompt else ""
        return "\n\n".join([self.system_prompt or "", note, self.schema_text()])

    # The generator --------------------------------------------------------------------------
    def units(self, batch: pl.DataFrame) -> pl.DataFrame:
        """The batch with the step's columns, typed from the schema, in place of any of that name:
        so every batch's output has the same columns and types, whatever its rows held."""
        return batch.with_columns(pl.lit(None, dtype=dtype).alias(column) for _, column, dtype, _ in self.columns())

    def requests(self, row: dict[str, Any], ctx: Context) -> list[Request]:
        text = self.schema_text()
        out = []
        for request in super().requests(row, ctx):
            turns = request.message_dicts()
            if self.schema_in_prompt:
                note = self.schema_note().render(schema=text).strip()
                if turns and turns[0]["role"] == "system":
                    turns[0] = {"role": "system", "content": f"{turns[0]['content']}\n\n{note}"}
                else:
                    turns.insert(0, {"role": "system", "content": note})
            out.append(replace(request, messages=tuple((m["role"], m["content"]) for m in turns), json_schema=text))
        return out

    def parse(self, row: dict[str, Any], request: Request, response: Response) -> dict[str, Any] | Reject:
        text = (response.text or "").strip()
        try:
            value = json.loads(text, parse_constant=_not_json)
        except ValueError:
            if cut_off(response):
                return Reject(TRUNCATED, f"cut at max_tokens={request.max_tokens} before the JSON closed\n\n{text}")
            raise  # "unparseable output", with the error and the raw output
        if self.response_format is not None:
            try:
                value = self.response_format.model_validate_json(text).model_dump(mode="json", by_alias=True)
            except ValidationError as exc:
                failed = [("/".join(map(str, e["loc"])), e["msg"]) for e in exc.errors(include_url=False)]
                return Reject(SCHEMA_FAILED, f"{error_list(failed)}\n\n{text}")
        else:
            errors = list(schema_validator(self.schema_text()).iter_errors(value))
            if errors:
                failed = sorted(("/".join(map(str, e.absolute_path)), e.message) for e in errors)
                return Reject(SCHEMA_FAILED, f"{error_list(failed)}\n\n{text}")
        fields = {column: convert(value.get(name)) for name, column, _, convert in self.columns()}
        return {"messages": request.message_dicts() + [{"role": "assistant", "content": text}], **fields}


def _not_json(constant: str) -> None:
    """json.loads takes NaN and Infinity, which are not JSON (RFC 8259): a strict reader refuses them."""
    raise ValueError(f"{constant} is not JSON")


def error_list(failed: list[tuple[str, str]]) -> str:
    """Validation errors as one line: "at <path>: <message>; ...", the first few of them."""
    shown = [f"at {path or '(top level)'}: {message[:300]}" for path, message in failed[:_MAX_ERRORS]]
    more = [f"and {len(failed) - _MAX_ERRORS} more"] if len(failed) > _MAX_ERRORS else []
    return "; ".join(shown + more)


# Schemas -------------------------------------------------------------------------------------

def schema_text(schema: dict[str, Any]) -> str:
    return json.dumps(schema, ensure_ascii=False, separators=(",", ":"))


def checked(schema: dict[str, Any], setting: str, prefix: str) -> dict[str, Any]:
    """`schema` if the step can use it: a valid JSON schema (under the draft its $schema names) whose
    top level is an object with properties, none of which lands on a reserved column."""
    from jsonschema.exceptions import SchemaError

    try:
        schema_validator(schema_text(schema))
    except SchemaError as exc:
        where = "/".join(map(str, exc.absolute_path)) or "its top level"
        raise ValueError(f"{setting}: not a valid JSON schema, at {where}: {exc.message}") from None
    if schema.get("type") != "object" or not isinstance(schema.get("properties"), dict) or not schema["properties"]:
        raise ValueError(f"{setting}: the schema's top level must be an object with properties "
                         "(type: object, properties: ...): its properties become the row's columns")
    for name in schema["properties"]:
        column = prefix + name
        if column in RESERVED or column.startswith("score_"):
            why = "filters name their scores so" if column.startswith("score_") else "records use"
            raise ValueError(f"{setting}: property {name!r} would be the column {column!r}, which {why}; "
                             "set prefix (for example prefix: out_)")
    return schema


def read_schema_file(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"json_schema_file {path}: no such file (a relative path is read from the recipe's folder)")
    try:
        schema = json.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"json_schema_file {path}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"json_schema_file {path}:{exc.lineno}:{exc.colno}: not JSON: {exc.msg}") from None
    if not isinstance(schema, dict):
        raise ValueError(f"json_schema_file {path}: a JSON schema is an object, not {type(schema).__name__}")
    return schema


@functools.lru_cache(maxsize=32)
def schema_validator(text: str):
    """A jsonschema validator for the schema (JSON text), of the draft its $schema names (default:
    2020-12); raises jsonschema's SchemaError for a schema that is not valid under that draft."""
    from jsonschema.validators import validator_for

    schema = json.loads(text)
    cls = validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def strict_form(schema: Any) -> Any:
    """A pydantic model's schema as OpenAI's strict mode takes it, which is how the OpenAI SDK sends a
    model: every object lists all its properties in `required` and sets additionalProperties false
    (unless it says otherwise). Answers then carry every field; the model still validates them."""
    if isinstance(schema, list):
        return [strict_form(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict_form(v) if k in ("items", "prefixItems", "anyOf", "oneOf", "allOf") else v for k, v in schema.items()}
    for key in ("properties", "$defs", "definitions"):
        if isinstance(schema.get(key), dict):
            out[key] = {name: strict_form(s) for name, s in schema[key].items()}
    if isinstance(schema.get("properties"), dict):
        out["required"] = list(schema["properties"])
        out.setdefault("additionalProperties", False)
    return out


@functools.lru_cache(maxsize=32)
def schema_columns(text: str, prefix: str) -> list[tuple[str, str, pl.DataType, Callable[[Any], Any]]]:
    schema = json.loads(text)
    return [(name, prefix + name, *column_type(node, schema)) for name, node in schema["properties"].items()]


def column_type(node: Any, root: dict[str, Any], refs: frozenset[str] = frozenset()) -> tuple[pl.DataType, Callable[[Any], Any]]:
    """The polars type a schema node's values are stored as, and how a validated value becomes one.
    string, integer, number and boolean map onto polars types, an array of one item schema onto a
    list, an object with properties onto a struct of them; a nullable one (["string", "null"],
    pydantic's Optional) onto the same type. Anything else (unions, free-form maps, untyped, a
    recursive $ref) is kept as its JSON text."""
    ref = node.get("$ref") if isinstance(node, dict) else None
    if isinstance(ref, str):
        if ref in refs:
            return pl.String, _json_text
        return column_type(_pointer(root, ref), root, refs | {ref})
    if not isinstance(node, dict):
        return pl.String, _json_text
    kind = node.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"]
        kind = kinds[0] if len(kinds) == 1 else None
    if kind is None:
        variants = node.get("anyOf") or node.get("oneOf") or node.get("allOf") or []
        real = [v for v in variants if not (isinstance(v, dict) and v.get("type") == "null")]
        if len(real) == 1:
            return column_type(real[0], root, refs)
        values = [v for v in node.get("enum", [node["const"]] if "const" in node else []) if v is not None]
        kinds = {"string" if isinstance(v, str) else "boolean" if isinstance(v, bool) else
                 "integer" if isinstance(v, int) else "other" for v in values}
        kind = kinds.pop() if len(kinds) == 1 else None
    if kind == "string":
        return pl.String, _same
    if kind == "integer":
        return pl.Int64, _int64
    if kind == "number":
        return pl.Float64, _float
    if kind == "boolean":
        return pl.Boolean, _same
    if kind == "array" and isinstance(node.get("items"), dict):
        dtype, convert = column_type(node["items"], root, refs)
        return pl.List(dtype), functools.partial(_each, convert)
    if kind == "object" and isinstance(node.get("properties"), dict) and node["properties"]:
        fields = {name: column_type(sub, root, refs) for name, sub in node["properties"].items()}
        return pl.Struct({name: t for name, (t, _) in fields.items()}), functools.partial(
            _struct, tuple((name, c) for name, (_, c) in fields.items()))
    return pl.String, _json_text


def _pointer(root: dict[str, Any], ref: str) -> Any:
    """The node a local $ref ("#/$defs/Name") points at; None for another document's."""
    if not ref.startswith("#"):
        return None
    node: Any = root
    for part in filter(None, ref[1:].split("/")):
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _same(value: Any) -> Any:
    return value


def _json_text(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False)


def _int64(value: Any) -> int | None:
    if value is None:
        return None
    if not -(2**63) <= value < 2**63:
        raise ValueError(f"{value} does not fit a 64-bit integer column")
    return int(value)


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _each(convert: Callable[[Any], Any], values: list | None) -> list | None:
    return None if values is None else [convert(v) for v in values]


def _struct(fields: tuple[tuple[str, Callable[[Any], Any]], ...], value: dict | None) -> dict | None:
    return None if value is None else {name: convert(value.get(name)) for name, convert in fields}
