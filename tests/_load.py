"""Import a script or benchmark file (not packages) as a module, for tests."""

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_file(relpath: str):
    """Load ``ROOT/relpath`` as a module, registered in ``sys.modules`` (dataclasses need it)."""
    path = ROOT / relpath
    name = "seqenv_file_" + relpath.replace("/", "_").removesuffix(".py")
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
