"""Parse the CLI's human units: durations (`60s`, `5m`, `1h`, `500ms`, plain seconds) and
sizes (`256Mi`, `1G`, plain bytes). Bad input raises ValueError with one clear line."""
from __future__ import annotations

import re

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$", re.IGNORECASE)
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
    "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40,
}


def parse_duration(text: str | float | int) -> float:
    """Seconds in `text`: `60s`, `5m`, `1h`, `1d`, `250ms` or a plain number of seconds (> 0)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        m = _DURATION_RE.match(str(text))
        if not m:
            raise ValueError(f"invalid duration {text!r} (expected e.g. 60s, 5m, 1h or plain seconds)")
        seconds = float(m[1]) * _DURATION_UNITS[(m[2] or "s").lower()]
    if seconds <= 0:
        raise ValueError(f"invalid duration {text!r}: must be greater than zero")
    return seconds


def parse_size(text: str | int) -> int:
    """Bytes in `text`: `256Mi`, `1Gi`, `500M`, `64k` or a plain number of bytes (> 0)."""
    if isinstance(text, int) and not isinstance(text, bool):
        size = text
    else:
        m = _SIZE_RE.match(str(text))
        if not m:
            raise ValueError(f"invalid size {text!r} (expected e.g. 256Mi, 1Gi or plain bytes)")
        size = int(float(m[1]) * _SIZE_UNITS[(m[2] or "").lower()])
    if size <= 0:
        raise ValueError(f"invalid size {text!r}: must be greater than zero")
    return size
