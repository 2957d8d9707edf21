"""Cross-attention capture in the SDXL UNet and word-to-token mapping (Appendix G, Figures 7 and 13).

Design (reference/analysis-anchors.md, lesson 4): the attention processor of each chosen cross-attention module
is swapped for a recording wrapper and the originals are put back on exit, also when the run raises. The wrapper
records the softmax attention probabilities of the layer, averaged over heads, for chosen denoising steps and
tokens, keeping only the conditional half of a classifier-free-guidance batch, then lets the original processor
compute the layer's output (the capture never changes what the model computes). Maps are summed over samples
on the device up to a memory budget and on the CPU beyond it.

Layer names are the attention modules' names in the UNet, e.g. `mid_block.attentions.0.transformer_blocks.3.attn2`;
the groups `down`, `mid`, `up` and `all` select every cross-attention layer of those blocks.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn

LAYER_GROUPS = {"down": "down_blocks.", "mid": "mid_block.", "up": "up_blocks.", "all": ""}
# Processors whose attention is plain softmax(q k^T * scale) over the module's to_q/to_k projections.
SUPPORTED_PROCESSORS = ("AttnProcessor", "AttnProcessor2_0", "XFormersAttnProcessor", "SlicedAttnProcessor",
                        "AttnProcessorNPU")
DEFAULT_DEVICE_BUDGET = 512 * 2**20  # bytes of accumulated maps kept on the accelerator before offloading to CPU


# ---------------------------------------------------------------------------------------------------------------
# Words to token positions, with the pipeline's own tokenizers.


def token_ids(tokenizer, prompt: str) -> list[int]:
    """The prompt's token ids as the pipeline feeds them (start token first, truncated to the model length)."""
    return tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length).input_ids


def word_token_span(tokenizer, prompt: str, word: str, occurrence: int = 0) -> list[int]:
    """Positions in the prompt's token sequence of the tokens that spell `word` (its `occurrence`-th match)."""
    ids = token_ids(tokenizer, prompt)
    piece = tokenizer(word, add_special_tokens=False).input_ids
    if not piece:
        raise ValueError(f"the word {word!r} tokenizes to nothing: pass a word of the prompt {prompt!r}")
    starts = [i for i in range(len(ids) - len(piece) + 1) if ids[i:i + len(piece)] == piece]
    if len(starts) <= occurrence:
        tokens = tokenizer.convert_ids_to_tokens(ids)
        raise ValueError(
            f"the word {word!r} (tokens {tokenizer.convert_ids_to_tokens(piece)}) is not in the prompt {prompt!r}"
            + (f" {occurrence + 1} times" if starts else "")
            + f" as the tokenizer splits it: the prompt's tokens are {tokens}; choose one of its words")
    return list(range(starts[occurrence], starts[occurrence] + len(piece)))


def concept_token(pipe, prompt: str, word: str) -> int:
    """The token position that stands for `word`: the last token of its span (Appendix G: a name split into
    several tokens is represented by its last one). Both SDXL tokenizers must agree on the position."""
    spans = [word_token_span(tok, prompt, word) for tok in (pipe.tokenizer, pipe.tokenizer_2) if tok is not None]
    if any(span != spans[0] for span in spans[1:]):
        raise ValueError(f"the two SDXL tokenizers place {word!r} at different positions {spans} in {prompt!r}; "
                         f"pick a word both split the same way")
    return spans[0][-1]


def end_token(pipe, prompt: str) -> int:
    """Position of the end-of-sequence token of the prompt (1 for the empty prompt)."""
    ids = token_ids(pipe.tokenizer, prompt)
    eos = pipe.tokenizer.eos_token_id
    return ids.index(eos, 1) if eos in ids[1:] else len(ids) - 1


def token_strings(pipe, prompt: str, positions: Sequence[int]) -> list[str]:
    ids = token_ids(pipe.tokenizer, prompt)
    return [pipe.tokenizer.convert_ids_to_tokens(ids[p]) if p < len(ids) else "<pad>" for p in positions]


# ---------------------------------------------------------------------------------------------------------------
# Layers


def cross_attention_layers(unet: nn.Module) -> dict[str, nn.Module]:
    """Every cross-attention module of the UNet (text keys and values), by module name, in forward order
    (down blocks, mid block, up blocks; diffusers registers the mid block last)."""
    found = [(name, module) for name, module in unet.named_modules()
             if hasattr(module, "set_processor") and getattr(module, "is_cross_attention", False)]
    block_order = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}
    found.sort(key=lambda item: block_order.get(item[0].split(".")[0], 3))  # stable: keeps order within blocks
    return dict(found)


