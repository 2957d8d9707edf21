"""Figure 5 and Figure 11 in the paper's layout: is colour disentangled somewhere in the network (Section 4,
Appendix E.4)?

From the `features` command's features.json of several colour models (Eq. 3 cosine matrices of every MCScale
layer, their feature-space average, and the chance level of a re-initialised copy): one row of matrices per
model (the encoder's layers, then the decoder's, then the feature-space average), a panel of each layer's mean
|off-diagonal cosine| beside its chance level, and the summary report.json keeps (`figure5`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from lcsbench.analysis.features import resolution_group

FEATURE_SPACE = "feature-space"


def network_part(layer: str) -> str:
    """'encoder' or 'decoder' for an EDM2 block's layer (resolution_group), else 'other'."""
    group = resolution_group(layer)
    return {"enc": "encoder", "dec": "decoder"}.get(group.split()[0], "other") if group else "other"


def layer_chance(features: Mapping, layer: str) -> float | None:
    """A layer's chance level: the re-initialised copy's value for that layer where features.json has it, else
    its resolution's (the copy's per-resolution mean), else None."""
    baseline = features.get("baseline") or {}
    per_layer = baseline.get("mean_abs_off_diagonal") or {}
    if per_layer.get(layer) is not None:
        return per_layer[layer]
    group = resolution_group(layer)
    return (baseline.get("per_resolution_mean_abs_off_diagonal") or {}).get(group) if group else None


def figure5_summary(features: Mapping) -> dict:
    """{layer: {part, resolution, mean_abs_off_diagonal, chance, below_chance}} and the feature-space average
    under "feature-space" (its layers listed), for one model's features.json."""
    summary = {}
    for layer in features["layers"]:
        value, chance = features["mean_abs_off_diagonal"].get(layer), layer_chance(features, layer)
        summary[layer] = {"part": network_part(layer), "resolution": resolution_group(layer),
                          "mean_abs_off_diagonal": value, "chance": chance,
                          "below_chance": None if value is None or chance is None else value < chance}
    average, chance = features.get("average_mean_abs_off_diagonal"), (features.get("baseline") or {}).get(
        "average_mean_abs_off_diagonal")
    summary[FEATURE_SPACE] = {"part": "average", "layers": features.get("averaged_layers", []),
                              "mean_abs_off_diagonal": average, "chance": chance,
                              "below_chance": None if average is None or chance is None else average < chance}
    return summary


def ordered_layers(features: Mapping, parts: Sequence[str] = ("encoder", "decoder")) -> list[str]:
    """The layers of the given parts, in execution order (features.json's order)."""
    return [layer for layer in features["layers"] if network_part(layer) in parts]


def _short(layer: str) -> str:
    return layer.replace("unet.", "").replace(".emb_linear", "").replace(".conv_res1", "").replace("_block", " b")


def figure5(
    models: Mapping[str, Mapping],  # model name -> its features.json, in the order of the figure's rows
    parts: Sequence[str] = ("encoder",),  # Figure 5: the encoder's layers; Figure 11: ("encoder", "decoder")
    title: str = "",
) -> Figure:
    """One row per model: the cosine matrix of each layer of `parts` and the feature-space average, then a panel
    of the mean |off-diagonal cosine| per layer beside the re-initialised copy's chance level."""
    layers = {name: ordered_layers(features, parts) for name, features in models.items()}
    columns = max(len(v) for v in layers.values()) + 2
    figure = Figure(figsize=(1.9 * columns, 2.1 * len(models) + 0.5))
    for row, (name, features) in enumerate(models.items()):
        labels = features.get("labels", [])
        panels = [(layer, features["per_layer"][layer]) for layer in layers[name]]
        panels.append((FEATURE_SPACE, features["average"]))
        for col, (layer, matrix) in enumerate(panels):
            axis = figure.add_subplot(len(models), columns, row * columns + col + 1)
            image = axis.imshow(np.array(matrix, dtype=float), vmin=-1, vmax=1, cmap="RdBu_r")
            axis.set_xticks(range(len(labels)), [c[:3] for c in labels], fontsize=5, rotation=90)
            axis.set_yticks(range(len(labels)), [c[:3] for c in labels], fontsize=5)
            axis.set_title(_short(layer), fontsize=6)
            if col == 0:
                axis.set_ylabel(name, fontsize=8)
        figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04)
        _off_diagonal_panel(figure.add_subplot(len(models), columns, (row + 1) * columns), figure5_summary(features),
                            layers[name])
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figure


def _off_diagonal_panel(axis, summary: Mapping, layers: Sequence[str]) -> None:
    values = [summary[layer]["mean_abs_off_diagonal"] for layer in layers]
    chance = [summary[layer]["chance"] for layer in layers]
    x = np.arange(len(layers))
    axis.bar(x, [np.nan if v is None else v for v in values], color="tab:blue", label="model")
    axis.plot(x, [np.nan if c is None else c for c in chance], "k_", markersize=10, mew=2, label="chance")
    axis.set_xticks(x, [_short(layer) for layer in layers], fontsize=5, rotation=90)
    axis.set_ylim(0, 1)
    axis.set_title("mean |off-diag cos|", fontsize=6)
    axis.legend(fontsize=5)
