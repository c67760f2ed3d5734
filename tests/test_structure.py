"""The package's shape: no import cycles among lowbit's modules (imports inside functions
count: they hide a cycle, they do not remove it), and no private name imported from another
module (a name another module needs is part of its owner's interface)."""
import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _modules() -> dict[str, Path]:
    out = {}
    for f in (SRC / "lowbit").rglob("*.py"):
        parts = list(f.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _imports(name: str, path: Path, modules: dict) -> list[tuple[str, list[str]]]:
    """(imported lowbit module, names taken from it) for every import statement in the file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name.startswith("lowbit")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if not base.startswith("lowbit"):
                continue
            names = [a.name for a in node.names]
            # `from lowbit.io import formats` imports the module lowbit.io.formats
            subs = [f"{base}.{n}" for n in names if f"{base}.{n}" in modules]
            found += [(s, []) for s in subs] or [(base, names)]
    return found


def _graph():
    modules = _modules()
    graph = {m: set() for m in modules}
    private = []
    for m, path in modules.items():
        for target, names in _imports(m, path, modules):
            while target not in modules and "." in target:
                target = target.rpartition(".")[0]
            # a module's own ancestor packages are initialised before it whatever it imports
            if target in modules and target != m and not m.startswith(target + "."):
                graph[m].add(target)
                private += [f"{m} imports {n} from {target}" for n in names
                            if n.startswith("_") and not n.startswith("__")]
    return graph, private


def _cycles(graph) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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


def test_the_checker_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    graph, _ = _graph()
    assert len(graph) > 50
    assert _cycles(graph) == []


def test_no_private_names_imported_across_modules():
    _, private = _graph()
    assert private == []
