"""Handlers receive narrow typed dependencies: one small object per API area, built from the
runtime's parts in service/context.py, read by that area's handlers under its own app key.

Read from the code (as tests/unit/test_layout.py reads imports): which dependency key each module
of service/ reads and imports, which fields of its area's object it reads, and which store
methods the admin areas call, so that neither a broad bag, nor a field only tests read, nor a
store wider than its handlers use comes back.
"""

from __future__ import annotations

import ast
import dataclasses
import typing
from pathlib import Path

from horde_scanner.judging import policy_diff
from horde_scanner.review import evidence
from horde_scanner.service import context
from horde_scanner.store import interfaces

SERVICE = Path(context.__file__).resolve().parent

# Area -> (its app key, its dependency class, the modules whose handlers read it).
AREAS: dict[str, tuple[str, type, tuple[str, ...]]] = {
    "edge": ("EDGE", context.EdgeDeps, ("app.py", "guard.py", "serve.py")),
    "validate": ("VALIDATE", context.ValidateDeps, ("validate.py",)),
    "workers": ("WORKERS", context.WorkersDeps, ("workers.py",)),
    "hashes": ("HASHES", context.HashesDeps, ("hashes.py",)),
    "health": ("HEALTH", context.HealthDeps, ("health.py", "app.py")),
    # The admin API and the review page, one area each (admin/).
    "sign_in": ("SIGN_IN", context.SignInDeps, ("admin/auth.py", "admin/page.py")),
    "review": ("REVIEW", context.ReviewDeps, ("admin/review_api.py", "admin/review_page.py")),
    "preview": ("PREVIEW", context.PreviewDeps, ("admin/preview_page.py",)),
    "lemmy": ("LEMMY", context.LemmyDeps, ("admin/lemmy_api.py", "admin/lemmy_page.py")),
    "export": ("EXPORT", context.ExportDeps, ("admin/export_api.py",)),
    "status": ("STATUS", context.StatusDeps, ("admin/status_api.py",)),
    "policy": ("POLICY", context.PolicyDeps, ("admin/policy.py",)),
}
ADMIN_AREAS = ("sign_in", "review", "preview", "lemmy", "export", "status", "policy")
KEYS = {key for key, _, _ in AREAS.values()} | {"RUNTIME"}
# An admin area's object stays small: past this, it is two areas.
MAX_ADMIN_FIELDS = 6


def _tree(module: str) -> ast.Module:
    return ast.parse((SERVICE / module).read_text(), module)


def _modules() -> list[str]:
    return [
        str(path.relative_to(SERVICE))
        for path in sorted(SERVICE.rglob("*.py"))
        if path.name != "context.py"
    ]


def _key_of(node: ast.AST) -> str | None:
    """KEY when `node` is a lookup `something[KEY]` of a dependency key."""
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Name):
        if node.slice.id in KEYS:
            return node.slice.id
    return None


def keys_read(module: str) -> set[str]:
    """The dependency keys a module looks up on the app (`request.app[KEY]`, `app[KEY]`)."""
    return {key for node in ast.walk(_tree(module)) if (key := _key_of(node)) is not None}


def keys_imported(module: str) -> set[str]:
    """The dependency keys and objects a module imports from service/context.py."""
    names = {cls.__name__ for _, cls, _ in AREAS.values()} | KEYS
    return {
        alias.name
        for node in ast.walk(_tree(module))
        if isinstance(node, ast.ImportFrom) and node.module == "horde_scanner.service.context"
        for alias in node.names
        if alias.name in names
    }


def _names_in(annotation: ast.expr | None) -> set[str]:
    """Every name an annotation mentions (`X`, `"X"`, `tuple[X, Y]`, `X | None`)."""
    if annotation is None:
        return set()
    if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
        return _names_in(ast.parse(annotation.value, mode="eval").body)
    return {n.id for n in ast.walk(annotation) if isinstance(n, ast.Name)}


def _tuple_types(annotation: ast.expr | None) -> list[set[str]]:
    """The element types of a `tuple[A, B, ...]` return annotation, in order."""
    if isinstance(annotation, ast.Subscript) and isinstance(annotation.slice, ast.Tuple):
        return [_names_in(e) for e in annotation.slice.elts]
    return []


def fields_read(key: str, cls: type, modules: tuple[str, ...]) -> set[str]:
    """The attributes the modules' functions read of the area's object: on `app[KEY]` itself,
    on a name bound to it (`svc = request.app[KEY]`, `rt, edge = app[RUNTIME], app[KEY]`,
    `svc, pool, who = _pool(request)` with `-> tuple[XDeps, ...]`), on a parameter typed XDeps."""
    read: set[str] = set()
    name = cls.__name__
    for module in modules:
        tree = _tree(module)
        functions = [
            f for f in ast.walk(tree) if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
        ]
        returns = {f.name: _tuple_types(f.returns) for f in functions}
        for function in functions:
            bound = {
                a.arg
                for a in function.args.args + function.args.kwonlyargs
                if name in _names_in(a.annotation)
            }
            for node in ast.walk(function):
                targets, value = [], None
                if isinstance(node, ast.Assign):
                    targets, value = node.targets, node.value
                elif isinstance(node, ast.AnnAssign):
                    targets, value = [node.target], node.value
                for target in targets:
                    if isinstance(target, ast.Name) and _key_of(value) == key:  # type: ignore[arg-type]
                        bound.add(target.id)
                    elif isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple):
                        for t, v in zip(target.elts, value.elts, strict=False):
                            if isinstance(t, ast.Name) and _key_of(v) == key:
                                bound.add(t.id)
                    elif (
                        isinstance(target, ast.Tuple)
                        and isinstance(value, ast.Call)
                        and isinstance(value.func, ast.Name)
                    ):
                        types = returns.get(value.func.id, [])
                        for t, names in zip(target.elts, types, strict=False):
                            if isinstance(t, ast.Name) and name in names:
                                bound.add(t.id)
            for node in ast.walk(function):
                if not isinstance(node, ast.Attribute):
                    continue
                if _key_of(node.value) == key or (
                    isinstance(node.value, ast.Name) and node.value.id in bound
                ):
                    read.add(node.attr)
    return read


