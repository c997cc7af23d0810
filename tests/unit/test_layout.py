"""The layout's rules, read from the code itself: every import of every module (those inside
functions too) is parsed and checked against the rooms table below.

- One room per package of horde_scanner (plus rooms of top-level modules); no carve-outs.
- No import cycle between modules (imports made only for type checking may close one).
- Rooms know the rooms below them, never above: a module imports its own room or a lower one.
- `horde_scanner` reaches `local_gpu` through one plug-in point, by name, never by an import.
- `local_gpu` uses only the lower rooms; `bench/` never imports `tests`.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("horde_scanner", "local_gpu", "bench", "tests")

# The rooms, lowest first: (room, level, modules). A module imports modules of its own room or
# of a room with a lower level. Every room is one package of horde_scanner (all its modules) or
# top-level modules of horde_scanner; no room is a part of another room's package (checked
# below), so the folders show the layers.
ROOMS: list[tuple[str, int, tuple[str, ...]]] = [
    # The exception root every room's errors derive from (errors.py): below everything.
    ("errors", 0, ("horde_scanner.errors",)),
    # Plain data every room reads: what a verdict is, how times are written; and how any room
    # stops its background tasks.
    (
        "base",
        1,
        (
            "horde_scanner",
            "horde_scanner.verdict",
            "horde_scanner.config_keys",
            "horde_scanner.timefmt",
            "horde_scanner.tasks",
        ),
    ),
    # Sniffing, safe decoding, frames, hashing.
    ("media", 1, ("horde_scanner.media",)),
    # The Settings tree, and what is generated from it (the reference page, `config show`); the
    # backend registry, which names `backend.kind` takes (backends are imported by name, when
    # built), read by the configuration.
    (
        "config",
        2,
        (
            "horde_scanner.config",
            "horde_scanner.config_reference",
            "horde_scanner.backend_registry",
        ),
    ),
    # The rules every backend reads (which phrases, how frames are kept): below the backends.
    ("policy", 3, ("horde_scanner.policy",)),
    # The only door to the database.
    ("store", 3, ("horde_scanner.store",)),
    # Storage a sweep walks (local disk, S3, SSH): listing and reading, nothing judged.
    ("sources", 3, ("horde_scanner.sources",)),
    # The parts.
    ("backends", 4, ("horde_scanner.backends",)),
    # Shared signals: the PDQ and embedding indexes, the list formats, publishing, subscriptions.
    ("signals", 4, ("horde_scanner.signals",)),
    # Peers we talk to: pict-rs, Lemmy, notifications.
    ("integrations", 5, ("horde_scanner.integrations",)),
    ("judging", 5, ("horde_scanner.judging",)),
    ("review", 6, ("horde_scanner.review",)),
    # Who uploaded a positive and where Lemmy uses it; admin actions through Lemmy's API
    # (above review: the record for another instance reads its decisions).
    ("moderation", 7, ("horde_scanner.moderation",)),
    # A sweep of a source: its runner, its actions, its progress numbers; and the sweeps'
    # quarantine as a holder the admin's decisions reach.
    ("sweep", 7, ("horde_scanner.sweep",)),
    # The one composition root: builds the parts a caller asks for (and opens them for a sweep).
    ("runtime", 8, ("horde_scanner.runtime",)),
    # Who uses the parts: the HTTP service (and its /metrics), then the CLI.
    ("service", 9, ("horde_scanner.service",)),
    ("cli", 10, ("horde_scanner.cli",)),
    # Fakes and a running service for tests and benchmarks: nothing in the product uses them.
    ("testing", 11, ("horde_scanner.testing",)),
]
LEVEL = {name: level for name, level, _ in ROOMS}

# The optional torch backend knows only these rooms of horde_scanner.
LOCAL_GPU_MAY_IMPORT = (
    "horde_scanner.verdict",
    "horde_scanner.errors",
    "horde_scanner.tasks",
    "horde_scanner.config",
    "horde_scanner.media",
    "horde_scanner.policy",
    "horde_scanner.backends.base",
)
# The one module of horde_scanner that loads local_gpu (lazily, by name).
PLUGIN_POINT = "horde_scanner.backends.plugins"


@dataclass(frozen=True, slots=True)
class Import:
    source: str
    target: str
    line: int
    # Inside a function (a lazy import) rather than at module level.
    lazy: bool
    # Under `if TYPE_CHECKING:`: never executed.
    typing_only: bool


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[module_name(path)] = path
    return found


MODULES = all_modules()


def _ours(name: str) -> bool:
    return name.split(".")[0] in PACKAGES


def _resolve(source: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = source.split(".")
    if path.name != "__init__.py":
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(source: str, path: Path) -> Iterator[Import]:
    tree = ast.parse(path.read_text(), str(path))

    def walk(node: ast.AST, lazy: bool, typing_only: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if _ours(alias.name):
                        yield Import(source, alias.name, child.lineno, lazy, typing_only)
            elif isinstance(child, ast.ImportFrom):
                target = _resolve(source, path, child)
                if not _ours(target):
                    continue
                for alias in child.names:
                    # `from pkg import module` imports the module, not just the package.
                    sub = f"{target}.{alias.name}"
                    name = sub if sub in MODULES else target
                    yield Import(source, name, child.lineno, lazy, typing_only)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    yield from walk(ast.Module(body=[stmt], type_ignores=[]), lazy, True)
                for stmt in child.orelse:
                    yield from walk(ast.Module(body=[stmt], type_ignores=[]), lazy, typing_only)
            else:
                inner = lazy or isinstance(
                    child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda
                )
                yield from walk(child, inner, typing_only)

    yield from walk(tree, False, False)


IMPORTS = [imp for name, path in MODULES.items() for imp in imports_of(name, path)]


def room(module: str) -> str | None:
    best: tuple[int, str] | None = None
    for name, _, prefixes in ROOMS:
        for prefix in prefixes:
            if module == prefix or ("." in prefix and module.startswith(prefix + ".")):
                if best is None or len(prefix) > best[0]:
                    best = (len(prefix), name)
    return best[1] if best else None


def where(imp: Import) -> str:
    return f"{MODULES[imp.source].relative_to(ROOT)}:{imp.line} imports {imp.target}"


def test_the_parser_sees_imports_inside_functions_and_type_checking_blocks():
    # A sample of what the tables below rely on, so a parser that saw nothing would fail here.
    lazy = [i for i in IMPORTS if i.lazy and i.source == "horde_scanner.media.decode"]
    assert [i.target for i in lazy] == ["horde_scanner.media.video"]
    assert any(i.target == "horde_scanner.media.types" for i in IMPORTS if not i.lazy)
    assert len(MODULES) > 100 and len(IMPORTS) > 300


# Imports inside functions that close a cycle, each with why it is there. Every other cycle,
# at module level or through a function, fails.
# No lazy import may close a cycle either (the store's sqlite.py <-> postgres.py allowance went
# with the store's move onto SQLAlchemy Core). Kept as a set so an exception, should one ever be
# argued for, is named here with its reason.
LAZY_CYCLES_ALLOWED: set[tuple[str, str]] = set()


def cycles(lazy_too: bool) -> list[list[str]]:
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for imp in IMPORTS:
        if imp.typing_only or imp.target not in MODULES or imp.target == imp.source:
            continue
        if imp.lazy and (not lazy_too or (imp.source, imp.target) in LAZY_CYCLES_ALLOWED):
            continue
        graph[imp.source].add(imp.target)
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                found.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_no_import_cycle_between_modules():
    assert cycles(lazy_too=False) == []


def test_no_cycle_through_imports_inside_functions_either():
    assert cycles(lazy_too=True) == []
    lazy = {(i.source, i.target) for i in IMPORTS if i.lazy}
    assert LAZY_CYCLES_ALLOWED <= lazy  # an allowance outlives nothing it was for


def carve_outs(rooms: list[tuple[str, int, tuple[str, ...]]]) -> list[str]:
    """What a rooms table names that is not a whole package of horde_scanner or a module
    directly under horde_scanner; and the packages that are not a room of their own name."""
    wrong = []
    for name, _, prefixes in rooms:
        for prefix in prefixes:
            parts = prefix.split(".")
            package = (
                len(parts) == 2 and (ROOT / "horde_scanner" / parts[1] / "__init__.py").exists()
            )
            module = len(parts) == 2 and (ROOT / "horde_scanner" / f"{parts[1]}.py").exists()
            if prefix != "horde_scanner" and not (package or module):
                wrong.append(f"{name}: {prefix} is part of a package")
            elif package and name != parts[1]:
                wrong.append(f"{name}: package {prefix} is not a room of its own")
    named = {prefix for _, _, prefixes in rooms for prefix in prefixes}
    for init in sorted((ROOT / "horde_scanner").glob("*/__init__.py")):
        if f"horde_scanner.{init.parent.name}" not in named:
            wrong.append(f"package horde_scanner.{init.parent.name} has no room")
    return wrong


def test_one_room_per_package_and_no_carve_outs():
    """A room never names a module or subpackage inside a package, so every package's modules
    live in its one room and the folders show the layers."""
    assert carve_outs(ROOMS) == []
    named = [prefix for _, _, prefixes in ROOMS for prefix in prefixes]
    assert len(named) == len(set(named))


def test_the_carve_out_check_sees_one():
    sample = [*ROOMS, ("frames", 1, ("horde_scanner.policy.frames",))]
    assert carve_outs(sample) == ["frames: horde_scanner.policy.frames is part of a package"]
    shared = [r for r in ROOMS if r[0] != "signals"] + [("lists", 3, ("horde_scanner.signals",))]
    assert carve_outs(shared) == ["lists: package horde_scanner.signals is not a room of its own"]


def test_every_module_of_horde_scanner_has_a_room():
    assert [m for m in MODULES if m.startswith("horde_scanner") and room(m) is None] == []


def test_rooms_know_the_rooms_below_them_never_above():
    wrong = []
    for imp in IMPORTS:
        if not imp.source.startswith("horde_scanner") or not imp.target.startswith("horde_scanner"):
            continue
        src, dst = room(imp.source), room(imp.target)
        assert src is not None and dst is not None, where(imp)
        if src != dst and LEVEL[dst] >= LEVEL[src]:
            wrong.append(f"{where(imp)} (room {src} {LEVEL[src]} -> {dst} {LEVEL[dst]})")
    assert wrong == []


def test_the_parts_never_import_the_service_or_the_cli():
    top = ("horde_scanner.service", "horde_scanner.cli")
    wrong = [
        where(imp)
        for imp in IMPORTS
        if imp.source.startswith("horde_scanner")
        and not imp.source.startswith((*top, "horde_scanner.testing"))
        and imp.target.startswith(top)
    ]
    assert wrong == []


def test_horde_scanner_reaches_local_gpu_only_through_the_plug_in_point():
    wrong = [
        where(imp)
        for imp in IMPORTS
        if imp.source.startswith("horde_scanner") and imp.target.startswith("local_gpu")
    ]
    assert wrong == []
    # The plug-in point loads it by name; no other module names it in an import_module call.
    by_name = []
    for name, path in MODULES.items():
        if not name.startswith("horde_scanner"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and node.value.split(".")[0] == "local_gpu"
            ):
                by_name.append(name)
    assert set(by_name) == {PLUGIN_POINT}


def test_the_base_install_never_loads_local_gpu_or_torch():
    """Importing every module of horde_scanner (the service, the CLI, the sweep) loads neither."""
    names = sorted(
        m for m in MODULES if m.startswith("horde_scanner") and not m.endswith("__main__")
    )
    code = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('local_gpu', 'torch')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_local_gpu_uses_only_the_lower_rooms():
    wrong = [
        where(imp)
        for imp in IMPORTS
        if imp.source.startswith("local_gpu")
        and imp.target.startswith("horde_scanner")
        and not any(
            imp.target == allowed or imp.target.startswith(allowed + ".")
            for allowed in LOCAL_GPU_MAY_IMPORT
        )
    ]
    assert wrong == []


def test_nothing_outside_tests_imports_tests():
    wrong = [
        where(imp)
        for imp in IMPORTS
        if not imp.source.startswith("tests") and imp.target.split(".")[0] == "tests"
    ]
    assert wrong == []
    # And the product never imports its benchmarks.
    assert [
        where(imp)
        for imp in IMPORTS
        if imp.source.startswith(("horde_scanner", "local_gpu")) and imp.target.startswith("bench")
    ] == []


# What only the store may do: write SQL, or reach its connection. The fakes and test helpers
# (horde_scanner/testing) read tables the way tests do.
_SQL = re.compile(
    r"^\s*(SELECT|INSERT|UPDATE|DELETE|CREATE|ALTER|DROP|PRAGMA|BEGIN|COMMIT|WITH)\s", re.M
)
_CONNECTION = ("db", "aside", "_db")


def _sql_uses(path: Path) -> Iterator[str]:
    tree = ast.parse(path.read_text(), str(path))
    name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if _SQL.search(node.value):
                yield f"{name}:{node.lineno}: SQL {node.value.strip()[:40]!r}"
        elif isinstance(node, ast.Attribute) and node.attr in _CONNECTION:
            if isinstance(node.value, ast.Name | ast.Attribute):
                yield f"{name}:{node.lineno}: the store's connection (.{node.attr})"


def test_the_store_is_the_only_door_to_sql():
    """Each part's tables are queried by the part's own methods in horde_scanner/store/;
    nothing else in the package writes SQL or takes the store's connection."""
    found = [
        use
        for path in sorted((ROOT / "horde_scanner").rglob("*.py"))
        if path.relative_to(ROOT).parts[1] not in ("store", "testing")
        for use in _sql_uses(path)
    ]
    assert found == []


