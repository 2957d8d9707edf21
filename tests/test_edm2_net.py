"""EDM2 U-Net + Precond: official parameter counts, state_dict layout, attention layout, init behaviour."""

import math

import pytest
import torch

from lcsbench.nn.edm2 import PRESETS, Block, Precond, count_parameters, preset
from lcsbench.nn.mp import normalize


@pytest.fixture(scope="module")
def xs256():
    torch.manual_seed(0)
    return preset("img64-xs", label_dim=256)


def test_img64_xs_parameter_counts_match_the_official_release(xs256):
    assert count_parameters(xs256) == 124_330_021  # label_dim 256 (a 16x16 location grid)
    assert count_parameters(xs256.unet) == 124_329_893
    assert count_parameters(preset("img64-xs", label_dim=1000)) == 124_710_949  # ImageNet-64 classes
    assert count_parameters(preset("img64-xs", label_dim=256, img_resolution=32)) == 118_824_997


def test_state_dict_keys_and_shapes_follow_the_official_layout(xs256):
    shapes = {k: tuple(v.shape) for k, v in xs256.state_dict().items()}
    expected = {
        "unet.out_gain": (),
        "unet.emb_fourier.freqs": (128,),
        "unet.emb_fourier.phases": (128,),
        "unet.emb_noise.weight": (512, 128),
        "unet.emb_label.weight": (512, 256),
        "unet.enc.64x64_conv.weight": (128, 4, 3, 3),
        "unet.enc.64x64_block0.emb_gain": (),
        "unet.enc.64x64_block0.conv_res0.weight": (128, 128, 3, 3),
        "unet.enc.64x64_block0.emb_linear.weight": (128, 512),
        "unet.enc.32x32_down.conv_res0.weight": (128, 128, 3, 3),
        "unet.enc.32x32_block0.conv_skip.weight": (256, 128, 1, 1),
        "unet.enc.16x16_block0.attn_qkv.weight": (1152, 384, 1, 1),
        "unet.enc.8x8_block2.attn_proj.weight": (512, 512, 1, 1),
        "unet.dec.8x8_in0.attn_qkv.weight": (1536, 512, 1, 1),
        "unet.dec.8x8_in1.conv_res1.weight": (512, 512, 3, 3),
        "unet.dec.8x8_block3.conv_res0.weight": (512, 896, 3, 3),  # dec: res0 takes main + skip
        "unet.dec.8x8_block3.conv_skip.weight": (512, 896, 1, 1),
        "unet.dec.16x16_up.conv_res0.weight": (512, 512, 3, 3),
        "unet.dec.16x16_block3.conv_skip.weight": (384, 640, 1, 1),
        "unet.dec.64x64_block0.conv_skip.weight": (128, 384, 1, 1),
        "unet.dec.64x64_block3.conv_res1.weight": (128, 128, 3, 3),
        "unet.out_conv.weight": (3, 128, 3, 3),
        "logvar_fourier.freqs": (128,),
        "logvar_fourier.phases": (128,),
        "logvar_linear.weight": (1, 128),
    }
    for key, shape in expected.items():
        assert shapes.get(key) == shape, key
    enc = [k.split(".")[2] for k in shapes if k.startswith("unet.enc.") and k.endswith("conv_res0.weight")]
    dec = [k.split(".")[2] for k in shapes if k.startswith("unet.dec.") and k.endswith("conv_res0.weight")]
    assert len(enc) == 15 and len(dec) == 21
    assert dec[:7] == ["8x8_in0", "8x8_in1", "8x8_block0", "8x8_block1", "8x8_block2", "8x8_block3", "16x16_up"]
    attention = {k.rsplit(".", 2)[0] for k in shapes if k.endswith("attn_qkv.weight")}
    assert len(attention) == 15  # 3 enc@16 + 3 enc@8 + in0 + 4 dec@8 + 4 dec@16
    assert not any(name.endswith(("_in1", "_up", "_down")) for name in attention)
    assert sum(1 for k, s in shapes.items() if s == ()) == 37  # 36 emb_gain + out_gain
    assert sum(b.numel() for b in xs256.buffers()) == 512
    assert not any("bias" in k for k in shapes)


def test_official_state_dict_round_trips_into_a_fresh_net(xs256):
    tiny_a, tiny_b = preset("tiny", label_dim=256), preset("tiny", label_dim=256)
    for p in tiny_a.parameters():
        p.data.normal_()  # non-trivial gains so outputs depend on every weight
    tiny_b.load_state_dict(tiny_a.state_dict(), strict=True)
    x, labels = torch.randn(2, 3, 32, 32), torch.nn.functional.normalize(torch.rand(2, 256), dim=1)
    sigma = torch.tensor([0.3, 4.0])
    assert torch.equal(tiny_a(x, sigma, labels), tiny_b(x, sigma, labels))
    with pytest.raises(RuntimeError, match="size mismatch|Missing|Unexpected"):
        preset("tiny", label_dim=8).load_state_dict(tiny_a.state_dict())