def store_methods_called(modules: tuple[str, ...]) -> set[str]:
    """What the modules call on a `.store` (the only store an admin module reaches is its
    area's: each reads one area's object)."""
    return {
        node.attr
        for module in modules
        for node in ast.walk(_tree(module))
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "store"
    }


def _concerns(store_type: type) -> list[type]:
    """The store interfaces (store/interfaces.py) a store type is made of: itself when it is
    one, else the ones it combines (as judging's JudgeStore combines its five)."""
    if store_type.__module__ == interfaces.__name__:
        return [store_type]
    return [b for b in store_type.__bases__ if b.__module__ == interfaces.__name__]


def _methods(protocol: type) -> set[str]:
    return {name for name in vars(protocol) if not name.startswith("_")}


def test_each_module_reads_only_its_own_areas_dependencies():
    expected: dict[str, set[str]] = {}
    for key, _, modules in AREAS.values():
        for module in modules:
            expected.setdefault(module, set()).add(key)
    # serve.py prints its start-up summary from the composition root itself.
    expected["serve.py"].add("RUNTIME")
    found = {module: keys_read(module) for module in _modules()}
    assert {m: k for m, k in found.items() if k} == expected
    # Each admin module reads one area's object, and imports no other area's key or object.
    for area in ADMIN_AREAS:
        key, cls, modules = AREAS[area]
        for module in modules:
            assert found[module] == {key}, module
            assert keys_imported(module) <= {key, cls.__name__}, module


def test_every_field_of_an_areas_dependencies_is_read_by_its_handlers():
    """A field no handler of the area reads (one only tests read) has no place there."""
    fields = {
        area: {f.name for f in dataclasses.fields(cls)} for area, (_, cls, _) in AREAS.items()
    }
    read = {area: fields_read(key, cls, modules) for area, (key, cls, modules) in AREAS.items()}
    assert {area: sorted(fields[area] - read[area]) for area in AREAS} == {a: [] for a in AREAS}
    # And nothing is read that the object does not hold (mypy says so too).
    assert {area: sorted(read[area] - fields[area]) for area in AREAS} == {a: [] for a in AREAS}


def test_admin_areas_are_small():
    sizes = {area: len(dataclasses.fields(AREAS[area][1])) for area in ADMIN_AREAS}
    assert max(sizes.values()) <= MAX_ADMIN_FIELDS, sizes


def test_no_area_takes_the_whole_store():
    whole = {
        (area, f)
        for area, (_, cls, _) in AREAS.items()
        for f, hint in typing.get_type_hints(cls).items()
        if interfaces.UnifiedStore in (hint, *typing.get_args(hint))
    }
    assert whole == set()


def test_each_admin_areas_store_is_the_narrowest_its_handlers_use():
    """Every store interface an admin area's store combines has a method its handlers call,
    and they call nothing else; an area that hands its store on (to evidence.records, to
    run_diff) takes exactly the type the callee asks for, and calls only what that offers."""
    handed_on = {
        "export": typing.get_type_hints(evidence.records)["store"],
        "policy": typing.get_type_hints(policy_diff.run_diff)["store"],
    }
    checked = []
    for area in ADMIN_AREAS:
        key, cls, modules = AREAS[area]
        store_type = typing.get_type_hints(cls).get("store")
        if store_type is None:
            continue
        checked.append(area)
        called = store_methods_called(modules)
        concerns = _concerns(store_type)
        assert concerns, f"{area}: {store_type.__name__} is made of no store interface"
        offered = set().union(*(_methods(c) for c in concerns))
        assert called <= offered, (area, called - offered)
        if area in handed_on:
            assert store_type is handed_on[area], area
            continue
        unused = [c.__name__ for c in concerns if not _methods(c) & called]
        assert unused == [], f"{area} takes {unused} and calls none of their methods"
    assert checked == ["sign_in", "review", "preview", "lemmy", "export", "policy"]


def test_the_checks_see_keys_fields_and_store_calls():
    # Samples the checks above rely on, so a parser that found nothing would fail here.
    assert keys_read("validate.py") == {"VALIDATE"}
    assert {"upload_gate", "late_admissions", "judge"} <= fields_read(
        "VALIDATE", context.ValidateDeps, ("validate.py",)
    )
    assert "upload_gate" not in fields_read("WORKERS", context.WorkersDeps, ("workers.py",))
    assert {"pool", "policy"} <= fields_read("WORKERS", context.WorkersDeps, ("workers.py",))
    assert {"late_purges", "previews"} <= fields_read(
        "REVIEW", context.ReviewDeps, AREAS["review"][2]
    )
    assert {"provenance_of", "lemmy_actions", "get_verdict"} <= store_methods_called(
        AREAS["lemmy"][2]
    )
    assert _concerns(context.LemmyAreaStore) == [
        interfaces.ProvenanceStore,
        interfaces.LemmyActionStore,
        interfaces.VerdictStore,
    ]


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
