"""Which names `backend.kind` may take, and what builds each: the one table a backend joins.

A backend is one module: a `Backend` subclass (backends/base.py), a factory that builds it
from a `BuildContext` (backends/kinds.py), and, when it has options, a settings section (a
`config.Section`), read from `[backend.<kind>]` (env `HORDE_SCANNER_BACKEND__<KIND>__...`).
It joins with one call:

    register_backend("mine", build_mine, section=MineSettings, summary="judges with ...")

The built-in kinds are named here with the module that builds them, imported only when that
kind is built, so the configuration can check `backend.kind` (and a `[backend.<kind>]`
section) without importing any backend: this module sits beside the configuration, below the
backends, and imports none of them. local_gpu/ (torch) stays behind the one plug-in point,
backends/plugins.py, which the `local`, `hybrid` and `auto` kinds use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

# A factory: BuildContext -> Backend (typed in backends/kinds.py; this module imports neither).
Factory = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class BackendKind:
    """One name `backend.kind` may take."""

    name: str
    # The factory itself, or "module:function" for one imported when the kind is first built.
    factory: Factory | str
    # The options of this kind, read from [backend.<name>]; None: it has none there.
    section: type[BaseModel] | None = None
    summary: str = ""

    def load(self) -> Factory:
        if not isinstance(self.factory, str):
            return self.factory
        module, _, attr = self.factory.partition(":")
        built: Factory = vars(importlib.import_module(module))[attr]
        return built


_KINDS = "horde_scanner.backends.kinds"
_BUILT_IN = (
    BackendKind(
        "auto",
        f"{_KINDS}:build_auto",
        summary="`local` when a CUDA GPU or a worker pool is there, else `horde`",
    ),
    BackendKind("horde", f"{_KINDS}:build_horde", summary="the AI Horde only"),
    BackendKind(
        "local", f"{_KINDS}:build_local", summary="CLIP in this process and/or remote GPU workers"
    ),
    BackendKind(
        "hybrid", f"{_KINDS}:build_hybrid", summary="every path, the fastest live one first"
    ),
)
_registry: dict[str, BackendKind] = {k.name: k for k in _BUILT_IN}


def register_backend(
    name: str,
    factory: Factory | str,
    *,
    section: type[BaseModel] | None = None,
    summary: str = "",
) -> BackendKind:
    """Make `name` a `backend.kind`. A name taken by another factory is refused."""
    if not name.isidentifier() or name != name.lower():
        raise ValueError(f"backend kind {name!r}: use lower-case letters, digits and _")
    kind = BackendKind(name, factory, section, summary)
    known = _registry.get(name)
    if known is not None and known != kind:
        raise ValueError(f"backend kind {name!r} is registered already")
    _registry[name] = kind
    return kind


def unregister_backend(name: str) -> None:
    """Forget a registered kind (tests); the built-in ones stay."""
    if any(k.name == name for k in _BUILT_IN):
        raise ValueError(f"backend kind {name!r} is built in")
    _registry.pop(name, None)


def backend_kinds() -> list[str]:
    return list(_registry)


def backend_kind(name: str) -> BackendKind:
    """The kind called `name`; KeyError naming the known ones when there is none."""
    try:
        return _registry[name]
    except KeyError:
        raise KeyError(f"unknown backend kind {name!r}; known: {', '.join(_registry)}") from None


def sections() -> dict[str, type[BaseModel]]:
    """The settings sections of the kinds that have one, by kind name."""
    return {k.name: k.section for k in _registry.values() if k.section is not None}
