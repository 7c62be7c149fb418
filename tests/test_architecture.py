"""The house rules of docs/architecture.md, checked over the package's own source.

* No import cycle between the top-level modules and packages of ``napari_exouptake``
  (imports inside functions count: a lazy import still ties two rooms together).
* No private name (``_x``) imported from another top-level module or package, nor reached
  through a module of another one (``io._x``, ``getattr(io, "_x")``); share through a public
  helper instead. Importing a private *module* (``from . import _numba``) is fine, and
  so is anything inside one package (``segmentation.engine`` using ``segmentation.device``).
* ``docs/architecture.md`` names every module of the package in its module table, and only
  modules that exist.
* No core module imports a face: ``cli``, ``commands``, ``_widgets`` (anywhere in its source),
  nor napari, Qt, magicgui, torch or cellpose when it is imported (checked in a fresh
  interpreter).
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import napari_exouptake

PKG = "napari_exouptake"
ROOT = Path(napari_exouptake.__file__).resolve().parent

#: the faces: command line, napari widgets and the npe2 hooks
FACES = ("cli", "commands", "_widgets", "_reader", "_writer", "_sample_data")
#: what no core module may import, directly or through another module
FACE_MODULES = tuple(f"{PKG}.{f}" for f in ("cli", "commands", "_widgets"))
HEAVY = ("napari", "magicgui", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "torch", "cellpose")


def _modules() -> dict[str, Path]:
    """Dotted name (without the package prefix; ``""`` for the package) -> source file."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _unit(name: str) -> str:
    """The top-level module or package a dotted name belongs to (``""``: the package)."""
    return name.split(".")[0]


def _is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def _imports(name: str) -> Iterator[tuple[str, str | None, int]]:
    """(target module, imported name or None, line) for every import of the package in a module.

    ``from .x import y`` gives ("x", "y") when ``x.y`` is not itself a module, else ("x.y", None).
    """
    path = MODULES[name]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if _is_package(name) else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PKG or alias.name.startswith(PKG + "."):
                    yield alias.name[len(PKG) + 1 :], None, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                if node.level > 1:
                    base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            elif node.module and (node.module == PKG or node.module.startswith(PKG + ".")):
                target = node.module[len(PKG) + 1 :]
            else:
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}" if target else alias.name
                if sub in MODULES:
                    yield sub, None, node.lineno
                else:
                    yield target, alias.name, node.lineno


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name in MODULES:
        src = _unit(name)
        for target, _, _ in _imports(name):
            dst = _unit(target)
            if dst != src and src and dst:
                graph.setdefault(src, set()).add(dst)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _private_imports() -> list[tuple[str, str, str]]:
    """(importer unit, owner unit, "module:line imports _name from module") per offence."""
    found = []
    for name in MODULES:
        for target, imported, line in _imports(name):
            if imported is None or _unit(target) == _unit(name):
                continue
            if imported.startswith("_") and not imported.startswith("__"):
                what = f"{name}:{line} imports {imported} from {target or PKG}"
                found.append((_unit(name), _unit(target), what))
    return found


def _module_aliases(name: str) -> dict[str, str]:
    """Local names a module binds to modules of the package (``from .. import io`` -> io)."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if _is_package(name) else name.rpartition(".")[0]
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".") if package else []
            if node.level > 1:
                base = base[: len(base) - (node.level - 1)]
            target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            for alias in node.names:
                sub = f"{target}.{alias.name}" if target else alias.name
                if sub in MODULES:
                    out[alias.asname or alias.name] = sub
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname and alias.name.startswith(PKG + "."):
                    out[alias.asname] = alias.name[len(PKG) + 1 :]
    return out


def _private_attribute_uses() -> list[str]:
    """``module._x`` or ``getattr(module, "_x")`` on a module of another unit, per offence."""
    found = []
    for name, path in MODULES.items():
        aliases = {a: m for a, m in _module_aliases(name).items() if _unit(m) != _unit(name)}
        if not aliases:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            owner = attr = None
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                owner, attr = node.value.id, node.attr
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("getattr", "hasattr")
                and len(node.args) >= 2
                and isinstance(node.args[0], ast.Name)
                and isinstance(node.args[1], ast.Constant)
                and isinstance(node.args[1].value, str)
            ):
                owner, attr = node.args[0].id, node.args[1].value
            if owner in aliases and attr.startswith("_") and not attr.startswith("__"):
                found.append(f"{name}:{node.lineno} uses {aliases[owner]}.{attr}")
    return found


def _is_core(name: str) -> bool:
    return _unit(name) not in FACES


# --------------------------------------------------------------------------------------------
# the checks work
# --------------------------------------------------------------------------------------------
def test_import_reader_resolves_relative_and_private_modules():
    imports = {(t, n) for t, n, _ in _imports("segmentation.engine")}
    assert ("segmentation.models", "resolve_model") in imports  # from .models import ...
    assert ("config", "AssayConfig") in imports  # from ..config import ... (TYPE_CHECKING)
    imports = {(t, n) for t, n, _ in _imports("")}
    assert ("_version", "__version__") in imports
    # a module named in ``from . import x`` is a module, not a name
    assert {t for t, n, _ in _imports("commands.train")} >= {"segmentation.training"}


def test_private_attribute_finder_sees_module_aliases():
    # batch/stacks.py binds ``io`` with ``from .. import io``
    assert _module_aliases("batch.stacks").get("io") == "io"


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


# --------------------------------------------------------------------------------------------
# the rules
# --------------------------------------------------------------------------------------------
def test_no_import_cycle_between_top_level_modules():
    assert _cycles(_graph()) == []


def test_no_private_name_imported_across_modules():
    assert [w for _, _, w in _private_imports()] == []


def test_no_private_name_reached_through_another_units_module():
    assert _private_attribute_uses() == []


def test_core_modules_name_no_face_in_their_source():
    bad = [
        f"{name}:{line} imports {target}"
        for name in MODULES
        if _is_core(name)
        for target, _, line in _imports(name)
        if _unit(target) in ("cli", "commands", "_widgets")
    ]
    assert bad == []


_PROBE = """
import importlib, json, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {heavy!r}
    or any(m == f or m.startswith(f + ".") for f in {faces!r}))))
