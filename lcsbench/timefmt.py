"""Durations as a log line shows them. Standard library only, below every layer (CONTRIBUTING.md, Layers), so the
progress lines of `callbacks/` (a fit) and of `commands/` (sampling, locality, ...) read the same."""

from __future__ import annotations

import datetime


def duration(seconds: float) -> str:
    """Seconds as h:mm:ss, rounded to the second; a negative time reads 0:00:00."""
    return str(datetime.timedelta(seconds=max(0, round(seconds))))
