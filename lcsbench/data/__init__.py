"""CLEVR scenes: rendering with Blender, WebDataset shards, conditioners and the DataModule.

`CLEVRDataModule` is imported lazily (module `__getattr__`), so `lcsbench.data` and its conditioners stay
importable without Lightning for nn/ and analysis/ users.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CLEVRDataModule"]


def __getattr__(name: str) -> Any:
    if name == "CLEVRDataModule":
        from lcsbench.data.datamodule import CLEVRDataModule

        return CLEVRDataModule
    raise AttributeError(f"module 'lcsbench.data' has no attribute {name!r}")
