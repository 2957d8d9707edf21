"""The EDM2 U-Net (Karras et al. 2024, Fig. 21) and its EDM preconditioning, functionally equivalent to
the official release: same module names, parameter shapes and q/k/v channel order, so an official
`state_dict` loads with `load_state_dict` (e.g. `unet.enc.64x64_conv.weight`,
`unet.dec.8x8_in0.attn_qkv.weight`, `logvar_linear.weight`).

Conditioning reaches the image features only through one global embedding that scales the residual
branch of every `Block` per channel (`Block.emb_linear`, the "MCScale" layers of the paper's App. E.4).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from lcsbench.nn.mp import MPConv, MPFourier, mp_cat, mp_silu, mp_sum, normalize, pixel_norm, resample

# --- Label scale: how a count vector enters EDM2's label path (paper App. E.1) ------------------------------
# EDM2 embeds its label as `emb_label(labels * sqrt(label_dim))`, a linear map, so the scale of the count vector
# is a modelling choice. `counts` (the paper's "2d integer array"): the counts go in as they are, exactly as
# EDM2 takes a one-hot class vector, so each object adds the same embedding whatever else is in the scene and
# removing one conditioner (Eq. 10) leaves the others' contributions unchanged. `unit`: the vector is scaled to
# unit L2 norm, so each of k objects enters with weight 1/sqrt(k) (0.33 at k = 9, below the >= 0.58 seen when
# training on 1-3 objects). An empty vector stays zero either way.

LABEL_SCALES = ("counts", "unit")


def check_label_scale(label_scale: str) -> str:
    """`label_scale` if it is one of LABEL_SCALES, else a ValueError saying what each one means."""
    if label_scale not in LABEL_SCALES:
        raise ValueError(f"label_scale must be one of {LABEL_SCALES} (counts: the integer counts as they are, the "
                         f"paper's reading; unit: scaled to unit L2 norm), got {label_scale!r}")
    return label_scale


def scale_label(flat: torch.Tensor, label_scale: str) -> torch.Tensor:
    """A float32 count vector `[..., L]` as EDM2's label path takes it under `label_scale` (counts | unit)."""
    flat = flat.to(torch.float32)
    if check_label_scale(label_scale) == "counts":
        return flat
    norm = flat.norm(dim=-1, keepdim=True)
    return flat / norm.clamp_min(torch.finfo(torch.float32).tiny)


# --- Block: residual unit with per-channel embedding scale and optional cosine attention ------------


