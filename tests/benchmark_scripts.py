"""Import a script from ``benchmarks/`` (not a package) as a module, for its tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_script(name: str, module_name: str | None = None) -> ModuleType:
    """Load ``benchmarks/<name>.py`` under ``module_name`` (default: ``<name>_benchmark``).

    The module is registered in ``sys.modules`` before it runs because ``dataclasses`` looks a
    class's module up there; loading again gives a fresh module.
    """
    module_name = module_name or f"{name}_benchmark"
    spec = importlib.util.spec_from_file_location(module_name, BENCHMARKS / f"{name}.py")
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"no benchmark script {BENCHMARKS / name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module
