"""The import graph of cleandppo/: layers that never import upward, no cycle, and no shared module that depends on
an algorithm script. Read from the source with `ast` (imports inside functions count too), so a lazy import
cannot hide a dependency."""

import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "cleandppo")
ALGORITHMS = ["dppo", "gaussian_ppo", "gmm_ppo", "dawr", "drwr", "dipo", "idql", "dql", "qsm", "exact_likelihood_pg"]
LAYERS = [  # bottom first; a module may import modules of lower layers only (common.py's docstring explains each)
    ["common"],
    ["gym_tasks", "avoid", "robomimic_tasks", "workers", "vit"],
    ["official"],
    ["envs"],
    ["arguments", "console"],
    ["runs"],
    ["pretraining"],
    ALGORITHMS,
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def project_imports(source: str) -> set:
    """Names of the cleandppo modules a module's source imports, anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("cleandppo.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "cleandppo":
            parts = node.module.split(".")
            found |= {parts[1]} if len(parts) > 1 else {a.name for a in node.names}
    return found


def import_graph() -> dict:
    graph = {}
    for file in sorted(os.listdir(PACKAGE)):
        if file.endswith(".py") and file != "__init__.py":
            with open(os.path.join(PACKAGE, file)) as f:
                graph[file[:-3]] = project_imports(f.read())
    return graph


def find_cycle(graph: dict):
    """One import cycle as a list of modules (first == last), or None."""
    state, path = {}, []

    def visit(node):
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_import_reader_sees_every_form_of_import():
    source = (
        "import cleandppo.envs\nfrom cleandppo import runs, avoid\ndef f():\n    from cleandppo.common import fail\n"
    )
    assert project_imports(source) == {"envs", "runs", "avoid", "common"}


def test_the_cycle_finder_finds_a_cycle_and_only_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_every_module_has_a_layer():
    missing = sorted(set(import_graph()) - set(LAYER))
    assert not missing, f"place {missing} in LAYERS (and in common.py's docstring)"


def test_no_import_cycle():
    assert find_cycle(import_graph()) is None


@pytest.mark.parametrize("module", [m for names in LAYERS[:-1] for m in names])
def test_shared_modules_import_only_lower_layers(module):
    imports = import_graph()[module]
    assert not imports & set(ALGORITHMS), (
        f"{module} imports the algorithm script(s) {sorted(imports & set(ALGORITHMS))}"
    )
    upward = sorted(m for m in imports if LAYER.get(m, len(LAYERS)) >= LAYER[module])
    assert not upward, f"{module} (layer {LAYER[module]}) imports {upward} from its own layer or above"


@pytest.mark.parametrize("module", ALGORITHMS)
def test_no_algorithm_script_imports_another(module):
    assert not import_graph()[module] & set(ALGORITHMS)
