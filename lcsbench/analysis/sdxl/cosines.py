"""Eq. 3 on SDXL cross-attention maps: mean difference vectors, cosine matrices, compositional similarity
(Appendix G, Figures 7 and 13).

For a prompt k read at its concept token, the mean difference vector at a layer and step is its map averaged
over samples minus the unconditional prompt's map at its end-of-sequence token, flattened over the layer's
pixels. Low off-diagonal cosine between prompts is evidence of feature-space disentanglement (heuristic 3).
The compositional analysis compares a token's vector in a composite prompt ("vangogh+cat+sushi" at "cat")
with the single prompt's vector ("cat" at "cat").
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor

from lcsbench.analysis.features import cosine_matrix, off_diagonal_mean

Key = tuple[str, int]  # (layer, step)


def difference_vectors(
    maps: Mapping[str, Mapping[Key, Tensor]],  # entry label -> {(layer, step): mean map [h, w]}
    reference: Mapping[Key, Tensor],        # unconditional end-of-sequence map per (layer, step)
) -> dict[Key, dict[str, Tensor]]:
    """{(layer, step): {entry: flattened map - reference}} for every key the reference has."""
    vectors: dict[Key, dict[str, Tensor]] = {}
    for key, base in reference.items():
        per_entry = {}
        for entry, entry_maps in maps.items():
            if key not in entry_maps:
                raise KeyError(f"entry {entry!r} has no map for layer {key[0]!r} step {key[1]}: capture every prompt "
                               f"with the same layers and steps")
            per_entry[entry] = (entry_maps[key].float() - base.float()).flatten()
        vectors[key] = per_entry
    return vectors


def cosine_matrices(vectors: Mapping[Key, Mapping[str, Tensor]], labels: Sequence[str]) -> dict[Key, Tensor]:
    """{(layer, step): [K, K]} cosine similarity between the labels' difference vectors (symmetric, unit
    diagonal; NaN rows for a zero vector)."""
    return {key: cosine_matrix(torch.stack([per_entry[label] for label in labels]))
            for key, per_entry in vectors.items()}


def average_matrix(matrices: Mapping[Key, Tensor], layers: Sequence[str], step: int) -> Tensor:
    """The mean over `layers` of the step's cosine matrices (the paper's "feature-space" panels)."""
    chosen = [matrices[(layer, step)] for layer in layers if (layer, step) in matrices]
    if not chosen:
        raise KeyError(f"no cosine matrix for step {step} in layers {list(layers)}")
    return torch.stack(chosen).nanmean(dim=0)


def compositional_similarity(
    vectors: Mapping[Key, Mapping[str, Tensor]],
    pairs: Sequence[tuple[str, str]],       # (composite entry, e.g. "vangogh+cat@cat", single entry, e.g. "cat")
) -> dict[Key, dict[str, float]]:
    """{(layer, step): {composite entry: cosine with its single-prompt entry}}."""
    out: dict[Key, dict[str, float]] = {}
    for key, per_entry in vectors.items():
        row = {}
        for composite, single in pairs:
            pair = torch.stack([per_entry[composite], per_entry[single]])
            row[composite] = float(cosine_matrix(pair)[0, 1])
        out[key] = row
    return out


__all__ = ["difference_vectors", "cosine_matrices", "average_matrix", "compositional_similarity",
           "off_diagonal_mean"]
