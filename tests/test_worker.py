"""The worker's own contract, checked without running it: it may import only the standard library at module
level (it runs in target environments that hold nothing but the framework), and it knows every model the
controller may ask for."""

from __future__ import annotations

import ast
import sys

from tuner import worker
from tuner.models import APPLICATIONS, MODELS
from tuner.runner import WORKER


def test_worker_imports_only_the_standard_library_at_module_level() -> None:
    tree = ast.parse(WORKER.read_text())
    names = set()
    for node in tree.body:  # module level only: the framework is imported inside functions
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add((node.module or "").split(".")[0])
    # Every top-level import is a standard-library module (or __future__); never tuner, numpy or tensorflow.
    assert names, "no imports found: the check would pass vacuously"
    assert names <= set(sys.stdlib_module_names) | {"__future__"}, names - set(sys.stdlib_module_names)


def test_worker_knows_every_model_the_controller_offers() -> None:
    # The controller validates --model against MODELS; the worker must know how to build each (the class and
    # input size of every application, and the tiny model), or a valid request would crash inside the worker.
    assert set(worker.APPLICATIONS) | {"tiny"} == set(MODELS)
    assert {name: cls for name, (cls, _) in worker.APPLICATIONS.items()} == APPLICATIONS
