"""Which configuration keys are ours, and whether they name a real option.

Admins run horde-scanner in Lemmy's directory, whose `.env` is full of other programs' keys
(POSTGRES_PASSWORD, PICTRS__..., LEMMY_UI_...). Those are not ours and are ignored. A key that
does start with `HORDE_SCANNER_` but names no option is a typo that would otherwise be dropped
without a word, so it is refused by name. These functions return messages; config.py raises.
"""

from __future__ import annotations

import difflib
import json
import types
from collections.abc import Iterable, Mapping
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel

ENV_PREFIX = "HORDE_SCANNER_"
NESTED = "__"

# Read by the CLI's own options (click envvars), not by the Settings tree.
CLI_ENV_VARS = frozenset(
    {"HORDE_SCANNER_CONFIG", "HORDE_SCANNER_WORKER_SERVER", "HORDE_SCANNER_WORKER_KEY"}
)

_LIST_ORIGINS = (list, tuple, set, frozenset)


def is_ours(env_name: str) -> bool:
    return env_name.upper().startswith(ENV_PREFIX)


def strip_optional(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


class OpenSection:
    """A section whose sub-sections are named at run time: `[backend.<kind>]` for each backend
    kind that registered a settings section (backend_registry.py)."""

    @classmethod
    def open_sections(cls) -> dict[str, type[BaseModel]]:
        return {}


def fields_of(model: type[BaseModel]) -> dict[str, Any]:
    """The keys a section takes, each with its type: its fields, and its open sub-sections."""
    fields: dict[str, Any] = {name: f.annotation for name, f in model.model_fields.items()}
    if issubclass(model, OpenSection):
        fields.update(model.open_sections())
    return fields


def model_of(annotation: Any) -> type[BaseModel] | None:
    annotation = strip_optional(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _json_kind(annotation: Any) -> str | None:
    """What a plain-text value of this type must be written as: 'list', 'object' or None."""
    annotation = strip_optional(annotation)
    origin = get_origin(annotation)
    if origin in _LIST_ORIGINS or annotation in _LIST_ORIGINS:
        return "list"
    if origin is dict or annotation is dict or model_of(annotation) is not None:
        return "object"
    return None


def _closest(word: str, choices: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return close[0] if close else None


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = _closest(word, choices)
    return f"; did you mean {close!r}?" if close else ""


def _env_name(path: list[str]) -> str:
    return ENV_PREFIX + NESTED.join(part.upper() for part in path)


def check_env(
    env: Mapping[str, str | None], root: type[BaseModel], origin: str, *, cli_reads_it: bool
) -> list[str]:
    """Problems with the `HORDE_SCANNER_` keys of one env mapping (os.environ or a .env file).

    Keys may come lower-cased (pydantic-settings folds case); other keys are skipped.
    `cli_reads_it`: whether the command line's own variables are read from this mapping (they
    are from the environment, not from .env).
    """
    problems = []
    for name, value in sorted(env.items()):
        if not is_ours(name):
            continue
        if name.upper() in CLI_ENV_VARS:
            if not cli_reads_it:
                problems.append(
                    f"{name.upper()} ({origin}): the command line reads this from the environment"
                    " only; export it or use its option"
                )
            continue
        path = name[len(ENV_PREFIX) :].lower().split(NESTED)
        problem = _check_path(path, value, root)
        if problem:
            problems.append(f"{name.upper()} ({origin}): {problem}")
    return problems


def _check_path(path: list[str], value: str | None, root: type[BaseModel]) -> str | None:
    model: type[BaseModel] | None = root
    annotation: Any = root
    for depth, part in enumerate(path):
        known = path[:depth]
        if model is None:
            if _json_kind(annotation) == "object" and depth == len(path) - 1:
                return None  # a table's own key, e.g. ..._CLIENTS__NAME
            where = ".".join(known)
            return f"unknown key: {where} is a single value and has no key {part!r}"
        fields = fields_of(model)
        if part not in fields:
            close = _closest(part, fields)
            # A misspelt section keeps the rest of the path: SERVR__PORT -> SERVER__PORT.
            mean = (
                f"; did you mean {_env_name([*known, close, *path[depth + 1 :]])}?" if close else ""
            )
            if not known:
                return (
                    f"unknown key: no section or option {part!r}{_one_underscore(part, root, mean)}"
                )
            return f"unknown key: [{'.'.join(known)}] has no option {part!r}{mean}"
        annotation = fields[part]
        model = model_of(annotation)
    kind = _json_kind(annotation)
    if kind is not None and value is not None:
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = None
        # Either container passes here: some fields take both (workers.keys: a table, or the
        # old list); the field's own validation judges the contents.
        if not isinstance(parsed, (list, dict)):
            key = ".".join(path)
            example = "'[\"abc\"]'" if kind == "list" else '\'{"name": "value"}\''
            # The value is not repeated: it may be a secret (client ids are).
            return f"{key} needs a JSON {kind}, e.g. {_env_name(path)}={example}"
    return None


def _one_underscore(part: str, root: type[BaseModel], otherwise: str) -> str:
    """HORDE_SCANNER_SERVER_PORT: one underscore where two separate the section and the key."""
    for name, field in root.model_fields.items():
        section = model_of(field.annotation)
        rest = part[len(name) + 1 :]
        if section is not None and part.startswith(name + "_") and rest in section.model_fields:
            return f"; did you mean {_env_name([name, rest])}? (two underscores before the key)"
    return otherwise


def check_toml(data: Mapping[str, Any], root: type[BaseModel]) -> list[str]:
    """Unknown tables and keys in a TOML config file, named as written there."""
    problems: list[str] = []
    _walk_toml(data, root, [], problems)
    return problems


def _walk_toml(
    data: Mapping[str, Any], model: type[BaseModel], path: list[str], problems: list[str]
) -> None:
    fields = fields_of(model)
    for key, value in data.items():
        if key not in fields:
            where = f"[{'.'.join(path)}]" if path else "top level"
            problems.append(
                f"unknown key {'.'.join([*path, key])!r} ({where}){_suggest(key, fields)}"
            )
            continue
        sub = model_of(fields[key])
        if sub is not None and isinstance(value, Mapping):
            _walk_toml(value, sub, [*path, key], problems)
