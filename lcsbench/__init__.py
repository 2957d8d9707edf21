"""lcsbench: local mechanisms of compositional generalization in conditional diffusion.

Layers (arrows point down only; see DESIGN.md): cli -> callbacks -> models -> analysis -> data ->
diffusion -> nn. Only `models/`, `callbacks/`, `data/datamodule.py` and the cli import Lightning.
"""

__version__ = "0.1.0"
