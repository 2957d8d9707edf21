"""Feature-space cosine analysis (paper Eq. 3, Appendix E.4) on toy networks with known condition directions."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lcsbench.analysis.features import (
    capture_outputs,
    cosine_matrix,
    feature_cosines,
    feature_layers,
    mean_difference_vectors,
    modulation_layers,
    reinitialised_copy,
)


class ToyBlock(nn.Module):
    """Scales features by 1 + emb_linear(emb), like an EDM2 Block's conditioning modulation."""

    def __init__(self, directions: torch.Tensor):  # [D, K]: column k is condition k's direction
        super().__init__()
        self.emb_linear = nn.Linear(directions.shape[1], directions.shape[0], bias=False)
        with torch.no_grad():
            self.emb_linear.weight.copy_(directions)

    def forward(self, x, emb):
        scale = 1 + self.emb_linear(emb)  # [B, D]
        return x * scale.mean(dim=1)[:, None, None, None]


class ToyNet(nn.Module):
    """A denoiser with two modulated blocks; cond = colour counts [B, K]."""

    def __init__(self, first: torch.Tensor, second: torch.Tensor):
        super().__init__()
        self.enc = nn.ModuleDict({"block0": ToyBlock(first)})
        self.dec = nn.ModuleDict({"block0": ToyBlock(second)})

    def forward(self, x, sigma, cond):
        emb = cond.to(x.dtype) * (1 + 0.1 * math.log(float(sigma)))  # noise level modulates the strength
        return self.dec["block0"](self.enc["block0"](x, emb), emb)


def scale_site_vectors(*args, **kwargs):
    """The tests of the scale site (`emb_linear`'s output), which these toy blocks model."""
    return mean_difference_vectors(*args, site="scale", **kwargs)


def orthonormal_columns(rows: int, cols: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(rows, cols, generator=generator))
    return q


def test_orthogonal_condition_directions_give_the_identity():
    k = 5
    net = ToyNet(orthonormal_columns(16, k, seed=0), orthonormal_columns(12, k, seed=1)).eval()
    images = torch.randn(3, 3, 8, 8)
    conditions = torch.eye(k)  # one condition per colour
    vectors = scale_site_vectors(net, images, [0.5, 2.0], conditions, batch_size=4)
    assert list(vectors) == ["enc.block0.emb_linear", "dec.block0.emb_linear"]
    assert vectors["enc.block0.emb_linear"].shape == (k, 16)
    result = feature_cosines(vectors, [f"c{i}" for i in range(k)])
    for matrix in [*result.per_layer.values(), result.average]:
        torch.testing.assert_close(matrix, torch.eye(k), atol=1e-5, rtol=0)
    assert result.summary()["average_mean_abs_off_diagonal"] < 1e-5


def test_shared_direction_shows_up_off_the_diagonal():
    # Conditions 0 and 1 share one direction half-and-half: cosine 1/sqrt(2); others stay orthogonal.
    q = orthonormal_columns(10, 3, seed=2)
    directions = torch.stack([q[:, 0], (q[:, 0] + q[:, 1]) / math.sqrt(2), q[:, 2]], dim=1)
    net = ToyNet(directions, orthonormal_columns(6, 3, seed=3)).eval()
    vectors = scale_site_vectors(net, torch.randn(2, 1, 4, 4), [1.0], torch.eye(3), layers=["enc.*"])
    assert list(vectors) == ["enc.block0.emb_linear"]
    result = feature_cosines(vectors, ["a", "b", "c"])
    expected = torch.tensor([[1, 1 / math.sqrt(2), 0], [1 / math.sqrt(2), 1, 0], [0, 0, 1]])
    torch.testing.assert_close(result.average, expected, atol=1e-5, rtol=0)


def test_mean_difference_is_against_the_unconditional_mean_over_sigmas():
    directions = torch.eye(4)
    net = ToyNet(directions, directions).eval()
    vectors = scale_site_vectors(net, torch.randn(2, 1, 4, 4), [1.0, math.e], 2 * torch.eye(4)[:2])
    # emb_linear(2 e_k * s) = 2 s e_k with s = 1 + 0.1 ln(sigma): mean over sigmas 2 * 1.05 along e_k.
    torch.testing.assert_close(vectors["enc.block0.emb_linear"], 2.1 * torch.eye(4)[:2])