"""


def _probe(*modules: str) -> list[str]:
    """Forbidden modules in ``sys.modules`` after a fresh interpreter imports ``modules``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT.parent), env.get("PYTHONPATH", "")])
    code = _PROBE.format(heavy=set(HEAVY), faces=FACE_MODULES)
    proc = subprocess.run(
        [sys.executable, "-c", code, *modules],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_probe_sees_a_face():
    assert f"{PKG}.commands" in _probe(f"{PKG}.commands.train")


def test_core_modules_import_no_face_napari_qt_or_torch():
    core = [f"{PKG}.{n}" if n else PKG for n in MODULES if _is_core(n)]
    assert len(core) > 20
    found = _probe(*core)  # one interpreter for all: the union of what each one imports
    if found:  # name the modules that pull them in, one fresh interpreter each
        culprits = {m: _probe(m) for m in core}
        pytest.fail(
            "core modules import faces or heavy packages: "
            + "; ".join(f"{m}: {', '.join(v)}" for m, v in culprits.items() if v)
        )


# --------------------------------------------------------------------------------------------
# docs/architecture.md
# --------------------------------------------------------------------------------------------
DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"


def _documented_modules(text: str) -> set[str]:
    """Paths named in the "## Modules" table: ``x.py``, ``pkg/`` and, in a package's row,
    ``pkg/y.py`` for each ``y.py`` of its second column."""
    section = text.split("\n## Modules", 1)[1].split("\n## ", 1)[0]
    named = set()
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or not cells[0].startswith("`"):
            continue
        firsts = re.findall(r"`([^`]+)`", cells[0])
        named.update(firsts)
        packages = [f for f in firsts if f.endswith("/")]
        assert len(packages) <= 1, f"one package per row: {line}"
        if packages:
            named.update(packages[0] + m for m in re.findall(r"`([\w]+\.py)`", cells[1]))
    return named


def _package_modules() -> set[str]:
    out = set()
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT).as_posix()
        if path.name == "__init__.py" and path.parent != ROOT:
            rel = rel[: -len("__init__.py")]
        out.add(rel)
    return out


def test_documented_modules_parser():
    table = (
        "# Doc\n## Modules\n| a | b |\n| --- | --- |\n"
        "| `x.py`, `y.py` | z |\n| `p/` | `q.py`, `r` |\n## Next\n| `n.py` | x |\n"
    )
    assert _documented_modules(table) == {"x.py", "y.py", "p/", "p/q.py"}


@pytest.mark.skipif(not DOC.is_file(), reason="docs/ is not beside the package (installed copy)")
def test_architecture_doc_names_every_module_and_only_those():
    named = _documented_modules(DOC.read_text(encoding="utf-8"))
    actual = _package_modules()
    assert sorted(actual - named) == [], "modules missing from docs/architecture.md's table"
    assert sorted(named - actual) == [], "docs/architecture.md names modules that do not exist"


def test_documented_spot_columns_equal_the_code():
    """The spot columns listed in docs/INTERFACES.md and docs/quantification.md are the code's
    ``SPOT_COLUMNS`` (plus ``cell_id``, added by measure)."""
    import re

    from napari_exouptake.spots import SPOT_COLUMNS

    docs = ROOT.parents[1] / "docs"
    interfaces = (docs / "INTERFACES.md").read_text()
    block = interfaces[interfaces.index("- Spots table") : interfaces.index("`df.attrs`")]
    listed = re.findall(r"`([a-z_]+)`", block)
    assert [c for c in listed if c not in ("cell_id", "SPOT_COLUMNS")] == list(SPOT_COLUMNS)
    quant = (docs / "quantification.md").read_text()
    table = quant[quant.index("### Spots table columns") : quant.index("`match_spots(pred")]
    rows = re.findall(r"^\| (.+?) \|", table, flags=re.M)[2:]
    cols = [c for row in rows for c in re.findall(r"`([a-z_]+)`", row) if c != "cell_id"]
    assert cols == list(SPOT_COLUMNS)
