"""The fast full-image patch-local denoiser (issue 32): equal to the path it replaced, labels kept per conditioner,
and bf16 autocast within bf16's tolerance of fp32."""

from __future__ import annotations

import pytest
import torch

from lcsbench.nn.edm2 import Precond
from lcsbench.nn.patch import PatchLocal, patch_label_dim, reference_forward

G, M, R = 4, 2, 2  # 4 x 4 cells of 2 px (8 px images), patches of 5 x 5 cells as in Exp. 3


def tiny_model(channels_last: bool = False, max_patches: int = 4096) -> PatchLocal:
    torch.manual_seed(0)
    net = Precond(img_resolution=(2 * R + 1) * M, img_channels=3, label_dim=patch_label_dim(R), model_channels=16,
                  channel_mult=[1, 2], num_blocks=1, attn_resolutions=[], channels_per_head=16)
    with torch.no_grad():
        for param in net.parameters():
            if param.ndim == 0:
                param.fill_(0.7)  # non-zero gains: the output mixes pixels and labels
    net = net.to(memory_format=torch.channels_last) if channels_last else net
    return PatchLocal(net.eval(), grid_size=G, radius=R, max_patches=max_patches)


def inputs(batch: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, G * M, G * M, generator=generator)
    cond = (torch.rand(batch, G, G, generator=generator) < 0.2).float()
    return x, cond


@pytest.mark.parametrize("max_patches", [4096, 7])
def test_fast_path_equals_the_old_one_exactly_in_fp32(max_patches):
    model, (x, cond) = tiny_model(max_patches=max_patches), inputs()
    with torch.no_grad():
        assert torch.equal(model(x, 0.8, cond), reference_forward(model, x, 0.8, cond))


def test_a_channels_last_network_gets_channels_last_patches_and_the_same_output():
    model, (x, cond) = tiny_model(channels_last=True), inputs()
    assert model.channels_last and not tiny_model().channels_last
    assert model.cell_patches(x).is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(model(x, 0.8, cond), reference_forward(model, x, 0.8, cond), rtol=1e-5, atol=1e-5)


def test_bf16_autocast_stays_within_bf16_tolerance_of_fp32():
    model, (x, cond) = tiny_model(channels_last=True), inputs()
    with torch.no_grad():
        full = reference_forward(model, x, 2.0, cond)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = model(x, 2.0, cond)
    assert fast.dtype == torch.float32
    assert 0 < (fast - full).abs().max() < 0.05  # bf16 really ran, and stayed close


def test_labels_are_kept_for_the_same_conditioner_and_redone_when_it_changes():
    model, (x, cond) = tiny_model(), inputs()
    first = model.flat_labels(cond)
    assert model.flat_labels(cond) is first  # every sampler step passes the same tensor
    cond[0, 0, 0] = 1 - cond[0, 0, 0]  # changed in place: its version moves on
    again = model.flat_labels(cond)
    assert again is not first and torch.equal(again, model.cell_labels(cond).reshape(again.shape))
    with torch.no_grad():
        assert torch.equal(model(x, 0.8, cond), reference_forward(model, x, 0.8, cond))
    assert model.flat_labels(cond.clone()) is not again  # another tensor is never taken for this one


def test_gradients_through_the_fast_path_equal_the_old_ones():
    model, (x, cond) = tiny_model(), inputs(1)
    x.requires_grad_(True)
    (fast,) = torch.autograd.grad(model(x, 1.5, cond)[0, :, 2, 3].sum(), x)
    (old,) = torch.autograd.grad(reference_forward(model, x, 1.5, cond)[0, :, 2, 3].sum(), x)
    assert torch.equal(fast, old) and fast.abs().sum() > 0


def test_the_inference_precision_decides_the_networks_arithmetic_on_the_cpu():
    from lcsbench.commands._common import apply_precision
    from lcsbench.models.patch import PatchLocalDiffusion

    module = PatchLocalDiffusion(tiny_model(channels_last=True).net, grid_size=G, radius=R, channels_last=True).eval()
    dtypes = []
    module.net.unet.out_conv.register_forward_hook(lambda _m, _i, out: dtypes.append(out.dtype))
    x, cond = inputs(1)
    with torch.no_grad():
        for precision, expected in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
            assert apply_precision(module, precision) is module
            assert module.denoiser(x, 1.0, cond).dtype == torch.float32 and dtypes[-1] == expected
    with pytest.raises(ValueError, match="one of"):
        module.set_inference_precision("fp16")
    closed_form_like = torch.nn.Identity()  # no inference precision: left as it is
    assert apply_precision(closed_form_like, "bf16") is closed_form_like


def test_the_cpu_runs_the_network_in_cache_sized_chunks_with_the_same_output():
    from lcsbench.nn.patch import CPU_CHUNK_PATCHES

    model, (x, cond) = tiny_model(), inputs(batch=CPU_CHUNK_PATCHES // (G * G) + 2)  # more patches than one chunk
    assert model.chunk_for(torch.device("cpu")) == CPU_CHUNK_PATCHES
    assert model.chunk_for(torch.device("cuda")) == model.max_patches
    calls = []
    model.net.register_forward_hook(lambda _m, inputs_, _o: calls.append(inputs_[0].shape[0]))
    with torch.no_grad():
        fast = model(x, 0.8, cond)
        assert calls == [CPU_CHUNK_PATCHES, x.shape[0] * G * G - CPU_CHUNK_PATCHES]
        torch.testing.assert_close(fast, reference_forward(model, x, 0.8, cond), rtol=1e-5, atol=1e-5)
