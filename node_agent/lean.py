"""Keep the agent's process small (its container limit is 128 MiB): decisions about imports.

- pandas: pyarrow imports it, when installed, the first time it converts Python objects
  (`pa.array(list)`, `pa.scalar`, some Parquet writes) to check for pandas types: ~55 MiB the
  agent never uses. numpy: pyarrow uses it only for conversions the agent never makes (~12
  MiB). kubernetes_validate: the kubernetes client's dynamic module imports it (and
  jsonschema) when installed (~3 MiB). The agent image installs none of them, but a shared
  virtualenv (a laptop, CI) does, so the entry point refuses them.
- pyroute2: its package `__init__` imports every module it has (IPDB, NDB, asyncio, ...);
  the agent needs only `pyroute2.netns` (sockets in another network namespace, tests and
  tools) and the netlink constants; its rtnetlink dumps are node_agent/netlink/rtnl.py (its
  `iproute` module alone pulls asyncio, multiprocessing and unittest.mock: 5.6 MiB). A bare
  package module lets those submodules import without the rest (~7 MiB less).
Measured: an in-cluster agent peaked at 130 MiB RSS without these, 112 MiB with them.
"""
from __future__ import annotations

import importlib.util
import sys
import types

_REFUSED = ("pandas", "numpy", "kubernetes_validate")


class _RefuseHeavy:
    """A meta-path finder that makes refused top-level packages look absent."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.partition(".")[0] in _REFUSED:
            raise ModuleNotFoundError(f"No module named {name!r} (refused in the agent)", name=name)
        return None


def refuse_heavy_imports() -> bool:
    """Install the guard unless a refused package is already loaded (then it would only break
    that package's lazy submodule imports). Returns whether it was installed."""
    if any(m in sys.modules for m in _REFUSED) or _RefuseHeavy in sys.meta_path:
        return False
    sys.meta_path.insert(0, _RefuseHeavy)
    _bare_package("pyroute2")
    return True


def _bare_package(name: str) -> None:
    """Register `name` as a package whose submodules import without its `__init__`."""
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return
    mod = types.ModuleType(name)
    mod.__path__ = list(spec.submodule_search_locations)
    mod.__spec__ = spec
    mod.__file__ = spec.origin
    mod.__netmon_bare__ = True
    sys.modules[name] = mod


def allow_heavy_imports() -> None:
    """Undo refuse_heavy_imports (an in-process caller, e.g. a test, goes on normally)."""
    while _RefuseHeavy in sys.meta_path:
        sys.meta_path.remove(_RefuseHeavy)
    for name, mod in list(sys.modules.items()):
        if getattr(mod, "__netmon_bare__", False):
            del sys.modules[name]   # the next `import` runs the real __init__
