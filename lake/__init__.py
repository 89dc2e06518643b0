"""The lake contract shared by the node agent and the jobs (schemas, paths, storage)."""