def resolve_layers(unet: nn.Module, selection: Sequence[str]) -> list[str]:
    """Layer names for a selection of group names (down, mid, up, all) and exact layer names; a clear error
    listing the valid choices for anything else."""
    available = list(cross_attention_layers(unet))
    if isinstance(selection, str):
        selection = [selection]
    chosen: list[str] = []
    for item in selection:
        if item in LAYER_GROUPS:
            matches = [name for name in available if name.startswith(LAYER_GROUPS[item])]
        elif item in available:
            matches = [item]
        else:
            raise ValueError(f"unknown cross-attention layer {item!r}: valid choices are the groups "
                             f"{sorted(LAYER_GROUPS)} or one of the {len(available)} layer names {available}")
        chosen += [name for name in matches if name not in chosen]
    if not chosen:
        raise ValueError(f"the selection {list(selection)} matches no cross-attention layer; the UNet has "
                         f"{available}")
    return [name for name in available if name in chosen]  # forward order


def layer_group(name: str) -> str:
    return next(group for group, prefix in LAYER_GROUPS.items() if prefix and name.startswith(prefix))


# ---------------------------------------------------------------------------------------------------------------
# Capture


@dataclass
class AttentionMaps:
    """Head-averaged cross-attention maps, summed over samples: `sums[(layer, step)]` `[T, h_l, w_l]` for the
    T chosen token positions `tokens`, on the layer's spatial grid (latent size / layer downsampling);
    `counts[(layer, step)]` the number of samples summed. `mean(layer, step)` is their average. Over all
    77 tokens every map sums to 1 over tokens at each pixel (softmax over keys)."""

    tokens: list[int]
    latent_size: tuple[int, int]
    sums: dict[tuple[str, int], Tensor] = field(default_factory=dict)
    counts: dict[tuple[str, int], int] = field(default_factory=dict)
    offloaded: set[tuple[str, int]] = field(default_factory=set)
    step_sigmas: dict[int, float] = field(default_factory=dict)

    def mean(self, layer: str, step: int) -> Tensor:
        key = (layer, step)
        if key not in self.sums:
            raise KeyError(f"no map captured for layer {layer!r} at step {step}; captured: "
                           f"{sorted(self.sums)[:10]}...")
        return self.sums[key].float() / self.counts[key]

    def bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.sums.values())


