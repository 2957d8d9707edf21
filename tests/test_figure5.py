"""Figure 5 / Figure 11 in the paper's layout (analysis/figure5.py), on a real tiny colour EDM2's measurement."""

import pytest
import torch
from PIL import Image

from lcsbench.analysis.features import feature_cosines, mean_difference_vectors, reinitialised_copy
from lcsbench.analysis.figure5 import FEATURE_SPACE, figure5, figure5_summary, network_part
from lcsbench.analysis.plots import save_figure


@pytest.fixture(scope="module")
def features_json():
    """features.json's fields (the `features` command's summary and baseline) of an untrained tiny colour model."""
    from lcsbench.data.conditioning import encode_label
    from lcsbench.nn.edm2 import preset

    torch.manual_seed(0)
    net = preset("tiny", label_dim=8, img_resolution=16).eval()
    with torch.no_grad():
        for name, param in net.named_parameters():
            if name.endswith("emb_gain"):
                param.fill_(0.3)

    def measure(network):
        def denoiser(x, sigma, cond):
            return network(x, sigma, encode_label(cond, "color"))
        torch.manual_seed(1)
        vectors = mean_difference_vectors(denoiser, torch.randn(4, 3, 16, 16), [0.5, 5.0],
                                          torch.eye(8, dtype=torch.long), network=network)
        return feature_cosines(vectors, ["red", "blue", "green", "yellow", "cyan", "purple", "brown", "gray"])

    model, chance = measure(net).summary(), measure(reinitialised_copy(net, seed=3)).summary()
    return {**model, "baseline": {key: chance[key] for key in ("average_mean_abs_off_diagonal",
                                                               "per_resolution_mean_abs_off_diagonal", "average")}}


def test_layers_split_into_encoder_and_decoder():
    assert network_part("unet.enc.32x32_block0") == "encoder"
    assert network_part("unet.dec.8x8_block1.emb_linear") == "decoder"
    assert network_part("some.other.layer") == "other"


def test_summary_has_every_layer_beside_its_chance_level(features_json):
    summary = figure5_summary(features_json)
    assert set(summary) == set(features_json["layers"]) | {FEATURE_SPACE}
    first = features_json["layers"][0]
    row = summary[first]
    group_chance = features_json["baseline"]["per_resolution_mean_abs_off_diagonal"]["enc 16x16"]
    assert row["part"] == "encoder" and row["chance"] == group_chance  # the resolution's chance where no per-layer
    assert row["below_chance"] == (row["mean_abs_off_diagonal"] < group_chance)
    space = summary[FEATURE_SPACE]
    assert space["layers"] == features_json["averaged_layers"]
    assert space["mean_abs_off_diagonal"] == features_json["average_mean_abs_off_diagonal"]
    with_layer_chance = {**features_json, "baseline": {**features_json["baseline"],
                                                       "mean_abs_off_diagonal": {first: 0.0}}}
    assert figure5_summary(with_layer_chance)[first]["chance"] == 0.0  # a per-layer chance wins
    assert figure5_summary(with_layer_chance)[first]["below_chance"] is False


def test_figure_draws_a_row_per_model(tmp_path, features_json):
    figure = figure5({"color_1": features_json, "color_1to5": features_json}, parts=("encoder", "decoder"),
                     title="Figure 11")
    path = save_figure(figure, tmp_path / "figure11.png")
    width, height = Image.open(path).size
    assert width > height > 200
