"""Trained weights shipped inside the package (read with importlib.resources): the object judges of the
length-generalization protocol, `judge-<resolution>.pt`, each recording its recipe and measured accuracy.
`lcsbench.models.judge.load_judge()` loads them; `scripts/ship_judge.py` writes them."""
