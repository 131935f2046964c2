"""Imports run one way -- kernels -> sdk -> trainer -> export -> tools / benchmarks -- with no circles between files.

Reads every module's imports from its syntax tree, function-level ones included (``import`` / ``from ... import``
anywhere, and ``importlib.import_module("...")`` / ``__import__("...")`` with a literal name), so a lazy import
cannot hide a dependency.  Also: the runtime (``kernels/``, ``sdk/``) never imports torch (the optional GPU
modules in :data:`LAZY_TORCH` only inside functions; the torch network definitions of :data:`TORCH_PACKAGES` at
module level, but every other runtime module imports them only inside functions), and a module over
:data:`MAX_LINES` lines says why at its top (``size:`` and the reason, in its first 15 lines, as
``python3 ../shared/tools/import_cycles.py`` expects).  ``tests/`` may import
anything and is not checked.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".venv", "venv", "build", "out", ".git", "tests", "node_modules", "__pycache__"}
#: layers, lowest first: a module may import its own layer and the ones below
LAYERS = {"kernels": 0, "sdk": 1, "trainer": 2, "export": 3, "tools": 4, "benchmarks": 4}
#: command-line entry points inside a lower layer's folder that sit above every layer, and why
ENTRY_POINTS = {
    "trainer.main": "trainer's CLI: its 'ablation' sub-command trains, exports (export/) and evaluates",
    "trainer.ablation": "orchestrates train -> export -> evaluate for each ablation row",
}
#: third-party packages the runtime layers must not import
RUNTIME_FORBIDDEN = {"torch", "torchvision"}
#: runtime modules that drive torch tensors on a GPU when the user asks for it (optional): they may import torch
#: only inside functions, never at module level, so ``import sdk`` and the CPU / ONNX Runtime path stay torch-free
LAZY_TORCH = {
    "sdk._cuda_ops": "CUDA contextual attention on torch tensors already on the device",
    "sdk.backends.select": "asks torch whether it sees a GPU, only for a model that has torch weights",
    "sdk.backends.tensorrt": "TensorRT engines' device buffers are torch CUDA tensors when torch is present",
}
LAZY_TORCH_PREFIXES = ("sdk.backends.torch",)
#: runtime packages that *are* torch code (the model families' networks, rebuilt by the torch backend from bundle
#: weights; the trainer imports them from here): torch at module level is theirs, and the rest of the runtime may
#: import them only inside functions
TORCH_PACKAGES = ("sdk.nets",)
MAX_LINES = 600


def _modules() -> dict[str, Path]:
    mods = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if any(part in SKIP_DIRS or part.startswith(".") for part in rel.parts[:-1]):
            continue
        name = ".".join(rel.with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = path
    # compiled extensions (pybind11_add_module(NAME ...) installed into a package) are modules, not the package
    cmake = ROOT / "CMakeLists.txt"
    text = cmake.read_text() if cmake.is_file() else ""
    for ext in re.findall(r"pybind11_add_module\(\s*(\w+)", text):
        for dest in re.findall(r"install\(TARGETS\s+" + ext + r"\b.*?DESTINATION\s+([\w/]+)", text, re.S):
            mods.setdefault(dest.replace("/", ".") + "." + ext, cmake)
    return mods


def _imported_names(tree: ast.AST, module: str, is_package: bool, mods: dict) -> set[str]:
    """Dotted names a module imports (absolute), from every import statement and literal dynamic import.
    ``from pkg import name`` counts as importing ``pkg.name`` when that is a module, else ``pkg``."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module.split(".")
                if not is_package:
                    pkg = pkg[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([base] if base else []))
            for a in node.names:
                sub = f"{base}.{a.name}" if base else a.name
                names.add(sub if a.name != "*" and sub in mods else base)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            f = node.func
            fname = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            if fname in ("import_module", "__import__"):
                names.add(node.args[0].value)
    return names


def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]], dict[str, Path]]:
    """``(internal edges, external top-level imports, modules)``."""
    mods = _modules()
    edges: dict[str, set[str]] = {}
    external: dict[str, set[str]] = {}
    for name, path in mods.items():
        if path.suffix != ".py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        found, ext = set(), set()
        for imp in _imported_names(tree, name, path.name == "__init__.py", mods):
            n = imp
            while n and n not in mods:
                n = n.rpartition(".")[0]
            if n:
                if n != name:
                    found.add(n)
            elif imp:
                ext.add(imp.split(".")[0])
        edges[name], external[name] = found, ext
    return edges, external, mods


EDGES, EXTERNAL, MODULES = _graph()


def _layer(module: str) -> int | None:
    if module in ENTRY_POINTS:
        return max(LAYERS.values())
    return LAYERS.get(module.split(".")[0])


def test_the_graph_is_not_empty():
    """The walk found the code (a broken walk would make every other test here pass vacuously)."""
    assert {"sdk.recognizer", "trainer.student.loop", "export.onnx_embedder", "export.exporter"} <= set(MODULES)
    assert "trainer.checkpoints" in EDGES["trainer.loops.skeleton"]
    assert "sdk.models.dlib_arch" in EDGES["trainer.models.dlib_resnet"]


