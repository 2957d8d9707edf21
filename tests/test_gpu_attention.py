"""The attention path hands SDPA contiguous q, k, v (the fused GPU kernels need a unit last-dim stride; strided
inputs fall back to SDPA's slow math kernel), in every layout and precision the models train in (issue 24)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from lcsbench.nn.edm2 import Block, preset
from lcsbench.nn.mp import normalize


class RecordAttention(TorchFunctionMode):
    """Records the q, k, v of every scaled_dot_product_attention call, then runs it."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[torch.Tensor, ...]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.scaled_dot_product_attention:
            self.calls.append(tuple(args[:3]))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("channels_last, autocast", [(False, False), (True, False), (True, True)])
def test_sdpa_gets_contiguous_q_k_v(channels_last, autocast):
    torch.manual_seed(0)
    net = preset("tiny", label_dim=256)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    x, labels = torch.randn(2, 3, 32, 32), torch.zeros(2, 256)
    with RecordAttention() as recorder, torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        net(x, torch.tensor([0.5, 2.0]), labels)
    assert len(recorder.calls) == 4  # 8x8: the encoder block, the decoder's in0 and its two blocks
    for q, k, v in recorder.calls:
        assert q.shape[-1] == 32 and q.shape == k.shape == v.shape  # [N, heads, HW, C/heads]
        assert all(t.is_contiguous() for t in (q, k, v))


def test_contiguous_attention_keeps_the_official_qkv_order():
    torch.manual_seed(1)
    block = Block(64, 64, emb_channels=32, flavor="dec", attention=True, channels_per_head=16)
    x = torch.randn(2, 64, 6, 6)
    n, c, h, w = x.shape
    qkv = normalize(block.attn_qkv(x).reshape(n, 4, c // 4, 3, h * w), dim=2)  # q/k/v fastest, as released
    q, k, v = qkv.unbind(3)
    weights = torch.einsum("nhcq,nhck->nhqk", q, k / math.sqrt(q.shape[2])).softmax(dim=3)
    expected = block.attn_proj(torch.einsum("nhqk,nhck->nhcq", weights, v).reshape(n, c, h, w))
    assert torch.allclose(block.cosine_attention(x), expected, atol=1e-5)
