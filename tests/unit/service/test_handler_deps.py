"""Handlers receive narrow typed dependencies: one small object per API area, built from the
runtime's parts in service/context.py, read by that area's handlers under its own app key.

Read from the code (as tests/test_layout.py reads imports): which dependency key each module of
service/ reads, and which fields of each area's object its modules use, so that neither a
broad bag nor a field only tests read comes back.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

from horde_scanner.service import context

SERVICE = Path(context.__file__).resolve().parent

# Area -> (its app key, its dependency class, the modules whose handlers read it).
AREAS: dict[str, tuple[str, type, tuple[str, ...]]] = {
    "edge": ("EDGE", context.EdgeDeps, ("app.py", "guard.py", "serve.py")),
    "validate": ("VALIDATE", context.ValidateDeps, ("validate.py",)),
    "workers": ("WORKERS", context.WorkersDeps, ("workers.py",)),
    "hashes": ("HASHES", context.HashesDeps, ("hashes.py",)),
    "health": ("HEALTH", context.HealthDeps, ("health.py", "app.py")),
    "admin": (
        "ADMIN_DEPS",
        context.AdminDeps,
        ("admin/api.py", "admin/page.py", "admin/lemmy_page.py"),
    ),
    "policy": ("POLICY", context.PolicyDeps, ("admin/policy.py",)),
}
KEYS = {key for key, _, _ in AREAS.values()} | {"RUNTIME"}


def _tree(module: str) -> ast.Module:
    return ast.parse((SERVICE / module).read_text(), module)


def keys_read(module: str) -> set[str]:
    """The dependency keys a module looks up on the app (`request.app[KEY]`, `app[KEY]`)."""
    return {
        node.slice.id
        for node in ast.walk(_tree(module))
        if isinstance(node, ast.Subscript)
        and isinstance(node.slice, ast.Name)
        and node.slice.id in KEYS
    }


def attributes_read(modules: tuple[str, ...]) -> set[str]:
    return {
        node.attr
        for module in modules
        for node in ast.walk(_tree(module))
        if isinstance(node, ast.Attribute)
    }


def test_each_module_reads_only_its_own_areas_dependencies():
    expected: dict[str, set[str]] = {}
    for key, _, modules in AREAS.values():
        for module in modules:
            expected.setdefault(module, set()).add(key)
    # serve.py prints its start-up summary from the composition root itself; lemmy_page.py
    # is handed AdminDeps by page.py and looks nothing up.
    expected["serve.py"].add("RUNTIME")
    del expected["admin/lemmy_page.py"]
    found = {
        str(path.relative_to(SERVICE)): keys_read(str(path.relative_to(SERVICE)))
        for path in sorted(SERVICE.rglob("*.py"))
        if path.name != "context.py"
    }
    assert {m: k for m, k in found.items() if k} == expected


def test_every_field_of_an_areas_dependencies_is_read_by_its_handlers():
    """A field no handler of the area reads (one only tests read) has no place there."""
    unread = {
        area: sorted(
            f.name for f in dataclasses.fields(cls) if f.name not in attributes_read(modules)
        )
        for area, (_, cls, modules) in AREAS.items()
    }
    assert unread == {area: [] for area in AREAS}


def test_the_checks_see_keys_and_fields():
    # Samples the checks above rely on, so a parser that found nothing would fail here.
    assert keys_read("validate.py") == {"VALIDATE"}
    assert {"upload_gate", "late_admissions", "judge"} <= attributes_read(("validate.py",))
    assert "upload_gate" not in attributes_read(("workers.py",))


def test_the_handlers_never_reach_the_runtime():
    """Handlers get parts only through their area's object; only the wiring (context.py) and
    `serve` know the composition root."""
    importers = sorted(
        str(path.relative_to(SERVICE))
        for path in SERVICE.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom)
        and (node.module or "").startswith("horde_scanner.runtime")
    )
    assert importers == ["context.py", "serve.py"]
