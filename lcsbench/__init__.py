"""lcsbench: local mechanisms of compositional generalization in conditional diffusion.

Layers (arrows point down only; see docs/architecture.md): cli -> commands -> study -> callbacks -> models ->
checkpoints -> analysis -> data -> diffusion -> nn. Only `models/`, `callbacks/`, `data/datamodule.py` and
`commands/` import Lightning.
"""

__version__ = "0.1.0"