class CrossAttentionCapture:
    """Records cross-attention maps while active; see `capture_cross_attention`."""

    def __init__(
        self,
        layers: Sequence[str],              # resolved layer names
        steps: Sequence[int],               # 1-based denoising steps to record
        tokens: Sequence[int] | None,       # token positions to keep; None: all of them
        latent_size: tuple[int, int],       # (h, w) of the latent the UNet denoises
        conditional_half: bool,             # keep only the second (conditional) half of each batch (CFG)
        device_budget: int,                 # bytes of maps kept on the accelerator; the rest goes to CPU
    ):
        self.layers = list(layers)
        self.steps = set(int(s) for s in steps)
        self.tokens = None if tokens is None else list(tokens)
        self.conditional_half = conditional_half
        self.device_budget = device_budget
        self.current_step = 1
        self.maps = AttentionMaps(tokens=self.tokens or [], latent_size=tuple(latent_size))

    # -- step bookkeeping: pipeline callback_on_step_end, or sample_euler's on_step_end ----------------------
    def pipeline_callback(self, pipe, step_index: int, timestep, callback_kwargs: dict) -> dict:
        sigmas = getattr(pipe.scheduler, "sigmas", None)
        if sigmas is not None and step_index < len(sigmas):
            self.maps.step_sigmas[step_index + 1] = float(sigmas[step_index])
        self.current_step = step_index + 2
        return {}

    def euler_callback(self, step: int, sigma: float) -> None:
        self.maps.step_sigmas[step] = float(sigma)
        self.current_step = step + 1

    def reset_run(self) -> None:
        """Call before each new sampling run: steps count from 1 again."""
        self.current_step = 1

    # -- recording -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def record(self, name: str, attn: nn.Module, hidden_states: Tensor, context: Tensor,
               attention_mask: Tensor | None) -> None:
        if hidden_states.ndim == 4:  # [B, C, H, W] -> [B, HW, C]
            hidden_states = hidden_states.flatten(2).transpose(1, 2)
        batch = hidden_states.shape[0]
        if self.conditional_half:
            if batch % 2:
                raise ValueError(f"conditional_half=True but layer {name} got an odd batch of {batch}: capture "
                                 f"with conditional_half=False when the pipeline runs without guidance")
            hidden_states, context = hidden_states[batch // 2:], context[batch // 2:]
            if attention_mask is not None and attention_mask.shape[0] == batch:
                attention_mask = attention_mask[batch // 2:]
        samples, queries = hidden_states.shape[:2]
        if attn.norm_cross is not None:
            context = attn.norm_encoder_hidden_states(context)
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(context))
        mask = attn.prepare_attention_mask(attention_mask, context.shape[1], samples) if attention_mask is not None \
            else None
        probs = attn.get_attention_scores(query, key, mask)  # [samples * heads, Q, K], softmax over keys
        probs = probs.float().view(samples, attn.heads, queries, -1).mean(dim=1)  # heads averaged: [N, Q, K]
        if self.tokens is not None:
            if max(self.tokens) >= probs.shape[-1]:
                raise ValueError(f"token positions {self.tokens} exceed the {probs.shape[-1]} text tokens of layer "
                                 f"{name}: positions are 0..{probs.shape[-1] - 1} (start token at 0)")
            probs = probs[..., self.tokens]
        height, width = self.layer_grid(queries)
        maps = probs.transpose(1, 2).reshape(samples, -1, height, width).sum(dim=0)  # [T, h_l, w_l]
        key_ = (name, self.current_step)
        stored = self.maps.sums.get(key_)
        if stored is None:
            if self.maps.bytes() + maps.numel() * maps.element_size() > self.device_budget:
                maps = maps.cpu()
                self.maps.offloaded.add(key_)
            self.maps.sums[key_] = maps
            self.maps.counts[key_] = samples
        else:
            stored += maps.to(stored.device)
            self.maps.counts[key_] += samples

    def layer_grid(self, queries: int) -> tuple[int, int]:
        height, width = self.maps.latent_size
        factor = math.isqrt(height * width // queries) if queries else 0
        if factor == 0 or (height // factor) * (width // factor) != queries:
            raise ValueError(f"cannot place {queries} attention queries on a grid of the {height}x{width} latent: "
                             f"pass latent_size=(h, w) of the latents this run denoises")
        return height // factor, width // factor


class _RecordingProcessor:
    """Wraps a layer's original processor: record when the step is chosen, then compute as the original."""

    def __init__(self, original, name: str, capture: CrossAttentionCapture):
        self.original = original
        self.name = name
        self.capture = capture

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args,
                 **kwargs):
        if encoder_hidden_states is not None and self.capture.current_step in self.capture.steps:
            self.capture.record(self.name, attn, hidden_states, encoder_hidden_states, attention_mask)
        return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)


@contextmanager
def capture_cross_attention(
    unet: nn.Module,                        # the pipeline's UNet2DConditionModel
    layers: Sequence[str] = ("down", "mid", "up"),  # groups and/or exact layer names
    steps: Sequence[int] = (1,),            # 1-based denoising steps to record
    tokens: Sequence[int] | None = None,    # token positions to keep; None: all (77 for SDXL)
    latent_size: tuple[int, int] | None = None,  # (h, w) of the latents; None: the UNet's sample_size
    conditional_half: bool = True,          # the pipeline runs CFG as [unconditional; conditional]: keep the latter
    device_budget: int = DEFAULT_DEVICE_BUDGET,  # bytes of maps kept on the accelerator before CPU offload
) -> Iterator[CrossAttentionCapture]:
    """Swap in recording processors on the chosen layers; restore the originals on exit, also on error.

    Drive the step counter with `callback_on_step_end=capture.pipeline_callback` (pipeline runs) or
    `on_step_end=capture.euler_callback` (`sample_euler`); call `capture.reset_run()` between runs.
    """
    names = resolve_layers(unet, layers)
    modules = cross_attention_layers(unet)
    for name in names:
        processor = modules[name].processor
        kind = type(processor).__name__
        if kind not in SUPPORTED_PROCESSORS or modules[name].spatial_norm is not None:
            raise TypeError(f"cannot capture attention of layer {name}: its processor {kind} is not a plain "
                            f"softmax attention (supported: {SUPPORTED_PROCESSORS}). Reset the UNet with "
                            f"unet.set_default_attn_processor() or unload adapters first")
    if tokens is not None and (not tokens or min(tokens) < 0):
        raise ValueError(f"tokens must be non-negative token positions; found {list(tokens)}")
    if latent_size is None:
        side = unet.config.sample_size
        latent_size = (side, side) if isinstance(side, int) else tuple(side)
    capture = CrossAttentionCapture(names, steps, tokens, latent_size, conditional_half, device_budget)
    originals = {name: modules[name].processor for name in names}
    try:
        for name in names:
            modules[name].set_processor(_RecordingProcessor(originals[name], name, capture))
        yield capture
    finally:
        for name, processor in originals.items():
            modules[name].set_processor(processor)
