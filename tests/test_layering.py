"""The layer picture of docs/architecture.md holds: no module imports from a layer above its own.

Imports are read with ``ast`` from the source files (module-level, function-level and ``TYPE_CHECKING``
imports all count, as in ``import_cycles.py``), so a new upward import fails here before it becomes a
circle. Layers, lowest first, are listed in :data:`LAYERS`; a module belongs to the layer of its longest
matching prefix, so a new module lands in its package's layer (a new top-level module in the top one, where
nothing below may import it) until it is listed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    # Foundation: errors, vireid.files (folder marks, run locks, atomic writes), typed configs, device and precision,
    # the method registry (names -> objects,
    # imported lazily by name, so configs can find a method's config class without importing methods).
    ("foundation", ("vireid.errors", "vireid.files", "vireid.config", "vireid.devices", "vireid.methods.registry")),
    # Model chain, lower half: shared networks and losses (no data, no methods).
    ("models", ("vireid.models",)),
    ("losses", ("vireid.losses",)),
    # Data chain: data -> protocol -> catalog -> metrics -> report -> runner.
    ("data", ("vireid.data",)),
    ("protocol", ("vireid.evaluation.protocols", "vireid.evaluation.trial")),
    ("catalog", ("vireid.data.catalog", "vireid.evaluation.protocols.selection")),
    (
        "metrics",
        (
            "vireid.evaluation.metrics",
            "vireid.evaluation.compiled_metrics",
            "vireid.evaluation._numba_kernel",
            "vireid.evaluation.reference",
            "vireid.evaluation.rerank",
        ),
    ),
    ("report", ("vireid.evaluation.report",)),
    ("runner", ("vireid.evaluation.runner", "vireid.evaluation")),
    # Model chain, upper half: engine building blocks -> methods -> engine -> applications -> CLI.
    # Every engine module not named elsewhere (checkpoint, distributed, optim, logging, loading, ...) is a
    # building block that methods may use; the trainer, which drives methods, sits above them.
    ("engine_core", ("vireid.engine",)),
    ("methods", ("vireid.methods",)),
    ("engine", ("vireid.engine.trainer", "vireid.env_info")),
    (
        "applications",
        (
            "vireid.inference",
            "vireid.visualize",
            "vireid.ranking",
            "vireid.index",
            "vireid.search",
            "vireid.export",
            "vireid.engine.testing",
            "vireid.engine.run",
            "vireid.demo",
            "vireid.api",
        ),
    ),
    ("cli", ("vireid.cli", "vireid.__main__", "vireid")),
]

KNOWN_EXCEPTIONS: dict[tuple[str, str], str] = {}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    best, best_len = None, -1
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if within(module, prefix) and len(prefix) > best_len:
                best, best_len = rank, len(prefix)
    assert best is not None, f"{module} is in no layer; add it to LAYERS in tests/test_layering.py"
    return best


def imported_modules(path: Path, module: str, known: set[str]) -> set[str]:
    """vireid modules imported by ``path`` (resolved to the longest existing module name)."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".") if is_package else module.split(".")[:-1]
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*parts, base] if base else parts)
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name.startswith("vireid") and name != module:
                found.add(name)
                break
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in sorted((SRC / "vireid").rglob("*.py"))}
    return {m: imported_modules(p, m, set(files)) for m, p in files.items()}


def within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def exception_for(importer: str, imported: str) -> str | None:
    for (low, high), why in KNOWN_EXCEPTIONS.items():
        if within(importer, low) and within(imported, high):
            return why
    return None


def test_no_module_imports_from_a_layer_above_its_own():
    upward = []
    for importer, targets in import_graph().items():
        for imported in sorted(targets):
            if imported == "vireid":  # the package top only re-exports lazily (module __getattr__)
                continue
            if layer_of(imported) > layer_of(importer) and not exception_for(importer, imported):
                upward.append(
                    f"{importer} ({LAYERS[layer_of(importer)][0]}) imports {imported} ({LAYERS[layer_of(imported)][0]})"
                )
    assert not upward, "imports from a higher layer:\n" + "\n".join(upward)


def test_readers_know_nothing_about_protocols_and_index_does_not_import_search():
    graph = import_graph()
    for module, targets in graph.items():
        if module.startswith("vireid.data.readers"):
            assert not [t for t in targets if t.startswith("vireid.evaluation")], module
    assert not [t for t in graph["vireid.index"] if t == "vireid.search"]


@pytest.mark.parametrize(
    ("module", "layer"),
    [
        ("vireid.data.readers.sysu", "data"),
        ("vireid.data.catalog", "catalog"),
        ("vireid.evaluation.protocols.sysu", "protocol"),
        ("vireid.methods.registry", "foundation"),
        ("vireid.methods.dikdnet.losses", "methods"),  # after the DIKDNet package split
        ("vireid.engine.trainer", "engine"),
        ("vireid.engine.loading", "engine_core"),
        ("vireid.engine.testing", "applications"),
        ("vireid.some_new_module", "cli"),
    ],
)
def test_layer_assignment_uses_the_longest_prefix(module, layer):
    assert LAYERS[layer_of(module)][0] == layer


def test_the_checker_sees_function_level_and_relative_imports(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text(
        "def f():\n    from vireid.search import x\n\nfrom . import records\nfrom ..errors import ConfigError\n"
    )
    known = {"vireid.search", "vireid.data.records", "vireid.errors"}
    assert imported_modules(source, "vireid.data.fake", known) == known