def test_the_door_check_sees_sql_and_connections(tmp_path: Path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "async def f(store):\n"
        "    await store.db.execute('SELECT 1')\n"
        "    async with store.aside() as db:\n"
        "        pass\n"
        "    text = 'Selected images'  # prose is not SQL\n"
    )
    assert sorted(_sql_uses(sample)) == [
        "sample.py:2: SQL 'SELECT 1'",
        "sample.py:2: the store's connection (.db)",
        "sample.py:3: the store's connection (.aside)",
    ]


def drawn_layers(text: str) -> dict[int, set[str]]:
    """The layers a page draws: the code block whose lines are `LEVEL name/ name.py ... words`."""
    drawn: dict[int, set[str]] = {}
    for line in text.splitlines():
        tokens = line.split()
        if len(tokens) < 2 or not tokens[0].isdigit() or not tokens[1].endswith(("/", ".py")):
            continue
        names = set()
        for token in tokens[1:]:
            if not token.endswith(("/", ".py")):
                break
            names.add(token)
        drawn[int(tokens[0])] = names
    return drawn


def rooms_as_drawn() -> dict[int, set[str]]:
    layers: dict[int, set[str]] = {}
    for _, level, prefixes in ROOMS:
        for prefix in prefixes:
            if prefix == "horde_scanner":
                continue
            name = prefix.split(".")[1]
            package = (ROOT / "horde_scanner" / name / "__init__.py").exists()
            layers.setdefault(level, set()).add(f"{name}/" if package else f"{name}.py")
    return layers


def test_the_docs_draw_the_rooms_as_they_are():
    """The README's Development section and the development page draw this table."""
    expected = rooms_as_drawn()
    assert drawn_layers((ROOT / "README.md").read_text()) == expected
    assert drawn_layers((ROOT / "docs" / "development.md").read_text()) == expected
    # And the reader sees a wrong drawing: a package one line too high is caught.
    wrong = (ROOT / "README.md").read_text().replace(" 6 review/", " 7 review/")
    assert drawn_layers(wrong) != expected