class Block(torch.nn.Module):
    """One encoder or decoder unit of the EDM2 U-Net (Fig. 21)."""

    def __init__(
        self,
        in_channels: int,  # channels of the input (decoder: main path + concatenated skip)
        out_channels: int,  # channels of the output
        emb_channels: int,  # width of the global embedding
        flavor: str = "enc",  # "enc": skip conv + pixel norm first; "dec": skip conv after the branch
        resample_mode: str = "keep",  # "keep" | "down" | "up", applied first
        attention: bool = False,  # cosine self-attention after the residual (if any heads)
        channels_per_head: int = 64,  # attention heads = out_channels // channels_per_head
        dropout: float = 0.0,  # dropout inside the residual branch (training only)
        res_balance: float = 0.3,  # mp_sum weight of the residual branch
        attn_balance: float = 0.3,  # mp_sum weight of the attention output
        clip_act: float | None = 256,  # clamp activations to +-clip_act after the block
    ):
        super().__init__()
        if flavor not in ("enc", "dec"):
            raise ValueError(f"Block flavor must be 'enc' or 'dec', got {flavor!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.flavor = flavor
        self.resample_mode = resample_mode
        self.num_heads = out_channels // channels_per_head if attention else 0
        self.dropout = dropout
        self.res_balance = res_balance
        self.attn_balance = attn_balance
        self.clip_act = clip_act
        # Registration order follows the official release (state_dict order).
        self.emb_gain = torch.nn.Parameter(torch.zeros([]))
        self.conv_res0 = MPConv(out_channels if flavor == "enc" else in_channels, out_channels, [3, 3])
        self.emb_linear = MPConv(emb_channels, out_channels, [])
        self.conv_res1 = MPConv(out_channels, out_channels, [3, 3])
        self.conv_skip = MPConv(in_channels, out_channels, [1, 1]) if in_channels != out_channels else None
        self.attn_qkv = MPConv(out_channels, out_channels * 3, [1, 1]) if self.num_heads > 0 else None
        self.attn_proj = MPConv(out_channels, out_channels, [1, 1]) if self.num_heads > 0 else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = resample(x, self.resample_mode)
        if self.flavor == "enc":
            if self.conv_skip is not None:
                x = self.conv_skip(x)
            x = pixel_norm(x)

        # Residual branch, scaled per channel by the embedding: c = 1 + gain * <u_j, emb>.
        y = self.conv_res0(mp_silu(x))
        scale = self.emb_linear(emb, gain=self.emb_gain) + 1
        y = mp_silu(y * scale.unsqueeze(2).unsqueeze(3).to(y.dtype))
        if self.training and self.dropout > 0:
            y = F.dropout(y, p=self.dropout)
        y = self.conv_res1(y)

        if self.flavor == "dec" and self.conv_skip is not None:
            x = self.conv_skip(x)
        x = mp_sum(x, y, t=self.res_balance)

        if self.num_heads > 0:
            x = mp_sum(x, self.cosine_attention(x), t=self.attn_balance)
        if self.clip_act is not None:
            x = x.clamp(-self.clip_act, self.clip_act)
        return x

    def cosine_attention(self, x: torch.Tensor) -> torch.Tensor:
        """Self-attention on per-head unit-RMS q, k, v (Sec. 3, "cosine attention").

        The 3C qkv channels are ordered (head, channel-in-head, q/k/v) with q/k/v fastest, as in the
        official weights. q, k and v go to SDPA contiguous, [N, heads, HW, C/heads] each: the fused (flash /
        memory-efficient) kernels need a unit stride on the last dim, else SDPA falls back to its slow math path.
        """
        n, c, h, w = x.shape
        heads = self.num_heads
        qkv = self.attn_qkv(x).reshape(n, heads, c // heads, 3, h * w)
        qkv = normalize(qkv, dim=2)
        q, k, v = qkv.permute(3, 0, 1, 4, 2).contiguous().unbind(0)  # one copy: [3, N, heads, HW, C/heads]
        y = attention(q, k, v)  # default scale 1/sqrt(C/heads)
        y = y.transpose(2, 3).reshape(n, c, h, w)
        return self.attn_proj(y)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v by SDPA: on a GPU its fused kernels; on the CPU its math kernel, the one the CPU
    ran before q/k/v were contiguous, as fast or a little faster at these lengths (<= 256 positions: 2-8% in bf16
    on the tiny net, shared cores) than the CPU's fused kernel."""
    if q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v)
    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(q, k, v)


# --- UNet: encoder/decoder of Blocks keyed by resolution, global embedding ------------------------


class UNet(torch.nn.Module):
    """EDM2 U-Net: `F(x, c_noise, labels)`; output is exactly 0 at init (`out_gain` = 0)."""

    def __init__(
        self,
        img_resolution: int,  # input height = width
        img_channels: int,  # image channels in and out
        label_dim: int,  # conditioning vector length; 0 = unconditional
        model_channels: int = 192,  # base width
        channel_mult: list[int] = (1, 2, 3, 4),  # width multiplier per resolution level
        channel_mult_noise: int | None = None,  # Fourier feature width multiplier; None = channel_mult[0]
        channel_mult_emb: int | None = None,  # embedding width multiplier; None = max(channel_mult)
        num_blocks: int = 3,  # encoder blocks per level (decoder has one more)
        attn_resolutions: list[int] = (16, 8),  # resolutions whose blocks have attention
        label_balance: float = 0.5,  # mp_sum weight of the label embedding
        concat_balance: float = 0.5,  # mp_cat weight of the skip connection
        **block_kwargs: Any,  # passed to every Block (channels_per_head, dropout, ...)
    ):
        super().__init__()
        cblock = [model_channels * m for m in channel_mult]
        cnoise = model_channels * channel_mult_noise if channel_mult_noise is not None else cblock[0]
        cemb = model_channels * channel_mult_emb if channel_mult_emb is not None else max(cblock)
        self.img_resolution = img_resolution
        self.label_dim = label_dim
        self.label_balance = label_balance
        self.concat_balance = concat_balance
        self.out_gain = torch.nn.Parameter(torch.zeros([]))

        # Embedding of the noise level and the label.
        self.emb_fourier = MPFourier(cnoise)
        self.emb_noise = MPConv(cnoise, cemb, [])
        self.emb_label = MPConv(label_dim, cemb, []) if label_dim > 0 else None

        # Encoder: a 3x3 conv at full resolution, then per level a downsampling block and num_blocks.
        self.enc = torch.nn.ModuleDict()
        cout = img_channels + 1  # +1: constant-ones channel (acts as a bias for the first conv)
        skip_channels = []
        for level, channels in enumerate(cblock):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, channels
                self.enc[f"{res}x{res}_conv"] = MPConv(cin, cout, [3, 3])
            else:
                self.enc[f"{res}x{res}_down"] = Block(cout, cout, cemb, flavor="enc", resample_mode="down",
                                                      **block_kwargs)
            skip_channels.append(cout)
            for idx in range(num_blocks):
                cin, cout = cout, channels
                self.enc[f"{res}x{res}_block{idx}"] = Block(cin, cout, cemb, flavor="enc",
                                                            attention=res in attn_resolutions, **block_kwargs)
                skip_channels.append(cout)

        # Decoder: two blocks at the lowest level (in0 always has attention), then per level an upsampling
        # block and num_blocks + 1 blocks that each take one encoder skip.
        self.dec = torch.nn.ModuleDict()
        for level, channels in reversed(list(enumerate(cblock))):
            res = img_resolution >> level
            if level == len(cblock) - 1:
                self.dec[f"{res}x{res}_in0"] = Block(cout, cout, cemb, flavor="dec", attention=True, **block_kwargs)
                self.dec[f"{res}x{res}_in1"] = Block(cout, cout, cemb, flavor="dec", **block_kwargs)
            else:
                self.dec[f"{res}x{res}_up"] = Block(cout, cout, cemb, flavor="dec", resample_mode="up",
                                                    **block_kwargs)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skip_channels.pop(), channels
                self.dec[f"{res}x{res}_block{idx}"] = Block(cin, cout, cemb, flavor="dec",
                                                            attention=res in attn_resolutions, **block_kwargs)
        self.out_conv = MPConv(cout, img_channels, [3, 3])

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
        # Global embedding (Sec. 3.3): noise Fourier features + label, merged by mp_sum, then mp_silu.
        emb = self.emb_noise(self.emb_fourier(noise_labels))
        if self.emb_label is not None:
            if class_labels is None:
                raise ValueError(f"this UNet is conditional (label_dim={self.label_dim}): pass labels "
                                 f"[N, {self.label_dim}] or zeros for no conditioning")
            label_emb = self.emb_label(class_labels * math.sqrt(class_labels.shape[1]))
            emb = mp_sum(emb, label_emb.to(emb.dtype), t=self.label_balance)
        emb = mp_silu(emb)

        x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        skips = []
        for name, module in self.enc.items():
            x = module(x) if name.endswith("_conv") else module(x, emb)
            skips.append(x)
        for name, module in self.dec.items():
            if "block" in name:
                x = mp_cat(x, skips.pop(), t=self.concat_balance)
            x = module(x, emb)
        return self.out_conv(x, gain=self.out_gain)


# --- Precond: EDM preconditioning and the learned uncertainty u(sigma) (EDM2 Eq. 21) ----------------


class Precond(torch.nn.Module):
    """`D(x; sigma, labels) = c_skip x + c_out F(c_in x, ln(sigma)/4, labels)` plus the log-variance head.

    Called as `net(x, sigma, labels, return_logvar=False)`. `sigma` is a scalar, `[N]` or `[N,1,1,1]`.
    Arithmetic is float32; the UNet runs in whatever autocast context surrounds the call (bf16-mixed).
    """

    def __init__(
        self,
        img_resolution: int,  # input height = width
        img_channels: int,  # image channels
        label_dim: int,  # conditioning vector length; 0 = unconditional
        sigma_data: float = 0.5,  # std of the data (images in [-1, 1])
        logvar_channels: int = 128,  # Fourier features of the uncertainty head
        model_channels: int = 192,  # UNet base width (xs: 128, s: 192)
        channel_mult: list[int] = (1, 2, 3, 4),  # UNet width multiplier per level
        num_blocks: int = 3,  # UNet encoder blocks per level
        attn_resolutions: list[int] = (16, 8),  # resolutions with attention
        channels_per_head: int = 64,  # attention head width
        dropout: float = 0.0,  # residual-branch dropout
        **unet_kwargs: Any,  # further UNet / Block arguments (channel_mult_emb, res_balance, ...)
    ):
        super().__init__()
        self.config = dict(img_resolution=img_resolution, img_channels=img_channels, label_dim=label_dim,
                           sigma_data=sigma_data, logvar_channels=logvar_channels, model_channels=model_channels,
                           channel_mult=list(channel_mult), num_blocks=num_blocks,
                           attn_resolutions=list(attn_resolutions), channels_per_head=channels_per_head,
                           dropout=dropout, **unet_kwargs)
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.sigma_data = sigma_data
        self.unet = UNet(img_resolution=img_resolution, img_channels=img_channels, label_dim=label_dim,
                         model_channels=model_channels, channel_mult=list(channel_mult), num_blocks=num_blocks,
                         attn_resolutions=list(attn_resolutions), channels_per_head=channels_per_head,
                         dropout=dropout, **unet_kwargs)
        self.logvar_fourier = MPFourier(logvar_channels)
        self.logvar_linear = MPConv(logvar_channels, 1, [])

    def forward(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor | float,
        class_labels: torch.Tensor | None = None,
        return_logvar: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1, 1, 1, 1)
        if self.label_dim > 0:
            if class_labels is None:
                class_labels = torch.zeros(1, self.label_dim, device=x.device)
            elif class_labels.ndim != 2 or class_labels.shape[1] != self.label_dim:
                raise ValueError(f"labels must be [N, {self.label_dim}] for this network (label_dim="
                                 f"{self.label_dim}), got shape {tuple(class_labels.shape)}: build the net "
                                 f"with the conditioner's label_dim")
            class_labels = class_labels.to(torch.float32)
        else:
            class_labels = None

        sd = self.sigma_data
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
        c_in = 1 / (sd**2 + sigma**2).sqrt()
        c_noise = sigma.flatten().log() / 4

        f = self.unet(c_in * x, c_noise, class_labels)
        d = c_skip * x + c_out * f.to(torch.float32)
        if not return_logvar:
            return d
        logvar = self.logvar_linear(self.logvar_fourier(c_noise)).reshape(-1, 1, 1, 1)
        return d, logvar.to(torch.float32)


# --- presets ------------------------------------------------------------------------------------------

# EDM2's img64 presets (train_edm2.py: xs = 128 channels, s = 192) and the same networks run on 128x128
# images (same four levels, so they run at 128/64/32/16 and attention sits at 16 only, plus the always-on
# `16x16_in0`); `tiny` is a CPU-sized net for tests and the quickstart (32x32, 3 levels, ~1.3M weights).
PRESETS: dict[str, dict[str, Any]] = {
    "img64-xs": dict(img_resolution=64, model_channels=128, channel_mult=[1, 2, 3, 4], dropout=0.0),
    "img64-s": dict(img_resolution=64, model_channels=192, channel_mult=[1, 2, 3, 4], dropout=0.0),
    "img128-xs": dict(img_resolution=128, model_channels=128, channel_mult=[1, 2, 3, 4], dropout=0.0),
    "img128-s": dict(img_resolution=128, model_channels=192, channel_mult=[1, 2, 3, 4], dropout=0.0),
    "tiny": dict(img_resolution=32, model_channels=32, channel_mult=[1, 2, 2], num_blocks=1,
                 attn_resolutions=[8], channels_per_head=32, dropout=0.0),
}


def preset(
    name: str,  # a key of PRESETS
    label_dim: int,  # conditioning vector length (location G*G = 256, color 8)
    img_channels: int = 3,  # image channels
    **overrides: Any,  # any Precond argument, e.g. img_resolution=32
) -> Precond:
    """Build a `Precond` from a named preset."""
    if name not in PRESETS:
        raise ValueError(f"unknown EDM2 preset {name!r}: expected one of {sorted(PRESETS)}")
    kwargs = {**PRESETS[name], **overrides}
    return Precond(img_channels=img_channels, label_dim=label_dim, **kwargs)


def count_parameters(module: torch.nn.Module) -> int:
    """Number of trainable parameter elements."""
    return int(sum(np.prod(p.shape) for p in module.parameters() if p.requires_grad))
