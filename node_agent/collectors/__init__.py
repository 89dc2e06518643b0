"""Flow collectors: each turns a kernel source into `ConnSample`s (see collectors/base.py)."""
from node_agent.collectors.base import Collector, CollectorError

__all__ = ["Collector", "CollectorError"]
