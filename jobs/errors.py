"""Errors the cost job reports as one line (the CLI prints them as `error: ...`, exit 2)."""


class JobError(Exception):
    """A problem the user can fix (bad option, unreachable lake, a partition that failed its checks)."""
