"""Test fixture: a tiny Stable Diffusion XL pipeline built in-process from configs (no downloads), for tests and
scripts/bench_sdxl.py, and the full-size SDXL base UNet configuration for benchmarks of a randomly initialised UNet.

Same component classes and wiring as SDXL base: a UNet2DConditionModel with cross-attention in the down, mid
and up blocks and SDXL's added "text_time" conditioning, CLIPTextModel + CLIPTextModelWithProjection (the
penultimate hidden states concatenated along features), an AutoencoderKL, EulerDiscreteScheduler with SDXL's
schedule, and two CLIP BPE tokenizers read from a small vocabulary and merges list written to a folder.
Sizes are tiny: 16 x 16 pixel images, 8 x 8 latents, 77-token prompts.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

# Whole-word merges for these words (each becomes one token); every other word splits into letters.
# "hokusai" deliberately splits into "hoku" + "sai</w>" (two tokens), like the paper's multi-token names.
MERGED_WORDS = ["dog", "cat", "horse", "sushi", "gogh", "monet", "croissant", "photograph", "painting", "middle",
                "left", "right", "beautiful", "style", "the", "with", "and", "in", "on", "a", "an", "of"]
MERGED_PIECES = [("hoku", False), ("sai", True)]
LETTERS = "abcdefghijklmnopqrstuvwxyz0123456789.,!-'"
LATENT_SIZE = 8
IMAGE_SIZE = 16


def write_tokenizer_files(folder: Path) -> Path:
    """vocab.json and merges.txt of a small CLIP BPE vocabulary: letters, end-of-word letters, merged words."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in LETTERS:
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    merges: list[str] = []
    pieces = [(w, True) for w in MERGED_WORDS] + MERGED_PIECES
    for word, ends_word in pieces:
        symbols = list(word)
        if ends_word:
            symbols[-1] += "</w>"
        current = symbols[0]
        for symbol in symbols[1:]:
            rule = f"{current} {symbol}"
            if rule not in merges:
                merges.append(rule)
            current += symbol
            vocab.setdefault(current, len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return folder


def build_tiny_sdxl_pipeline(tokenizer_folder: Path, seed: int = 0):
    """The tiny SDXL pipeline (float32, CPU), reading its tokenizer files from tokenizer_folder."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    write_tokenizer_files(tokenizer_folder)
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_folder, model_max_length=77)
    tokenizer_2 = CLIPTokenizer.from_pretrained(tokenizer_folder, model_max_length=77, pad_token="!")
    torch.manual_seed(seed)
    text_config = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,                # SDXL reads the penultimate layer
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        projection_dim=32,                  # pooled text embedding of text_encoder_2
        hidden_act="gelu",
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_config))
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**text_config))
    unet = UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64,             # 32 + 32: both text encoders' features concatenated
        attention_head_dim=(2, 4),
        transformer_layers_per_block=(1, 2),  # the mid block gets 2 transformer layers, like SDXL's 10
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32,  # 6 size ids x 8 + pooled text
        use_linear_projection=True,
        norm_num_groups=16,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(16, 16),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=IMAGE_SIZE,
    )
    scheduler = EulerDiscreteScheduler(**SDXL_BASE_SCHEDULER_CONFIG)
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler,
                                     add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# The UNet configuration of stable-diffusion-xl-base-1.0 (Podell et al. 2023; public model card facts), for
# timing a randomly initialised full-size UNet where the weights cannot be downloaded.
SDXL_BASE_UNET_CONFIG = dict(
    sample_size=128,                        # 1024 px / 8
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,               # 768 (CLIP ViT-L) + 1280 (OpenCLIP bigG)
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,  # 6 x 256 + 1280 pooled
    use_linear_projection=True,
    norm_num_groups=32,
)
SDXL_BASE_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    timestep_spacing="leading",
    steps_offset=1,
    prediction_type="epsilon",
)


def build_full_size_unet(dtype=torch.float16, device="cuda"):
    """A randomly initialised UNet with SDXL base's architecture (2.6 B parameters), for timing only."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**SDXL_BASE_UNET_CONFIG).to(device=device, dtype=dtype).eval()
