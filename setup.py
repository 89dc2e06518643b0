"""The one compiled part of netmon: node_agent/_cttable.c, the accounter's compact state.

Built with the machine's C compiler by `pip install -e .` (scripts/setup.sh). Optional: when
it cannot be built, the accounter keeps its state in a dict (the same rules, more memory)."""
from setuptools import Extension, setup

setup(ext_modules=[Extension("node_agent._cttable", ["node_agent/_cttable.c"], optional=True,
                             extra_compile_args=["-O2", "-Wall"])])
