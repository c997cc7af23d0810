"""The configuration reference, generated from the Settings models.

Every option of `config.py` is listed with its type, default, environment variable, TOML key and
its `Field(description=...)`, grouped by section, so the page an admin reads cannot drift from
the code: `horde-scanner config reference -o docs/reference/configuration.md` (or
`make config-reference`) writes it, and tests/integration/test_config_reference.py fails
when the page on disk is stale or an option has no description.
"""

from __future__ import annotations

import json
import re
import types
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from horde_scanner.config_keys import ENV_PREFIX, NESTED, OpenSection, model_of, strip_optional

# The page of the docs that explains what a section is for (relative to docs/reference/).
SECTION_PAGES = {
    "server": ("../install.md", "Install beside Lemmy"),
    "validation": ("../uploads.md", "How an upload is answered"),
    "media": ("../media.md", "Animations and video"),
    "horde": ("../ai-horde.md", "The AI Horde path"),
    "store": ("../scaling.md", "Scaling with PostgreSQL"),
    "pictrs": ("../pictrs.md", "pict-rs versions and compatibility"),
    "policy": ("../policy.md", "Policy and dry runs"),
    "backend": ("../backends.md", "Choosing a backend"),
    "scan": ("../sweeps.md", "Storage sweeps"),
    "hashes": ("../hash-lists.md", "Hash lists and sharing"),
    "embeddings": ("../embeddings.md", "Embeddings"),
    "local": ("../backends.md", "Choosing a backend"),
    "prescreen": ("../backends.md", "Choosing a backend"),
    "workers": ("../backends.md", "Choosing a backend"),
    "admin": ("../review.md", "Review page and decisions"),
    "quarantine": ("../review.md", "Review page and decisions"),
    "notify": ("../operations.md", "Operations"),
    "metrics": ("../operations.md", "Operations"),
    "lemmy": ("../moderation.md", "Evidence and Lemmy moderation"),
}

# Names that hold credentials even when their type is a plain string: `config show` masks them.
_SECRET_NAME = re.compile(r"(^|_)(api_key|token|secret|secret_access_key|passphrase|password)$")
_SECRET_FIELDS = frozenset({"clients", "client_ids", "keys"})


@dataclass(frozen=True)
class Option:
    """One leaf of the Settings tree."""

    path: tuple[str, ...]  # ("scan", "s3", "endpoint_url"); list items use "[]"
    info: FieldInfo
    annotation: Any

    @property
    def key(self) -> str:
        return ".".join(self.path).replace(".[]", "[]")

    @property
    def env(self) -> str | None:
        """The environment variable, or None for an item of a list of tables (set the whole
        list as JSON in its own variable instead)."""
        if "[]" in self.path:
            return None
        return ENV_PREFIX + NESTED.join(p.upper() for p in self.path)

    @property
    def table(self) -> str:
        """The TOML table the key is written in (`` for top-level keys)."""
        parents = list(self.path[:-1])
        if parents and parents[-1] == "[]":
            return "[[" + ".".join(parents[:-1]) + "]]"
        return "[" + ".".join(parents) + "]" if parents else ""

    @property
    def secret(self) -> bool:
        extra = self.info.json_schema_extra
        return (
            strip_optional(self.annotation) is SecretStr
            or secret_name(self.path[-1])
            or (isinstance(extra, dict) and bool(extra.get("secret")))
        )


def secret_name(name: str) -> bool:
    """Whether an option of this name holds a credential (whatever its type)."""
    return bool(_SECRET_NAME.search(name)) or name in _SECRET_FIELDS


def _is_optional(annotation: Any) -> bool:
    return get_origin(annotation) in (Union, types.UnionType) and type(None) in get_args(annotation)


def _item_model(annotation: Any) -> type[BaseModel] | None:
    annotation = strip_optional(annotation)
    if get_origin(annotation) is list:
        (item,) = get_args(annotation) or (None,)
        return model_of(item)
    return None


