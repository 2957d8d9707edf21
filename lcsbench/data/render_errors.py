"""The errors of a Blender render (data/render.py and the modules it is built from)."""

from __future__ import annotations

import signal


class RenderError(RuntimeError):
    """Blender is missing or failed, or the output directory conflicts with the request."""


class RenderInterrupted(RenderError):
    """A signal stopped the render: every Blender process was stopped, finished work is kept."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}: every Blender process was stopped; finished "
                         f"shards and finished images are kept. Rerun the same command to resume.")
