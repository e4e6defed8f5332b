"""The package's shape: no import cycle, no side effect on import, one file per flow/proxy/task (found without a
list to edit), and contract tests that every registered flow, proxy and task keeps its interface."""

from __future__ import annotations

import ast
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import amoeba_search
from amoeba_search.profiling.flows import FLOWS
from amoeba_search.profiling.flows.base import Flow
from amoeba_search.profiling.lut import Setting
from amoeba_search.search.proxies import PROXIES
from amoeba_search.search.proxies.base import Proxy
from amoeba_search.subnet import ModelDims, Subnet
from amoeba_search.tasks import TASKS
from amoeba_search.tasks.base import Task

PACKAGE = Path(amoeba_search.__file__).parent


def import_graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports (anywhere in its body, lazy imports included)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = ".".join(package[:len(package) - node.level + 1] + [node.module] if node.module else
                                package[:len(package) - node.level + 1]) if node.level else node.module
                targets |= {base} | {f"{base}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_inside_the_package():
    graph = import_graph()
    assert len(graph) > 40 and "amoeba_search.cli.common" in graph
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_cli_command_modules_import_only_common():
    graph = import_graph()
    for name, targets in graph.items():
        if name.startswith("amoeba_search.cli.") and name.rsplit(".", 1)[1] not in ("common", "__main__"):
            assert not {t for t in targets if t.startswith("amoeba_search.cli")} - {"amoeba_search.cli.common"}, name


def test_importing_the_library_changes_no_global_state():
    script = textwrap.dedent("""
        import logging, warnings
        # third-party libraries add their own filters on import: import them all first
        import accelerate, gguf, matplotlib.pyplot, numpy, optuna, pandas, rich, safetensors, scipy.optimize, sympy, torch
        import tqdm, transformers, typer, optuna.visualization, transformers.utils.logging as hf_logging
        state = lambda: (list(warnings.filters), optuna.logging.get_verbosity(), logging.getLogger().level,
                         logging.getLogger().handlers[:], hf_logging.get_verbosity(), torch.get_num_threads())
        before = state()
        import amoeba_search.search.study, amoeba_search.search.session, amoeba_search.search.storage
        import amoeba_search.cli, amoeba_search.demo
        after = state()
        assert before == after, [(a, b) for a, b in zip(before, after) if a != b]
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_registries_list_names_without_importing_torch():
    script = ("import sys; from amoeba_search.profiling.flows import FLOWS; from amoeba_search.tasks import TASKS; "
              "from amoeba_search.search.proxies import PROXIES; from amoeba_search.selection import DEPTH_SELECTORS;"
              "names = FLOWS.names() + TASKS.names() + PROXIES.names() + DEPTH_SELECTORS.names(); "
              "assert 'torch-eager' in names and 'arc_easy' in names and 'ppl' in names and 'dp' in names; "
              "assert 'torch' not in sys.modules, 'torch imported'")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


@pytest.fixture()
def plugin_dir(tmp_path, monkeypatch):
    """A directory added to a registry's package path, as if a user dropped one new file into the package."""
    def add(package_module, registry, filename: str, source: str):
        (tmp_path / filename).write_text(textwrap.dedent(source))
        monkeypatch.setattr(package_module, "__path__", [*package_module.__path__, str(tmp_path)])
        registry.refresh()
        monkeypatch.setattr(registry, "_index", None)
        return tmp_path
    yield add
    for registry in (FLOWS, PROXIES):
        registry.refresh()


def test_a_new_flow_is_one_file(plugin_dir, tiny):
    import amoeba_search.profiling.flows as flows_package

    plugin_dir(flows_package, FLOWS, "my_test_flow.py", '''
        from amoeba_search.profiling.flows.base import Flow, Prepared, register

        @register("my-test-flow")
        class MyTestFlow(Flow):
            description = "a flow added as one file in a test"

            def prepare(self, model, setting):
                return Prepared(lambda: model(input_ids=__import__("torch").zeros(1, setting.tokens, dtype=int)))
    ''')
    assert "my-test-flow" in FLOWS.names()
    flow = FLOWS.get("my-test-flow")
    assert isinstance(flow, Flow) and flow.name == "my-test-flow"
    flow.prepare(tiny.model, Setting("prefill", 4, 1, "float32")).run()


def test_a_new_proxy_is_one_file(plugin_dir, tiny, tiny_data):
    import amoeba_search.search.proxies as proxies_package

    plugin_dir(proxies_package, PROXIES, "layers_kept.py", '''
        from amoeba_search.search.proxies import PROXIES
        from amoeba_search.search.proxies.base import Proxy

        @PROXIES.register("layers-kept")
        def layers_kept(loaded, data_dir, samples=1):
            return Proxy("layers-kept", "maximize", "layers", {}, lambda subnet: float(len(subnet.layers)))
    ''')
    proxy = PROXIES.get("layers-kept")(tiny, tiny_data)
    assert proxy.score(Subnet.uniform(ModelDims.from_config(tiny.model.config), [0, 2])) == 2.0


def test_a_registry_refuses_an_entry_of_the_wrong_type():
    with pytest.raises(TypeError, match="must be a Flow"):
        FLOWS.register("not-a-flow")(object())


@pytest.mark.parametrize("name", FLOWS.names())
def test_every_registered_flow_keeps_the_contract(name, tiny):
    flow = FLOWS.get(name)
    assert isinstance(flow, Flow) and flow.name == name and flow.description
    assert flow.kind in ("measured", "imported", "estimate")
    reason = flow.unavailable()
    assert reason is None or (isinstance(reason, str) and reason)
    if flow.kind == "measured" and reason is None and flow.device == "cpu":
        prepared = flow.prepare(tiny.model, Setting("decode", 8, 1, flow.dtypes[0]))
        prepared.run()
        if prepared.reset:
            prepared.reset()
        prepared.run()


@pytest.mark.parametrize("name", PROXIES.names())
def test_every_proxy_keeps_the_contract(name, tiny, tiny_data):
    proxy = PROXIES.get(name)(tiny, tiny_data, samples=2)
    assert isinstance(proxy, Proxy) and proxy.name == name and proxy.direction in ("minimize", "maximize")
    dims = ModelDims.from_config(tiny.model.config)
    full, small = proxy.score(Subnet.full(dims)), proxy.score(Subnet.uniform(dims, [0]))
    assert math.isfinite(full) and math.isfinite(small)
    assert proxy.fingerprint == PROXIES.get(name)(tiny, tiny_data, samples=2).fingerprint
    assert proxy.fingerprint != PROXIES.get(name)(tiny, tiny_data, samples=3).fingerprint


@pytest.mark.parametrize("name", TASKS.names())
def test_every_task_keeps_the_contract(name, tiny, tiny_data):
    task = TASKS.get(name)
    assert isinstance(task, Task) and task.name == name
    with torch.inference_mode():
        result = task.run(tiny.model, tiny.tokenizer, tiny_data, questions=2, windows=2, seq_len=32, progress=False)
    if task.is_perplexity:
        assert result["windows"] == 2 and result["ppl"] > 1
    else:
        assert result["questions"] == 2 and 0 <= result["acc"] <= 100 and 0 <= result["acc_norm"] <= 100