def test_cosine_of_a_zero_vector_is_nan_and_ignored_in_the_average():
    matrix = cosine_matrix(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    assert matrix[0, 0] == 1 and torch.isnan(matrix[1]).all() and torch.isnan(matrix[:, 1]).all()
    vectors = {"a": torch.tensor([[1.0, 0.0], [0.0, 0.0]]), "b": torch.tensor([[1.0, 0.0], [0.0, 2.0]])}
    result = feature_cosines(vectors, ["x", "y"])
    torch.testing.assert_close(result.average, torch.eye(2))


def test_unknown_layer_name_lists_the_valid_names():
    net = ToyNet(torch.eye(3), torch.eye(3)).eval()
    with pytest.raises(ValueError, match=r"layer 'enc.block7' does not exist.*enc.block0.emb_linear, "
                                         r"dec.block0.emb_linear"):
        scale_site_vectors(net, torch.randn(1, 1, 4, 4), [1.0], torch.eye(3), layers=["enc.block7"])
    vectors = {"enc.block0.emb_linear": torch.eye(3)}
    with pytest.raises(ValueError, match="Valid layer names"):
        feature_cosines(vectors, ["a", "b", "c"], average_layers=["nope"])
    with pytest.raises(ValueError, match="no 'emb_linear' layers"):
        scale_site_vectors(nn.Identity(), torch.randn(1, 1, 4, 4), [1.0], torch.eye(3))


def test_hooks_are_removed_after_an_error():
    net = ToyNet(torch.eye(3), torch.eye(3))
    names = list(modulation_layers(net))
    with pytest.raises(RuntimeError):
        with capture_outputs(net, names):
            raise RuntimeError("boom")
    assert all(not m._forward_hooks for m in net.modules())


def test_real_edm2_modulation_layers_are_every_block():
    from lcsbench.data.conditioning import encode_label
    from lcsbench.nn.edm2 import Block, preset

    torch.manual_seed(0)
    net = preset("tiny", label_dim=8, img_resolution=16).eval()
    names = list(modulation_layers(net))
    blocks = [name for name, m in net.named_modules() if isinstance(m, Block)]
    assert names == [f"{b}.emb_linear" for b in blocks]
    assert names[0].startswith("unet.enc.") and any(n.startswith("unet.dec.") for n in names)

    def denoiser(x, sigma, cond):
        return net(x, sigma, encode_label(cond, "color"))

    images = 0.2 * torch.randn(2, 3, 16, 16)
    # At init emb_gain = 0: the embedding does not reach the features, every difference vector is zero.
    zero = scale_site_vectors(denoiser, images, [1.0], torch.eye(8, dtype=torch.long), network=net)
    assert all(torch.all(v == 0) for v in zero.values())
    with torch.no_grad():
        for name, param in net.named_parameters():
            if name.endswith("emb_gain"):
                param.fill_(1.0)
    vectors = scale_site_vectors(denoiser, images, [0.5, 5.0], torch.eye(8, dtype=torch.long), network=net,
                                      layers=["unet.enc.*"])
    assert set(vectors) == {n for n in names if n.startswith("unet.enc.")}
    result = feature_cosines(vectors, [str(i) for i in range(8)])
    for matrix in result.per_layer.values():
        torch.testing.assert_close(matrix.diagonal(), torch.ones(8))
        torch.testing.assert_close(matrix, matrix.T)
    with pytest.raises(ValueError, match="unet.enc.16x16_block0.emb_linear"):
        scale_site_vectors(denoiser, images, [1.0], torch.eye(8), network=net, layers=["unet.enc.99x99*"])


# --- the default site: the block's features after the conditional scale (E.4 "layer activations") ----------


class ToyModulatedBlock(nn.Module):
    """An EDM2-shaped block: features y scaled per channel by 1 + emb_linear(emb), then conv_res1."""

    def __init__(self, directions: torch.Tensor):  # [C, K]
        super().__init__()
        self.emb_linear = nn.Linear(directions.shape[1], directions.shape[0], bias=False)
        self.conv_res1 = nn.Identity()
        with torch.no_grad():
            self.emb_linear.weight.copy_(directions)

    def forward(self, x, emb):
        scale = 1 + self.emb_linear(emb)
        return self.conv_res1(x * scale[:, :, None, None])


class ToyModulatedNet(nn.Module):
    def __init__(self, directions: torch.Tensor):
        super().__init__()
        self.enc = nn.ModuleDict({"64x64_block0": ToyModulatedBlock(directions)})

    def forward(self, x, sigma, cond):
        return self.enc["64x64_block0"](x, cond.to(x.dtype))


def test_a_network_built_disentangled_reads_disentangled_at_the_modulated_site():
    k = 4
    directions = torch.zeros(8, k)
    for j in range(k):  # each condition scales its own pair of channels
        directions[2 * j:2 * j + 2, j] = 1.0
    net = ToyModulatedNet(directions).eval()
    images = torch.rand(3, 8, 4, 4) + 0.5
    vectors = mean_difference_vectors(net, images, [0.5, 2.0], torch.eye(k))  # default site: modulated
    assert list(vectors) == ["enc.64x64_block0"] and vectors["enc.64x64_block0"].shape == (k, 8 * 4 * 4)
    result = feature_cosines(vectors, [str(j) for j in range(k)])
    torch.testing.assert_close(result.average, torch.eye(k))
    assert result.summary()["per_resolution"] == {"enc 64x64": [[1.0 if a == b else 0.0 for b in range(k)]
                                                                for a in range(k)]}
    # the same architecture with re-drawn weights (the chance level) is not disentangled
    chance = feature_cosines(mean_difference_vectors(reinitialised_copy(net, seed=0), images, [0.5, 2.0],
                                                     torch.eye(k)), [str(j) for j in range(k)])
    assert chance.summary()["average_mean_abs_off_diagonal"] > 0.2


def test_untrained_edm2_is_no_more_disentangled_than_its_chance_level():
    """Measured before this check existed: at the scale site an untrained colour model reads 0.12 mean |cos|,
    which looks disentangled; neither site can tell a random network from a disentangled one by the number
    alone, so the commands report the re-initialised copy beside it."""
    from lcsbench.data.conditioning import encode_label
    from lcsbench.nn.edm2 import preset

    torch.manual_seed(0)
    net = preset("tiny", label_dim=8, img_resolution=16).eval()
    with torch.no_grad():
        for name, param in net.named_parameters():
            if name.endswith("emb_gain"):
                param.fill_(0.3)
    names = list(feature_layers(net))
    assert names[0] == "unet.enc.16x16_block0" and all(not n.endswith("emb_linear") for n in names)

    def measure(network):
        def denoiser(x, sigma, cond):
            return network(x, sigma, encode_label(cond, "color"))
        vectors = mean_difference_vectors(denoiser, torch.randn(4, 3, 16, 16), [0.5, 5.0],
                                          torch.eye(8, dtype=torch.long), network=network)
        return feature_cosines(vectors, [str(i) for i in range(8)])

    torch.manual_seed(1)
    untrained = measure(net)
    assert untrained.averaged_layers == [n for n in names if n.startswith(("unet.enc.16x16", "unet.enc.8x8"))]
    assert set(untrained.per_resolution) >= {"enc 16x16", "enc 8x8", "dec 8x8", "dec 16x16"}
    torch.manual_seed(1)
    chance = measure(reinitialised_copy(net, seed=3))
    score = untrained.summary()["average_mean_abs_off_diagonal"]
    level = chance.summary()["average_mean_abs_off_diagonal"]
    assert 0.5 < score / level < 2.0  # a random network sits at its own chance level, not below it


def test_chance_level_measures_through_redrawn_weights_and_restores_the_trained_ones():
    from lcsbench.analysis.features import chance_level
    from lcsbench.diffusion.denoiser import BoundDenoiser

    net = nn.Linear(4, 4)
    trained = {k: v.clone() for k, v in net.state_dict().items()}
    denoiser = BoundDenoiser(lambda x, sigma, cond: net(x), (1, 1, 4), "color", network=net)
    seen = chance_level(denoiser, lambda: net.weight.detach().clone(), seed=3)
    assert not torch.equal(seen, trained["weight"]) and torch.equal(net.bias, trained["bias"])  # gains kept
    assert all(torch.equal(v, trained[k]) for k, v in net.state_dict().items())

    def failing():
        raise RuntimeError("measurement failed")

    with pytest.raises(RuntimeError, match="measurement failed"):
        chance_level(denoiser, failing)
    assert all(torch.equal(v, trained[k]) for k, v in net.state_dict().items())