def test_sdpa_attention_equals_cosine_attention_in_official_qkv_order():
    torch.manual_seed(1)
    block = Block(64, 64, emb_channels=32, flavor="dec", attention=True, channels_per_head=16)
    x = torch.randn(2, 64, 6, 6)
    n, c, h, w = x.shape
    heads = block.num_heads
    assert heads == 4
    # explicit einsum on the layout [N, heads, C/heads, q|k|v, HW]: q/k/v is the fastest channel index
    qkv = block.attn_qkv(x).reshape(n, heads, c // heads, 3, h * w)
    q, k, v = normalize(qkv, dim=2).unbind(3)
    weights = torch.einsum("nhcq,nhck->nhqk", q, k / math.sqrt(q.shape[2])).softmax(dim=3)
    y = torch.einsum("nhqk,nhck->nhcq", weights, v).reshape(n, c, h, w)
    assert torch.allclose(block.cosine_attention(x), block.attn_proj(y), atol=1e-5)


def test_denoiser_is_c_skip_times_x_at_init():
    torch.manual_seed(2)
    net = preset("tiny", label_dim=256)
    x = torch.randn(3, 3, 32, 32)
    sigma = torch.tensor([0.01, 0.5, 30.0])
    labels = torch.nn.functional.normalize(torch.rand(3, 256), dim=1)
    denoised, logvar = net(x, sigma, labels, return_logvar=True)
    c_skip = 0.25 / (sigma**2 + 0.25)
    assert torch.equal(denoised, c_skip.reshape(-1, 1, 1, 1) * x)  # out_gain = 0: F contributes exactly 0
    assert logvar.shape == (3, 1, 1, 1) and torch.isfinite(logvar).all()
    # a scalar sigma broadcasts over the batch; labels=None means "no label" (zero vector)
    scalar = net(x, torch.tensor(0.5), labels)
    assert torch.equal(scalar, net(x, torch.full((3,), 0.5), labels))
    assert net(x, 0.5, None).shape == x.shape


def test_activations_keep_unit_magnitude_at_init_with_gains_on():
    torch.manual_seed(3)
    net = preset("img64-xs", label_dim=256, img_resolution=32, model_channels=64)  # xs layout, CPU-sized
    for name, p in net.named_parameters():
        if name.endswith("emb_gain"):
            p.data.fill_(0.5)
    net.unet.out_gain.data.fill_(1.0)
    magnitudes = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: magnitudes.__setitem__(n, o.pow(2).mean().sqrt().item()))
             for n, m in [*((f"enc.{k}", v) for k, v in net.unet.enc.items()),
                *((f"dec.{k}", v) for k, v in net.unet.dec.items())]]
    labels = torch.zeros(2, 256)
    labels[0, 17] = labels[1, 200] = 1.0
    with torch.no_grad():
        sigma = torch.tensor([0.5, 2.0])
        noisy = torch.randn(2, 3, 32, 32) * (0.25 + sigma**2).sqrt().reshape(-1, 1, 1, 1)  # data std 0.5 + noise
        net(noisy, sigma, labels)
    for h in hooks:
        h.remove()
    assert len(magnitudes) == 16 + 21
    assert all(0.7 < v < 1.4 for v in magnitudes.values()), magnitudes


def test_label_dim_mismatch_is_a_clear_error():
    net = preset("tiny", label_dim=256)
    with pytest.raises(ValueError, match=r"labels must be \[N, 256\].*got shape \(2, 8\)"):
        net(torch.randn(2, 3, 32, 32), 1.0, torch.zeros(2, 8))
    with pytest.raises(ValueError, match="unknown EDM2 preset"):
        preset("img64-huge", label_dim=8)


def test_presets_build_and_run_at_their_resolution():
    assert {"img64-xs", "img64-s", "img128-xs", "img128-s", "tiny"} <= set(PRESETS)
    assert PRESETS["img64-s"]["model_channels"] == 192 and PRESETS["img128-xs"]["img_resolution"] == 128
    net = preset("tiny", label_dim=8)
    assert isinstance(net, Precond) and net.config["label_dim"] == 8
    assert net(torch.randn(1, 3, 32, 32), 1.0, torch.eye(8)[:1]).shape == (1, 3, 32, 32)