def sections(root: type[BaseModel]) -> list[tuple[tuple[str, ...], type[BaseModel]]]:
    """Every table of the tree, depth first, with its path (the root is `()`)."""
    found: list[tuple[tuple[str, ...], type[BaseModel]]] = [((), root)]
    for name, info in root.model_fields.items():
        sub = model_of(info.annotation)
        items = _item_model(info.annotation)
        if sub is not None:
            found += [((name, *p), m) for p, m in sections(sub)]
        elif items is not None:
            found += [((name, "[]", *p), m) for p, m in sections(items)]
    if issubclass(root, OpenSection):  # [backend.<kind>] of the backends registered now
        for name, sub in root.open_sections().items():
            found += [((name, *p), m) for p, m in sections(sub)]
    return found


def options(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> Iterator[Option]:
    """The leaf options of one table, in declaration order (a list of tables is one leaf: its
    items' keys are a table of their own, `[[...]]`)."""
    for name, info in model.model_fields.items():
        if model_of(info.annotation) is None:
            yield Option((*prefix, name), info, info.annotation)


def all_options(root: type[BaseModel]) -> Iterator[Option]:
    """Every leaf option of the tree."""
    for path, model in sections(root):
        yield from options(model, path)


def default_of(info: FieldInfo) -> Any:
    """The default value, PydanticUndefined when the option is required."""
    if info.default_factory is not None:
        return info.default_factory()  # type: ignore[call-arg]
    return info.default


def toml_value(value: Any) -> str:
    """A value written as it would be in a TOML file."""
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        inner = ", ".join(f"{json.dumps(str(k))} = {toml_value(v)}" for k, v in value.items())
        return "{" + (" " + inner + " " if inner else "") + "}"
    if isinstance(value, BaseModel):
        return toml_value(value.model_dump(mode="json"))
    return json.dumps(str(value))


def _choices(annotation: Any) -> list[str] | None:
    annotation = strip_optional(annotation)
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return [str(m.value) for m in annotation]
    if get_origin(annotation) is Literal:
        return [str(a) for a in get_args(annotation)]
    return None


def _bounds(info: FieldInfo) -> str:
    low = high = None
    parts = []
    for meta in info.metadata:
        if isinstance(meta, annotated_types.Ge):
            low = meta.ge
            parts.append(f">= {meta.ge}")
        elif isinstance(meta, annotated_types.Gt):
            parts.append(f"> {meta.gt}")
        elif isinstance(meta, annotated_types.Le):
            high = meta.le
            parts.append(f"<= {meta.le}")
        elif isinstance(meta, annotated_types.Lt):
            parts.append(f"< {meta.lt}")
    if low is not None and high is not None and len(parts) == 2:
        return f"{low} to {high}"
    return ", ".join(parts)


def _pattern(info: FieldInfo) -> str | None:
    for meta in info.metadata:
        pattern = getattr(meta, "pattern", None)
        if isinstance(pattern, str):
            return pattern
    return None


def type_name(annotation: Any, info: FieldInfo | None = None) -> str:
    """A short, human name of an option's type, with its bounds and choices."""
    optional = _is_optional(annotation)
    inner = strip_optional(annotation)
    choices = _choices(inner)
    pattern = _pattern(info) if info is not None else None
    if choices is not None:
        text = "one of " + ", ".join(f"`{c}`" for c in choices)
    elif pattern and (m := re.fullmatch(r"\^\(([\w|]+)\)\$", pattern)):
        text = "one of " + ", ".join(f"`{c}`" for c in m[1].split("|"))
    elif inner is bool:
        text = "boolean"
    elif inner is int:
        text = "integer"
    elif inner is float:
        text = "number"
    elif inner is SecretStr:
        text = "string (secret)"
    elif inner is Path:
        text = "path"
    elif inner is str:
        text = "string"
    elif get_origin(inner) is list:
        (item,) = get_args(inner)
        item_model = model_of(item)
        if item_model is not None:
            text = "list of tables"
        else:
            inner_name = type_name(item)
            if inner_name.startswith("one of"):
                text = "list, each " + inner_name
            else:
                text = "list of " + inner_name + "s"
    elif get_origin(inner) is dict:
        _, value = get_args(inner)
        text = "table of " + type_name(value) + "s"
    elif get_origin(inner) is not None and hasattr(inner, "__metadata__"):
        text = type_name(get_args(inner)[0])
    else:
        text = getattr(inner, "__name__", str(inner))
    if info is not None:
        bounds = _bounds(info)
        if bounds:
            text += f" ({bounds})"
    if optional:
        text += ", or unset"
    return text


def missing_descriptions(root: type[BaseModel]) -> list[str]:
    """Keys of options, tables and table classes that have no description."""
    missing = [o.key for o in all_options(root) if not (o.info.description or "").strip()]
    for path, model in sections(root):
        key = ".".join(path).replace(".[]", "[]")
        if path and not (model.__doc__ or "").strip():
            missing.append(key + " (class docstring)")
        for name, info in model.model_fields.items():
            if model_of(info.annotation) is not None and not (info.description or "").strip():
                missing.append(f"{key}.{name}" if key else name)
    return missing


def _first_paragraph(doc: str | None) -> str:
    text = (doc or "").strip().split("\n\n")[0]
    return " ".join(line.strip() for line in text.splitlines())


def _default_text(opt: Option) -> str:
    value = default_of(opt.info)
    if value is PydanticUndefined:
        return "required"
    if value is None:
        return "unset"
    return f"`{toml_value(value)}`"


def render(root: type[BaseModel]) -> str:
    """The Markdown page: one heading per section, one per option."""
    out = [
        "# All options",
        "",
        "<!-- Generated from horde_scanner/config.py by `make config-reference`"
        " (horde-scanner config reference); do not edit by hand. -->",
        "",
        "Every option, generated from the code. Settings come from (highest priority first) the",
        "environment (`HORDE_SCANNER_<SECTION>__<KEY>`, lists and tables written as JSON), a",
        "`.env` file in the working directory, the TOML file given with `--config`, then the",
        "defaults below; see [Configuration](../configuration.md). `horde-scanner config show`",
        "prints the values in effect and where each came from; `horde-scanner config check FILE`",
        "validates a file.",
        "",
    ]
    top = list(options(root))
    if top:
        out += ["## General", ""]
        for opt in top:
            out += _render_option(opt)
    for path, model in sections(root):
        if not path:
            continue
        key = ".".join(path).replace(".[]", "[]")
        table = "[[" + key[:-2] + "]]" if key.endswith("[]") else "[" + key + "]"
        out += [f"## `{table}` {{#{_anchor(key)}}}", ""]
        intro = _first_paragraph(model.__doc__)
        if intro:
            out += [intro, ""]
        if len(path) == 1 and path[0] in SECTION_PAGES:
            page, title = SECTION_PAGES[path[0]]
            out += [f"How it is used: [{title}]({page}).", ""]
        for opt in options(model, path):
            out += _render_option(opt)
    return "\n".join(out).rstrip("\n") + "\n"


def _anchor(key: str) -> str:
    """The id of a key's heading: the key itself (`validation.on_timeout`); a list of tables is
    `hashes.subscriptions.item`, so it differs from the option that holds the list."""
    if key.endswith("[]"):
        return key[:-2] + ".item"
    return key.replace("[]", "")


def _render_option(opt: Option) -> list[str]:
    description = " ".join((opt.info.description or "").split())
    lines = [f"### `{opt.key}` {{#{_anchor(opt.key)}}}", ""]
    if description:
        lines += [description, ""]
    lines.append(f"- type: {type_name(opt.annotation, opt.info)}")
    lines.append(f"- default: {_default_text(opt)}")
    if opt.env is not None:
        lines.append(f"- environment: `{opt.env}`")
    else:
        parent = opt.path[: opt.path.index("[]")]
        lines.append(
            f"- environment: part of `{ENV_PREFIX + NESTED.join(p.upper() for p in parent)}`"
            " (the whole list, as JSON)"
        )
    name = opt.path[-1]
    lines.append(f"- TOML: `{name}` in `{opt.table}`" if opt.table else f"- TOML: `{name}`")
    if opt.secret:
        lines.append("- secret: `config show` masks it")
    lines.append("")
    return lines


def write(root: type[BaseModel], target: Path) -> bool:
    """Write the page; True when it changed."""
    text = render(root)
    if target.is_file() and target.read_text() == text:
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    return True
