"""Magnitude-preserving primitives (EDM2 Sec. 3): each op keeps unit RMS on unit-RMS inputs."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from lcsbench.nn.edm2 import Block, preset
from lcsbench.nn.mp import (
    MPConv,
    MPFourier,
    force_weight_norm_,
    mp_cat,
    mp_silu,
    mp_sum,
    normalize,
    pixel_norm,
    resample,
)
from lcsbench.nn.multi_tensor import zero_nonfinite_


def rms(x: torch.Tensor) -> float:
    return x.pow(2).mean().sqrt().item()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_normalize_gives_unit_rms_rows_and_pixels():
    w = 7.0 * torch.randn(64, 32, 3, 3) + 0.3
    rows = normalize(w).flatten(1).pow(2).mean(dim=1).sqrt()
    assert torch.allclose(rows, torch.ones(64), atol=1e-3)
    x = 5.0 * torch.randn(2, 48, 8, 8)
    per_pixel = pixel_norm(x).pow(2).mean(dim=1).sqrt()
    assert torch.allclose(per_pixel, torch.ones_like(per_pixel), atol=1e-3)
    # eps is added to the RMS, so an all-zero row stays zero instead of blowing up
    assert normalize(torch.zeros(3, 4)).abs().max() == 0
    # float32 arithmetic for half inputs, result in the input's dtype
    assert normalize(w.to(torch.bfloat16)).dtype == torch.bfloat16


def test_mp_silu_is_unit_rms_on_standard_normal():
    assert rms(mp_silu(torch.randn(1_000_000))) == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("t", [0.3, 0.5, 0.8])
def test_mp_sum_preserves_magnitude(t):
    a, b = torch.randn(500_000), torch.randn(500_000)
    assert rms(mp_sum(a, b, t)) == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("na,nb,t", [(64, 192, 0.5), (384, 128, 0.3), (100, 100, 0.7)])
def test_mp_cat_preserves_magnitude_and_balance(na, nb, t):
    a, b = torch.randn(64, na, 8, 8), torch.randn(64, nb, 8, 8)
    y = mp_cat(a, b, dim=1, t=t)
    assert y.shape[1] == na + nb
    assert rms(y) == pytest.approx(1.0, abs=0.01)
    # the share of energy of each part is (1-t)^2 : t^2, whatever the channel counts
    energy_a, energy_b = y[:, :na].pow(2).sum(), y[:, na:].pow(2).sum()
    assert (energy_b / energy_a).item() == pytest.approx(t**2 / (1 - t) ** 2, rel=0.03)


def test_mp_fourier_is_unit_rms_and_frozen():
    fourier = MPFourier(512)
    y = fourier(torch.randn(4096))
    assert y.shape == (4096, 512)
    assert rms(y) == pytest.approx(1.0, abs=0.02)
    assert not list(fourier.parameters())  # buffers only
    assert set(fourier.state_dict()) == {"freqs", "phases"}


def test_mp_conv_linear_and_conv_preserve_magnitude():
    linear = MPConv(512, 256, [])
    assert rms(linear(torch.randn(2048, 512))) == pytest.approx(1.0, abs=0.03)
    conv = MPConv(128, 128, [3, 3])
    y = conv(torch.randn(16, 128, 24, 24))
    assert rms(y[:, :, 1:-1, 1:-1]) == pytest.approx(1.0, abs=0.03)  # interior: no zero padding
    # gain scales each effective row to norm |gain|; gain 0 silences the layer exactly
    assert linear(torch.randn(4, 512), gain=0.0).abs().max() == 0
    x = torch.randn(4096, 512)
    assert rms(linear(x, gain=0.25)) == pytest.approx(0.25, abs=0.01)


def test_resample_matches_edm2_box_filter():
    x = torch.randn(2, 5, 8, 8)
    box = torch.full((5, 1, 2, 2), 0.25)
    assert torch.allclose(resample(x, "down"), F.conv2d(x, box, stride=2, groups=5), atol=1e-6)
    assert torch.allclose(resample(x, "up"), F.conv_transpose2d(x, box * 4, stride=2, groups=5), atol=1e-6)
    assert resample(x, "keep") is x
    with pytest.raises(ValueError, match="resample mode"):
        resample(x, "sideways")


def test_forced_weight_norm_keeps_unit_rms_rows_after_optimizer_steps():
    block = Block(32, 64, emb_channels=48, flavor="enc", attention=True, channels_per_head=32)
    optimizer = torch.optim.Adam(block.parameters(), lr=0.05, betas=(0.9, 0.99))
    x, emb = torch.randn(4, 32, 8, 8), torch.randn(4, 48)
    for _ in range(3):
        optimizer.zero_grad()
        block(x, emb).square().mean().backward()
        optimizer.step()
        rows_before = block.conv_res0.weight.flatten(1).pow(2).mean(1).sqrt()
        assert (rows_before - 1).abs().max() > 1e-3  # the step moved rows off the unit sphere
        before = block(x, emb)
        assert force_weight_norm_(block) == 6  # conv_res0, emb_linear, conv_res1, conv_skip, attn_qkv, attn_proj
        for name, weight in block.named_parameters():
            if weight.ndim >= 2:
                rows = weight.flatten(1).pow(2).mean(1).sqrt()
                assert torch.allclose(rows, torch.ones_like(rows), atol=1e-4), name
        # renormalizing stored weights does not change the function (forward normalizes anyway)
        assert torch.allclose(block(x, emb), before, atol=1e-4)


def test_grouped_weight_renormalization_equals_renormalizing_each_layer():
    # force_weight_norm_ renormalizes every layer in one concatenated buffer per row length (nn/multi_tensor.py)
    net = preset("tiny", label_dim=256, model_channels=16)
    layouts = (torch.contiguous_format, torch.channels_last)
    for layout in layouts:
        grouped = copy.deepcopy(net).to(memory_format=layout)
        with torch.no_grad():
            for weight in grouped.parameters():
                weight.mul_(torch.rand_like(weight) + 0.5)  # rows off the unit sphere, differently per row
        reference = copy.deepcopy(grouped)
        count = force_weight_norm_(grouped)
        layers = [m for m in reference.modules() if isinstance(m, MPConv)]
        for layer in layers:
            layer.force_weight_norm_()
        assert count == len(layers) > 20
        for (name, ours), theirs in zip(grouped.named_parameters(), reference.parameters()):
            assert torch.allclose(ours, theirs, rtol=1e-6, atol=1e-7), name  # the same up to summation order
        conv = grouped.unet.enc["32x32_conv"].weight
        assert conv.is_contiguous(memory_format=layout)  # renormalized in place, layout kept


def test_zero_nonfinite_zeroes_exactly_the_nan_and_inf_entries():
    grads = [torch.tensor([1.0, float("nan"), -2.0]), torch.tensor([[float("inf"), 3.0], [4.0, -float("inf")]]),
             torch.tensor([0.5, float("nan")], dtype=torch.float64), torch.ones(2, 3).t()]  # dtypes and strides
    zero_nonfinite_(grads)
    assert grads[0].tolist() == [1.0, 0.0, -2.0]
    assert grads[1].tolist() == [[0.0, 3.0], [4.0, 0.0]]
    assert grads[2].tolist() == [0.5, 0.0] and grads[2].dtype == torch.float64
    assert torch.equal(grads[3], torch.ones(3, 2))


def test_normalize_makes_no_float32_copy_of_a_bf16_tensor():
    # under bf16 autocast an fp32 copy of every normalized activation doubled its memory (issue 24)
    x = torch.randn(4, 64, 8, 8).to(torch.bfloat16)
    made = []

    class RecordOutputs(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            made.extend(t for t in (out if isinstance(out, (tuple, list)) else (out,)) if isinstance(t, torch.Tensor))
            return out

    with RecordOutputs():
        y = normalize(x, dim=1)
    assert not [t for t in made if t.dtype == torch.float32 and t.numel() >= x.numel()]
    reference = x.float() / (1e-4 + x.float().pow(2).mean(dim=1, keepdim=True).sqrt())
    assert y.dtype == torch.bfloat16 and torch.allclose(y.float(), reference, rtol=2e-2, atol=2e-2)
