"""Keep the agent's process small: refuse pandas.

pyarrow imports pandas, when it is installed, the first time it converts Python objects
(`pa.array(list)`, `pa.scalar`, some Parquet writes) to check for pandas types: about 55 MiB
that the agent never uses, against a 128 MiB container limit. The agent image does not
install pandas, but a shared virtualenv (a laptop, CI) does, so the entry point refuses it.
"""
from __future__ import annotations

import sys

_REFUSED = ("pandas",)


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
    return True


def allow_heavy_imports() -> None:
    while _RefuseHeavy in sys.meta_path:
        sys.meta_path.remove(_RefuseHeavy)