def test_imports_run_one_way():
    bad = []
    for src, dsts in sorted(EDGES.items()):
        ls = _layer(src)
        for dst in sorted(dsts):
            ld = _layer(dst)
            if ls is not None and ld is not None and ld > ls:
                bad.append(f"{src} (layer {ls}) imports {dst} (layer {ld})")
    assert not bad, "imports against kernels -> sdk -> trainer -> export -> tools:\n" + "\n".join(bad)


def test_nothing_imports_an_entry_point():
    bad = [f"{src} imports {dst}" for src, dsts in EDGES.items() for dst in dsts
           if dst in ENTRY_POINTS and src not in ENTRY_POINTS]
    assert not bad, "\n".join(bad)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on, stack, out = set(), [], []
    counter = [0]
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
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
    return out


def test_cycle_finder_finds_a_planted_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_between_files():
    cycles = _cycles(EDGES)
    assert not cycles, "import cycles (function-level imports included):\n" + "\n".join(" <-> ".join(c) for c in cycles)


def _lazy_torch(module: str) -> bool:
    return module in LAZY_TORCH or module.startswith(LAZY_TORCH_PREFIXES)


def _torch_package(module: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in TORCH_PACKAGES)


def _module_level_imports(path: Path) -> set[str]:
    """Top-level package names imported by statements that run at import time (not inside a def / lambda)."""
    found: set[str] = set()

    def walk(nodes):
        for node in nodes:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(node, ast.Import):
                found.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                found.add(node.module.split(".")[0])
            walk(ast.iter_child_nodes(node))

    walk(ast.parse(path.read_text(encoding="utf-8")).body)
    return found


def test_runtime_never_imports_torch():
    bad = [f"{m} imports {sorted(EXTERNAL[m] & RUNTIME_FORBIDDEN)}" for m in sorted(EXTERNAL)
           if _layer(m) is not None and _layer(m) <= LAYERS["sdk"] and EXTERNAL[m] & RUNTIME_FORBIDDEN
           and not _lazy_torch(m) and not _torch_package(m)]
    assert not bad, "\n".join(bad)


def _module_level_internal(path: Path, module: str) -> set[str]:
    """Dotted names of the modules imported by statements that run at import time (absolute and relative)."""
    found: set[str] = set()
    is_pkg = path.name == "__init__.py"

    def walk(nodes):
        for node in nodes:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = module.split(".") if is_pkg else module.split(".")[:-1]
                    pkg = pkg[: len(pkg) - (node.level - 1)]
                    base = ".".join(pkg + ([base] if base else []))
                found.add(base)
                found.update(f"{base}.{a.name}" for a in node.names)
            walk(ast.iter_child_nodes(node))

    walk(ast.parse(path.read_text(encoding="utf-8")).body)
    return found


def test_torch_networks_are_imported_lazily_by_the_runtime():
    """``sdk.nets`` modules import torch at module level; no other runtime module may import them at import time
    (``import sdk``, the CPU / ONNX Runtime path never load torch)."""
    nets = [m for m in MODULES if _torch_package(m) and MODULES[m].suffix == ".py"]
    assert "sdk.nets.graphs" in nets and "sdk.nets.segmenter" in nets
    assert "torch" not in _module_level_imports(MODULES["sdk.nets"])  # the package itself stays torch-free
    bad = []
    for m in MODULES:
        if _layer(m) == LAYERS["sdk"] and not _torch_package(m) and MODULES[m].suffix == ".py":
            hit = sorted(n for n in _module_level_internal(MODULES[m], m) if _torch_package(n) and n != "sdk.nets")
            if hit:
                bad.append(f"{m} imports {hit} at module level")
    assert not bad, "\n".join(bad)


def test_optional_gpu_modules_import_torch_only_lazily():
    lazy = [m for m in MODULES if _lazy_torch(m) and MODULES[m].suffix == ".py"]
    assert "sdk._cuda_ops" in lazy
    bad = [f"{m} imports torch at module level" for m in lazy if _module_level_imports(MODULES[m]) & RUNTIME_FORBIDDEN]
    assert not bad, "\n".join(bad)
    # and nothing in the CPU runtime pulls them in at import time
    for m in MODULES:
        if _layer(m) == LAYERS["sdk"] and not _lazy_torch(m) and not _torch_package(m) and MODULES[m].suffix == ".py":
            top = _module_level_imports(MODULES[m])
            assert "torch" not in top, m


def test_large_modules_say_why():
    bad = []
    for module, path in sorted(MODULES.items()):
        if path.suffix != ".py":
            continue
        lines = path.read_text(encoding="utf-8").splitlines()
        if len(lines) > MAX_LINES and not any("size:" in line.lower() for line in lines[:15]):
            bad.append(f"{path.relative_to(ROOT)}: {len(lines)} lines")
    assert not bad, f"modules over {MAX_LINES} lines must be split or say why at their top ('... size: why'):\n" + \
        "\n".join(bad)
