"""The layers hold: every module's imports (function-level ones included) go to its own layer or lower.

library histoxai/ (1) <- components/<step>/ (2) <- pipelines/ (3) <- the review app app/ and the
`histoxai` dispatcher (4). A step never imports another step; the app imports only the library.
infra/ holds deployed entry points, which sit on top like the dispatcher.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# source folder -> the package it installs as (pyproject.toml's package-dir)
PACKAGES = {"histoxai": "histoxai", "components": "histoxai.components", "pipelines": "histoxai.pipelines",
            "app": "histoxai.app", "infra": "infra"}
LAYERS = (("histoxai.app", 4), ("histoxai.cli", 4), ("infra", 4), ("histoxai.pipelines", 3),
          ("histoxai.components", 2), ("histoxai", 1))
MAX_LINES = 400


def module_name(path: Path) -> str:
    relative = path.relative_to(REPO).with_suffix("")
    parts = list(relative.parts)
    name = ".".join([PACKAGES[parts[0]], *parts[1:]])
    return name.removesuffix(".__init__")


def source_files() -> list[Path]:
    return sorted(path for folder in PACKAGES for path in (REPO / folder).rglob("*.py")
                  if "__pycache__" not in path.parts)


MODULES = {module_name(p): p for p in source_files()}


def layer(module: str) -> int | None:
    """The layer of a project module, None for anything else (the standard library, dependencies)."""
    for prefix, number in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return number
    return None


def step(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[:2] == ["histoxai", "components"] else None


def _run_at_import(tree: ast.AST):
    """The nodes that run when the module is imported: not function bodies, not `if TYPE_CHECKING:`."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
            todo += node.orelse
            continue
        todo += [child for child in ast.iter_child_nodes(node)
                 if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))]


def imported_modules(tree: ast.AST, importer: str, *, at_import_only: bool = False) -> list[tuple[int, str]]:
    """(line, module) of every import anywhere in the tree (only those run on importing it, with
    at_import_only); `from pkg import name` counts as pkg.name when that is a module of the project."""
    found = []
    package = importer if MODULES.get(importer, Path()).name == "__init__.py" else importer.rpartition(".")[0]
    for node in (_run_at_import(tree) if at_import_only else ast.walk(tree)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.append((node.lineno, candidate if candidate in MODULES else base))
    return found


def violations(importer: str, tree: ast.AST) -> list[str]:
    """What is wrong with a module's imports, one line each."""
    own, own_step = layer(importer), step(importer)
    problems = []
    for line, module in imported_modules(tree, importer):
        theirs = layer(module)
        if theirs is None or module == importer:
            continue
        where = f"{importer}:{line} imports {module}"
        if theirs > own:
            problems.append(f"{where}: layer {theirs} above its own layer {own}")
        elif own_step and step(module) and step(module) != own_step:
            problems.append(f"{where}: a step imports another step")
        elif importer.startswith("histoxai.app") and theirs > 1 and not module.startswith("histoxai.app"):
            problems.append(f"{where}: the app reads runs only through the library")
    return problems


def test_every_module_imports_only_its_own_layer_or_lower():
    problems = []
    for name, path in MODULES.items():
        problems += violations(name, ast.parse(path.read_text(), str(path)))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(("importer", "source", "why"), [
    ("histoxai.model", "def f():\n    from histoxai.components.train import cli\n", "above its own layer"),
    ("histoxai.components.tune.tune", "import histoxai.components.train.component\n", "another step"),
    ("histoxai.components.report.report", "from histoxai.components.evaluate import maps\n", "another step"),
    ("histoxai.app.data", "from histoxai.components.explain import methods\n", "only through the library"),
    ("histoxai.app.data", "from histoxai.pipelines import pipeline\n", "only through the library"),
    ("histoxai.pipelines.pipeline", "from ..app import runs\n", "above its own layer"),
    ("histoxai.components.split.split", "from . import cli\nfrom histoxai import storage\n", None),
])
def test_the_check_finds_a_wrong_import(importer, source, why):
    """The layer check itself catches imports that go up or sideways (function-level and relative ones
    too) and lets the allowed ones through."""
    problems = violations(importer, ast.parse(source))
    if why is None:
        assert problems == []
    else:
        assert len(problems) == 1 and why in problems[0], problems


def test_the_app_never_imports_tensorflow_or_keras():
    """Streamlit clears Keras's session before every script run once keras is imported (a full garbage
    collection each time), and the app has no use for TensorFlow's import time: no app module imports them,
    anywhere in its code, nor does any project module it imports on being imported."""
    imports, todo, via = set(), [m for m in MODULES if m.startswith("histoxai.app")], {}
    while todo:
        module = todo.pop()
        if module in imports:
            continue
        imports.add(module)
        if module in MODULES:
            tree, in_app = ast.parse(MODULES[module].read_text()), module.startswith("histoxai.app")
            for _, name in imported_modules(tree, module, at_import_only=not in_app):
                via.setdefault(name, module)
                todo.append(name)
    chains = []
    for found in sorted(m for m in imports if m.split(".")[0] in ("tensorflow", "keras", "tf_keras_vis")):
        chain = [found]
        while chain[-1] in via and not chain[-1].startswith("histoxai.app"):
            chain.append(via[chain[-1]])
        chains.append(" <- ".join(chain))
    assert not chains, "\n".join(chains)


def test_every_module_says_what_it_is_for_and_stays_short():
    problems = []
    for name, path in MODULES.items():
        text = path.read_text()
        tree = ast.parse(text)
        if tree.body and not ast.get_docstring(tree):
            problems.append(f"{name}: no module docstring saying what it is for")
        if len(text.splitlines()) > MAX_LINES:
            problems.append(f"{name}: {len(text.splitlines())} lines (at most {MAX_LINES})")
    assert not problems, "\n".join(problems)
