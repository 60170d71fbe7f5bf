"""The package's layering, checked on its source: no import cycle, nothing imports the CLI layer, each layer
imports only the layers below it, Paddle stays out of `data`, `eval` and the worker processes, and `train`
reaches `infer` only through typed options.  The checker is also run on copies of the package with a forbidden
import added, to show that each rule can fail."""
import ast
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO

PACKAGE_DIR = os.path.join(REPO, "packages", "ernievil2")
TOP = "ernievil2"

# Lowest first.  A module may import its own layer (within its subpackage) and any lower layer; layers in one
# tuple are siblings that must not import each other.
LAYERS = [
    ("base",),  # errors, config, fileio, runtime and the package's __init__
    ("data", "eval"),
    ("model",),
    ("interop",),
    ("infer",),
    ("train", "api"),
    ("search",),
    ("serve", "workflow"),
    ("cli",),
]
BASE_MODULES = {TOP, f"{TOP}.errors", f"{TOP}.config", f"{TOP}.fileio", f"{TOP}.runtime"}
ENTRY_POINTS = {f"{TOP}.__main__"}  # may import the CLI: it is the command line
PUBLIC_FACE = {f"{TOP}.api"}  # what `ernievil2.load` & co. import, lazily, from the package's __init__
NO_PADDLE = ("data", "eval")  # never import Paddle, not even lazily inside a function
TYPED_INFER_OPTIONS = {"EngineOptions", "PipelineOptions", "OutputOptions"}


def _modules(package_dir):
    """{dotted module name: file path} of every .py file under package_dir."""
    found = {}
    root = os.path.dirname(package_dir)
    for folder, _, files in os.walk(package_dir):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                dotted = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
                found[dotted[: -len(".__init__")] if dotted.endswith(".__init__") else dotted] = path
    return found


def _imports(module, path, known):
    """(imported module, names imported from it, at module level?, line) for every import in the file."""
    is_package = path.endswith("__init__.py")
    here = module.split(".") if is_package else module.split(".")[:-1]
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    top_level = {id(node) for node in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                out.append((alias.name, (), id(node) in top_level, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = tuple(alias.name for alias in node.names)
            # `from . import distributed` imports a submodule, not a name of the package
            submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in known]
            for sub in submodules:
                out.append((sub, (), id(node) in top_level, node.lineno))
            if len(submodules) < len(names):
                out.append((target, tuple(n for n in names if f"{target}.{n}" not in known),
                            id(node) in top_level, node.lineno))
    return out


def _layer(module):
    if module in BASE_MODULES:
        return "base"
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "base"


def _rank(layer):
    for rank, group in enumerate(LAYERS):
        if layer in group:
            return rank
    raise AssertionError(f"module layer {layer!r} is not in LAYERS; add it where it belongs")


def check_layers(package_dir):
    """Every violation of the rules in this file's docstring, as readable lines (empty: all rules hold)."""
    known = _modules(package_dir)
    problems, graph = [], {m: set() for m in known}
    for module, path in sorted(known.items()):
        where = os.path.relpath(path, os.path.dirname(package_dir))
        for target, names, at_top, line in _imports(module, path, known):
            layer = _layer(module)
            if target.split(".")[0] == "paddle" and layer in NO_PADDLE:
                problems.append(f"{where}:{line}: {layer}/ imports Paddle")
            if target.split(".")[0] != TOP:
                continue
            resolved = max((m for m in known if target == m or target.startswith(m + ".")), key=len, default=None)
            if resolved is None or resolved == module:
                continue
            if resolved != TOP:
                graph[module].add(resolved)
            target_layer = _layer(resolved)
            if target_layer == "cli" and layer != "cli" and module not in ENTRY_POINTS:
                problems.append(f"{where}:{line}: imports the CLI layer ({resolved})")
            elif module == TOP and resolved in PUBLIC_FACE and not at_top:
                continue
            elif module not in ENTRY_POINTS and target_layer != layer and _rank(target_layer) >= _rank(layer):
                problems.append(f"{where}:{line}: {layer}/ imports {resolved} ({target_layer} is not below "
                                f"{layer})")
            if layer == "train" and resolved.startswith(f"{TOP}.infer.options"):
                untyped = sorted(set(names) - TYPED_INFER_OPTIONS)
                if untyped:
                    problems.append(f"{where}:{line}: train/ takes {', '.join(untyped)} from infer.options "
                                    f"(only the typed options {sorted(TYPED_INFER_OPTIONS)})")
    problems += [f"import cycle: {' -> '.join(cycle)}" for cycle in _cycles(graph)]
    return problems


def _cycles(graph):
    """One cycle per strongly connected component with more than one module (iterative Tarjan)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component) + [sorted(component)[0]])
    return found


def test_the_package_keeps_its_layers():
    assert check_layers(PACKAGE_DIR) == []


@pytest.mark.parametrize("file,line,expected", [
    ("data/tsv.py", "from ..cli import common", "imports the CLI layer"),
    ("eval/metrics.py", "import paddle", "eval/ imports Paddle"),
    ("data/tokenizer.py", "def _late():\n    import paddle.nn", "data/ imports Paddle"),
    ("model/configs.py", "from .dual_encoder import ErnieViL2", "import cycle"),
    ("interop/export.py", "from ..infer import pipeline", "interop/ imports ernievil2.infer.pipeline"),
    ("infer/run.py", "from ..train import optim", "infer/ imports ernievil2.train.optim"),
    ("data/vocab.py", "from ..eval import metrics", "data/ imports ernievil2.eval.metrics (eval is not below data)"),
    ("train/trainer.py", "from ..infer.options import load_infer_config", "train/ takes load_infer_config"),
])
def test_the_checker_catches_each_kind_of_forbidden_import(tmp_path, file, line, expected):
    copy = tmp_path / TOP
    shutil.copytree(PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    with open(copy / file, "a", encoding="utf-8") as f:
        f.write(f"\n{line}\n")
    problems = check_layers(str(copy))
    assert any(expected in p for p in problems), problems
    assert all(file.split("/")[0] in p or "cycle" in p for p in problems), problems  # nothing else is flagged


def test_workers_data_and_eval_run_without_paddle():
    """Importing every data/ and eval/ module, the inference workers' module, the evaluator's CLI and the
    config loader (what a spawned worker or eval_retri.py loads) never loads Paddle."""
    known = _modules(PACKAGE_DIR)
    light = sorted(m for m in known if _layer(m) in NO_PADDLE) + [
        f"{TOP}.infer.workers", f"{TOP}.cli.eval", f"{TOP}.cli.main", f"{TOP}.config", f"{TOP}.runtime"]
    code = ("import importlib, sys\n"
            f"for name in {light!r}:\n    importlib.import_module(name)\n"
            "print('paddle' in sys.modules)\n")
    env = dict(os.environ, PYTHONPATH=os.path.join(REPO, "packages"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"
