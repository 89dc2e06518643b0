"""The cluster simulator: a tool that writes a realistic lake with ground truth (docs/simulator.md).

Not a pipeline stage: it writes through the same lake writer as the agent, and the cost job
never imports it.
"""
