"""slimkit has no import cycles, between modules or between its subpackages.

The graph is read from the source with ast, function-level imports included (a lazy import only
hides a cycle until the function runs); imports under `if TYPE_CHECKING:` are left out, since
they never run. Subpackage level: slimkit.prune, slimkit.distill,
slimkit.io... each as one node, so e.g. distill importing prune while prune imports distill
counts even when no single module pair closes the loop.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_graph(root: Path, package: str = "slimkit") -> dict[str, set[str]]:
    """{module: modules it imports} for every .py file under root/package."""
    files = {}
    for f in (root / package).rglob("*.py"):
        parts = list(f.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join(parts)] = f

    def resolve(name: str) -> str | None:  # the most specific module a dotted name lies in
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, f in files.items():
        here = mod.split(".") if f.name == "__init__.py" else mod.split(".")[:-1]
        for node in _runtime_nodes(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(here[:len(here) - node.level + 1] + ([node.module] if node.module else []))
                names = [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                target = resolve(name)
                if target and target != mod:
                    graph[mod].add(target)
    return graph


def _runtime_nodes(tree: ast.AST):
    """Every node of the tree except the bodies of `if TYPE_CHECKING:` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The same graph with each first-level subpackage or module of slimkit as one node."""
    def top(m: str) -> str:
        return ".".join(m.split(".")[:2])

    out: dict[str, set[str]] = {}
    for mod, targets in graph.items():
        out.setdefault(top(mod), set()).update(top(t) for t in targets if top(t) != top(mod))
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_slimkit_modules_have_no_import_cycle():
    assert cycles(module_graph(ROOT)) == []


def test_slimkit_subpackages_have_no_import_cycle():
    graph = package_graph(module_graph(ROOT))
    assert cycles(graph) == []
    assert "slimkit.prune" not in graph["slimkit.io"] and "slimkit.prune" not in graph["slimkit.distill"]


def test_the_check_finds_a_cycle_through_a_lazy_import(tmp_path):
    pkg = tmp_path / "slimkit"
    (pkg / "a").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "__init__.py").write_text("from .x import f\n")
    (pkg / "a" / "x.py").write_text("def f():\n    from slimkit.b import g\n    return g\n")
    (pkg / "b.py").write_text("from slimkit.a.x import f\n\ndef g():\n    return f\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from slimkit.d import D\n")
    (pkg / "d.py").write_text("from slimkit.c import TYPE_CHECKING\n")
    graph = module_graph(tmp_path)
    assert graph["slimkit.a"] == {"slimkit.a.x"} and graph["slimkit.b"] == {"slimkit.a.x"}
    assert graph["slimkit.c"] == set() and graph["slimkit.d"] == {"slimkit.c"}  # a type-only import never runs
    assert cycles(graph) == [["slimkit.a.x", "slimkit.b"]]
    assert cycles(package_graph(graph)) == [["slimkit.a", "slimkit.b"]]


def _subpackage(module: str) -> str:
    return ".".join(module.split(".")[:2])


def private_imports_across_packages(root: Path = ROOT) -> list[str]:
    """`from slimkit.x import _name` or `x_module._name` where the importer lies in another subpackage."""
    found = []
    for f in (root / "slimkit").rglob("*.py"):
        parts = list(f.relative_to(root).with_suffix("").parts)
        here = _subpackage(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
        tree = ast.parse(f.read_text(encoding="utf-8"))
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("slimkit"):
                for a in node.names:
                    private = a.name.startswith("_") and not a.name.startswith("__")
                    if private and _subpackage(node.module) != here:
                        found.append(f"{f.relative_to(root)}:{node.lineno} imports {node.module}.{a.name}")
                    aliases[a.asname or a.name] = f"{node.module}.{a.name}"
            elif isinstance(node, ast.Import):
                aliases.update({a.asname or a.name.split(".")[0]: a.name for a in node.names
                                if a.name.startswith("slimkit")})
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__") \
                    and isinstance(node.value, ast.Name) and node.value.id in aliases \
                    and _subpackage(aliases[node.value.id]) != here:
                found.append(f"{f.relative_to(root)}:{node.lineno} reads {aliases[node.value.id]}.{node.attr}")
    return found


def test_no_private_name_is_imported_across_packages():
    assert private_imports_across_packages() == []


def test_the_private_name_check_can_fail(tmp_path):
    pkg = tmp_path / "slimkit"
    (pkg / "a").mkdir(parents=True)
    (pkg / "b").mkdir()
    (pkg / "a" / "__init__.py").write_text("def _helper():\n    pass\n")
    (pkg / "b" / "__init__.py").write_text("from slimkit.a import _helper\nimport slimkit.a as a\nx = a._helper\n")
    (pkg / "a" / "inner.py").write_text("from slimkit.a import _helper\n")  # the same package: allowed
    assert len(private_imports_across_packages(tmp_path)) == 2


# The layers, bottom up: a package may import its own layer or lower ones, never a higher one.
LAYERS = [
    {"slimkit.errors", "slimkit.version", "slimkit.masks", "slimkit.data", "slimkit.io", "slimkit.models",
     "slimkit.measure", "slimkit.prune", "slimkit.distill", "slimkit.export", "slimkit.report_html"},  # the core
    {"slimkit.llm", "slimkit.speech", "slimkit.families"},  # the model families and their internals
    {"slimkit.compression"},
    {"slimkit.demo"},
    {"slimkit.cli", "slimkit.__main__"},
]


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    """`importer -> imported` for every package edge that goes up the layers, and every edge between
    the family packages, which must not know one another."""
    rank = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}
    found = []
    for pkg, targets in graph.items():
        for t in targets:
            if pkg in rank and t in rank and rank[t] > rank[pkg]:
                found.append(f"{pkg} -> {t}")
    families = {"slimkit.llm", "slimkit.speech"}
    found += [f"{p} -> {t}" for p in families for t in graph.get(p, ()) if t in families]
    return sorted(found)


def test_packages_import_only_their_layer_or_lower():
    graph = package_graph(module_graph(ROOT))
    assert set(graph) - {"slimkit"} <= set().union(*LAYERS), "a new package: place it in LAYERS"
    assert layering_violations(graph) == []


def test_family_modules_import_nothing_from_one_another():
    graph = module_graph(ROOT)
    members = {m for m in graph if m.startswith("slimkit.families.") and m != "slimkit.families.base"}

    def family(m: str) -> str:  # a family is a module or a package of modules under slimkit.families
        return m.split(".")[2]

    assert [f"{m} -> {t}" for m in sorted(members) for t in sorted(graph[m])
            if t in members and family(t) != family(m)] == []


def test_the_layer_check_can_fail():
    graph = {"slimkit.prune": {"slimkit.distill", "slimkit.compression"}, "slimkit.llm": {"slimkit.speech"}}
    assert layering_violations(graph) == ["slimkit.llm -> slimkit.speech", "slimkit.prune -> slimkit.compression"]
