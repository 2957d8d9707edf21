"""The two SDXL studies of Appendix G, end to end on a loaded pipeline: JSON-ready results plus tensors for
the figures.

- `locality_study` (Figure 6): Euler sampling (50 steps) of the locality prompt, stopped at chosen steps; at each,
  the pixel Jacobian (Eq. 9) at target latent pixels with its locality radius, and word-ablation influence maps
  with per-pixel ranking and dominant words.
- `attention_study` (Figures 7, 13): for each prompt, 15-step pipeline runs over several samples, cross-attention
  maps captured at chosen steps and layers at each prompt's concept tokens (the unconditional prompt at its
  end-of-sequence token); then Eq. 3 cosine matrices between single-concept prompts and the compositional
  similarities.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Sequence

import torch
from torch import Tensor

from lcsbench.analysis.locality import locality_radius, pixel_jacobian
from lcsbench.analysis.sdxl.ablation import WordInfluence, WordRanking, rank_words, word_influence
from lcsbench.analysis.sdxl.attention import (AttentionMaps, capture_cross_attention, concept_token, end_token,
                                              layer_group, resolve_layers, token_strings)
from lcsbench.analysis.sdxl.cosines import (average_matrix, compositional_similarity, cosine_matrices,
                                            difference_vectors, off_diagonal_mean)
from lcsbench.analysis.sdxl.pipeline import (decode_latents, encode_prompts, image_and_latent_size, inference_sigmas,
                                             unconditional_condition)
from lcsbench.analysis.sdxl.prompts import ATTENTION_PROMPTS, LOCALITY_PROMPT, ConceptPrompt
from lcsbench.diffusion.sampler import check_steps, euler_sampler

LOCALITY_STEPS = (1, 10, 25, 40, 50)  # Appendix G's list of stopping steps is lost in the text; our default
ATTENTION_STEPS = (1, 7, 15)         # Appendix G: steps 1, 7 and 15 of 15


def _rounded(matrix: Tensor) -> list:
    return [[None if v != v else round(float(v), 6) for v in row] for row in matrix.tolist()]


def default_pixels(latent_size: tuple[int, int]) -> list[tuple[int, int]]:
    """Target latent pixels on the prompt's implicit locations: left, middle and right at mid-height."""
    height, width = latent_size
    return [(height // 2, width // 6), (height // 2, width // 2), (height // 2, (5 * width) // 6)]


# ---------------------------------------------------------------------------------------------------------------
# Figure 6


@dataclass
class LocalityAtStep:
    step: int
    sigma: float
    heat: Tensor                            # [P, h, w] Eq. 9 maps at the target pixels
    pixel_radius: list[float]               # per target pixel
    influence: WordInfluence                # maps [W, h, w]
    ranking: WordRanking
    denoised_image: Tensor                  # [3, H, W] the decoded denoised estimate D at this step
    seconds: float


@dataclass
class LocalityStudy:
    prompt: str
    num_inference_steps: int
    guidance_scale: float
    seed: int
    latent_size: tuple[int, int]
    pixels: list[tuple[int, int]]
    fraction: float
    steps: list[LocalityAtStep] = field(default_factory=list)
    final_image: Tensor | None = None

    def summary(self) -> dict:
        words = self.steps[0].influence.words if self.steps else []
        out = {"analysis": "locality", "prompt": self.prompt, "num_inference_steps": self.num_inference_steps,
               "guidance_scale": self.guidance_scale, "seed": self.seed, "latent_size": list(self.latent_size),
               "pixels": [list(p) for p in self.pixels], "fraction": self.fraction, "words": words,
               "ablated_prompts": self.steps[0].influence.ablated_prompts if self.steps else [],
               "dominance_ratio": 2.0, "steps": []}
        rows = torch.tensor([p[0] for p in self.pixels])
        cols = torch.tensor([p[1] for p in self.pixels])
        for at in self.steps:
            maps = at.influence.maps
            top = at.ranking.order[0]
            out["steps"].append({
                "step": at.step, "sigma": at.sigma, "seconds": round(at.seconds, 3),
                "pixel_radius": [None if r != r else r for r in at.pixel_radius],
                "influence_mean": dict(zip(words, maps.mean(dim=(1, 2)).tolist())),
                "influence_at_pixels": {f"{r},{c}": dict(zip(words, maps[:, r, c].tolist()))
                                        for r, c in zip(rows.tolist(), cols.tolist())},
                "top_word_at_pixels": {f"{r},{c}": words[int(top[r, c])] for r, c in zip(rows.tolist(), cols.tolist())},
                "top_word_fraction": dict(zip(words, [float((top == w).float().mean()) for w in range(len(words))])),
                "dominant_fraction": dict(zip(words, at.ranking.dominant_fraction())),
                "pixels_with_dominant_set": float((at.ranking.num_dominant > 0).float().mean()),
            })
        return out


def locality_study(
    pipe,                                   # SDXL pipeline (models.sdxl.load_sdxl_pipeline)
    adapter: Callable[..., Callable],       # (unet, scheduler, guidance_scale, unconditional) -> denoiser, e.g.
                                            # models.sdxl.SDXLDenoiser (analysis/ does not import models/)
    prompt: str = LOCALITY_PROMPT,          # Figure 6's prompt
    stop_steps: Sequence[int] = LOCALITY_STEPS,  # 1-based steps at which the state is analysed
    num_inference_steps: int = 50,          # Appendix G: 50 Euler steps
    guidance_scale: float = 5.0,            # CFG of sampling and of the analysed denoiser (SDXL's default)
    seed: int = 0,                          # initial-noise seed
    pixels: Sequence[tuple[int, int]] | None = None,  # target latent pixels; None: left, middle, right
    words: Sequence[str] | None = None,     # words to ablate; None: the prompt's content words
    height: int | None = None,              # image size in pixels; None: the pipeline's native size
    width: int | None = None,
    fraction: float = 0.9,                  # energy share of the locality radius (Appendix F)
    memory_budget: int = 2 * 2**30,         # bytes per batched backward of pixel_jacobian
    log=print,
) -> LocalityStudy:
    height, width, latent_size = image_and_latent_size(pipe, height, width)
    stops = check_steps(stop_steps, num_inference_steps)
    pixels = [tuple(p) for p in (pixels or default_pixels(latent_size))]
    encode = partial(encode_prompts, pipe, height=height, width=width)
    cond = encode([prompt])
    negative = unconditional_condition(pipe, 1, height, width) if guidance_scale != 1.0 else None
    denoiser = adapter(pipe.unet, pipe.scheduler, guidance_scale, negative).eval()
    device = pipe.unet.device
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((1, pipe.unet.config.in_channels, *latent_size), generator=generator).to(device)
    schedule, init_scale = inference_sigmas(pipe.scheduler, num_inference_steps)
    run = euler_sampler(denoiser, noise, cond, schedule, init_scale, record_steps=stops)
    study = LocalityStudy(prompt, num_inference_steps, guidance_scale, seed, latent_size, pixels, fraction)
    study.final_image = decode_latents(pipe, run.final)[0]
    for step in stops:
        start = time.perf_counter()
        x, sigma = run.states[step], run.sigmas[step]
        heat = pixel_jacobian(denoiser, x, sigma, cond, pixels, memory_budget=memory_budget).cpu()
        radii = [locality_radius(h, p, fraction) for h, p in zip(heat, pixels)]
        influence = word_influence(denoiser, encode, x, sigma, prompt, words)
        with torch.no_grad():
            denoised = denoiser(x, sigma, cond)
        at = LocalityAtStep(step, sigma, heat, radii, influence, rank_words(influence.maps),
                            decode_latents(pipe, denoised)[0], time.perf_counter() - start)
        study.steps.append(at)
        log(f"locality step {step}/{num_inference_steps} (sigma {sigma:.3f}): radii {radii}, "
            f"{at.seconds:.1f} s")
    return study


# ---------------------------------------------------------------------------------------------------------------
# Figures 7 and 13


@dataclass
class AttentionStudy:
    prompts: list[ConceptPrompt]
    layers: list[str]
    steps: list[int]
    num_inference_steps: int
    samples: int
    guidance_scale: float
    seed: int
    tokens: dict[str, dict[str, int]]       # prompt label -> {word or "<eos>": token position}
    token_text: dict[str, dict[str, str]]   # prompt label -> {word: token string}
    maps: dict[str, AttentionMaps]          # prompt label -> captured maps (tokens in `tokens` order)
    seconds_per_step: float

    def entry_maps(self) -> tuple[dict[str, dict[tuple[str, int], Tensor]], dict[tuple[str, int], Tensor]]:
        """{entry: {(layer, step): mean map}} with entries "label" (single prompts) and "label@word"
        (composites), and the unconditional reference maps."""
        entries: dict[str, dict[tuple[str, int], Tensor]] = {}
        reference = None
        for prompt in self.prompts:
            captured = self.maps[prompt.label]
            means = {key: captured.mean(*key) for key in captured.sums}
            if prompt.is_unconditional:
                reference = {key: m[0] for key, m in means.items()}
                continue
            for index, word in enumerate(prompt.words):
                name = prompt.label if not prompt.is_composite else f"{prompt.label}@{word}"
                entries[name] = {key: m[index] for key, m in means.items()}
        if reference is None:
            raise ValueError("the attention study needs an unconditional prompt (label=, empty text) as the Eq. 3 "
                             "reference")
        return entries, reference

    def single_labels(self) -> list[str]:
        return [p.label for p in self.prompts if not p.is_unconditional and not p.is_composite]

    def composite_pairs(self) -> list[tuple[str, str]]:
        """(composite entry, single label) for every composite word that some single prompt names."""
        by_word = {p.words[0]: p.label for p in self.prompts if not p.is_unconditional and not p.is_composite}
        return [(f"{p.label}@{w}", by_word[w]) for p in self.prompts if p.is_composite for w in p.words
                if w in by_word]

    def analysis(self, feature_layers: Sequence[str] | None = None) -> dict:
        """Cosine matrices per (layer, step), their averages per layer group and over `feature_layers`, and
        the compositional similarities."""
        entries, reference = self.entry_maps()
        vectors = difference_vectors(entries, reference)
        labels = self.single_labels()
        matrices = cosine_matrices(vectors, labels)
        pairs = self.composite_pairs()
        composition = compositional_similarity(vectors, pairs) if pairs else {}
        groups: dict[str, list[str]] = {}
        for layer in self.layers:
            groups.setdefault(layer_group(layer), []).append(layer)
        if feature_layers:
            groups["feature_space"] = [layer for layer in self.layers if layer in feature_layers]
        averages = {group: {step: average_matrix(matrices, members, step) for step in self.steps}
                    for group, members in groups.items() if members}
        return {"labels": labels, "matrices": matrices, "averages": averages, "groups": groups,
                "composition": composition, "pairs": pairs, "vectors": vectors}

    def summary(self, feature_layers: Sequence[str] | None = None) -> dict:
        result = self.analysis(feature_layers)
        first = next(iter(self.maps.values()))
        return {
            "analysis": "attention",
            "prompts": [{"label": p.label, "text": p.text, "words": list(p.words)} for p in self.prompts],
            "tokens": self.tokens, "token_text": self.token_text,
            "layers": self.layers, "steps": self.steps,
            "step_sigmas": {str(k): v for k, v in sorted(first.step_sigmas.items()) if k in self.steps},
            "num_inference_steps": self.num_inference_steps, "samples": self.samples,
            "guidance_scale": self.guidance_scale, "seed": self.seed,
            "seconds_per_step": round(self.seconds_per_step, 4),
            "map_shapes": {layer: list(first.mean(layer, self.steps[0]).shape[1:]) for layer in self.layers},
            "offloaded_maps": sum(len(m.offloaded) for m in self.maps.values()),
            "labels": result["labels"],
            "groups": result["groups"],
            "cosine_by_group": {group: {str(step): _rounded(m) for step, m in per_step.items()}
                                for group, per_step in result["averages"].items()},
            "mean_abs_off_diagonal_by_group": {group: {str(step): off_diagonal_mean(m) for step, m in per_step.items()}
                                               for group, per_step in result["averages"].items()},
            "cosine_by_layer": {f"{layer}@{step}": _rounded(m) for (layer, step), m in result["matrices"].items()},
            "composition_pairs": [list(p) for p in result["pairs"]],
            "composition_by_layer": {f"{layer}@{step}": row for (layer, step), row in result["composition"].items()},
            "composition_by_group": {
                group: {str(step): {c: _nanmean([result["composition"][(layer, step)][c] for layer in members])
                                    for c, _ in result["pairs"]} for step in self.steps}
                for group, members in result["groups"].items() if members and result["pairs"]},
        }


def _nanmean(values: list[float]) -> float | None:
    kept = [v for v in values if v == v]
    return sum(kept) / len(kept) if kept else None


def prompt_tokens(pipe, prompt: ConceptPrompt) -> dict[str, int]:
    """{word: token position} (last token of each word), or {"<eos>": position} for the unconditional prompt."""
    if prompt.is_unconditional:
        return {"<eos>": end_token(pipe, prompt.text)}
    return {word: concept_token(pipe, prompt.text, word) for word in prompt.words}


def attention_study(
    pipe,                                   # SDXL pipeline (models.sdxl.load_sdxl_pipeline)
    prompts: Sequence[ConceptPrompt] = ATTENTION_PROMPTS,  # Appendix G's 12 prompts
    layers: Sequence[str] = ("down", "mid", "up"),  # cross-attention layers (groups or names)
    steps: Sequence[int] = ATTENTION_STEPS,  # 1-based steps to capture
    num_inference_steps: int = 15,          # Appendix G: 15 Euler steps
    samples: int = 10,                      # samples per prompt (Appendix G: 10)
    batch_size: int = 5,                    # samples per pipeline call
    guidance_scale: float = 5.0,            # CFG (the conditional half is captured)
    seed: int = 0,                          # the same initial noises for every prompt
    height: int | None = None,
    width: int | None = None,
    device_budget: int = 512 * 2**20,       # bytes of maps kept on the accelerator before CPU offload
    log=print,
) -> AttentionStudy:
    height, width, latent_size = image_and_latent_size(pipe, height, width)
    steps = check_steps(steps, num_inference_steps)
    names = resolve_layers(pipe.unet, layers)
    labels = [p.label for p in prompts]
    if len(set(labels)) != len(labels):
        raise ValueError(f"prompt labels must be unique; found {labels}")
    tokens = {p.label: prompt_tokens(pipe, p) for p in prompts}  # fails early on a word not in its prompt
    token_text = {p.label: dict(zip(tokens[p.label], token_strings(pipe, p.text, list(tokens[p.label].values()))))
                  for p in prompts}
    last_step = max(steps)
    maps: dict[str, AttentionMaps] = {}
    timed_steps, timed_seconds = 0, 0.0
    for prompt in prompts:
        positions = list(tokens[prompt.label].values())
        with capture_cross_attention(pipe.unet, names, steps, positions, latent_size,
                                     conditional_half=guidance_scale > 1.0, device_budget=device_budget) as capture:
            for batch_index in range(math.ceil(samples / batch_size)):
                count = min(batch_size, samples - batch_index * batch_size)
                capture.reset_run()

                def on_step_end(pipeline, step_index, timestep, kwargs, capture=capture):
                    capture.pipeline_callback(pipeline, step_index, timestep, kwargs)
                    if capture.current_step > last_step:  # nothing left to record: stop the run
                        pipeline._interrupt = True
                    return {}

                generators = [torch.Generator().manual_seed(seed + batch_index * batch_size + i) for i in range(count)]
                start = time.perf_counter()
                pipe(prompt=prompt.text, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                     num_images_per_prompt=count, height=height, width=width, generator=generators,
                     output_type="latent", callback_on_step_end=on_step_end)
                timed_seconds += time.perf_counter() - start
                timed_steps += last_step
        maps[prompt.label] = capture.maps
        log(f"attention: captured {prompt.label!r} ({samples} samples, {len(names)} layers, steps {steps})")
    return AttentionStudy(list(prompts), names, steps, num_inference_steps, samples, guidance_scale, seed, tokens,
                          token_text, maps, timed_seconds / max(timed_steps, 1))
