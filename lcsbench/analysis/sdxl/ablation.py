"""Word ablation: how strongly each word of a prompt moves the score at each latent pixel (Appendix G, Fig. 6).

The text analogue of the conditional influence of Eq. 10: split the prompt into words, drop stop words, and
for each remaining word w the score difference against the prompt without w,
    influence_w[p] = || s(x; prompt)_p - s(x; prompt \\ w)_p ||_2 over latent channels,
with s = (D - x) / sigma^2, averaged over the batch. Forward passes only. Words are then ranked per pixel; a
set of top-ranked words is "dominant" at a pixel when the smallest influence in the set is at least 2x the
influence of the next-ranked word (Appendix G).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from lcsbench.analysis.sdxl.pipeline import SDXLCondition

# Common words the paper removes before ablating ("a", "the", etc.): articles, prepositions, conjunctions.
STOP_WORDS = frozenset("""
a an the and or but nor of in on at to for from by with without into onto over under about as is are was were be
been it its this that these those there their his her some any very
""".split())
WORD_PATTERN = re.compile(r"[A-Za-z0-9]+(?:['\-][A-Za-z0-9]+)*")  # "oil-painting" and "don't" stay one word
DOMINANCE_RATIO = 2.0


def prompt_words(prompt: str) -> list[str]:
    """Every word of the prompt in order (punctuation dropped, case kept)."""
    return WORD_PATTERN.findall(prompt)


def content_words(prompt: str, stop_words: frozenset[str] = STOP_WORDS) -> list[str]:
    """The words to ablate: distinct non-stop words, in order of first appearance, lower case."""
    seen: list[str] = []
    for word in prompt_words(prompt):
        lower = word.lower()
        if lower not in stop_words and lower not in seen:
            seen.append(lower)
    return seen


def prompt_without_word(prompt: str, word: str) -> str:
    """The prompt with every occurrence of `word` removed (whole words, case-insensitive), spaces tidied."""
    words = [w.lower() for w in prompt_words(prompt)]
    if word.lower() not in words:
        raise ValueError(f"cannot ablate {word!r}: it is not a word of the prompt {prompt!r}. The prompt's words "
                         f"are {sorted(set(words))}; choose one of them")
    pattern = re.compile(rf"(?<![A-Za-z0-9'\-]){re.escape(word)}(?![A-Za-z0-9'\-])", re.IGNORECASE)
    ablated = pattern.sub("", prompt)
    ablated = re.sub(r"\s+([,.;:!?])", r"\1", ablated)  # no space before punctuation
    return re.sub(r"\s{2,}", " ", ablated).strip()


@dataclass
class WordInfluence:
    """Score-difference maps `maps[w]` `[W, h, w]` (latent pixels) for `words[w]`, with the ablated prompts."""

    words: list[str]
    ablated_prompts: list[str]
    maps: Tensor


def word_influence(
    denoiser: Callable[[Tensor, Tensor | float, SDXLCondition], Tensor],  # e.g. SDXLDenoiser, in eval mode
    encode: Callable[[Sequence[str]], SDXLCondition],  # prompts -> condition, e.g. partial(encode_prompts, pipe)
    x: Tensor,                              # noisy latents [B, 4, h, w]
    sigma: float,                           # their noise level
    prompt: str,                            # the full prompt
    words: Sequence[str] | None = None,     # words to ablate; None: content_words(prompt)
    chunk_size: int = 4,                    # prompts per batched forward
) -> WordInfluence:
    """Appendix G's word ablation at one noise level (see the module docstring)."""
    words = [w.lower() for w in (content_words(prompt) if words is None else words)]
    if not words:
        raise ValueError(f"the prompt {prompt!r} has no word left to ablate after removing stop words: use a "
                         f"prompt with content words or pass words=[...] explicitly")
    ablated = [prompt_without_word(prompt, w) for w in words]  # raises for a word not in the prompt
    prompts = [prompt, *ablated]
    batch = x.shape[0]
    outputs = []
    with torch.no_grad():
        for start in range(0, len(prompts), chunk_size):
            chunk = prompts[start:start + chunk_size]
            cond = encode(chunk)  # one condition per prompt; repeat each over the batch (prompt-major)
            cond = cond.select(torch.arange(len(chunk)).repeat_interleave(batch).to(cond.prompt_embeds.device))
            outputs.append(denoiser(x.repeat(len(chunk), 1, 1, 1), sigma, cond).float())
    denoised = torch.cat(outputs).view(len(prompts), batch, *x.shape[1:])
    score_delta = (denoised[:1] - denoised[1:]) / float(sigma) ** 2  # s(C) - s(C \ w): x cancels
    maps = score_delta.norm(dim=2).mean(dim=1)  # norm over latent channels, mean over samples: [W, h, w]
    return WordInfluence(words=words, ablated_prompts=ablated, maps=maps.cpu())


@dataclass
class WordRanking:
    """Per-pixel ranking of words: order `[W, h, w]` (order[0] the most influential word's index), and the
    dominant set: dominant `[W, h, w]` True where word w belongs to the pixel's dominant set; num_dominant
    `[h, w]` the size of that set (0: no set of top words stands out by the ratio)."""

    order: Tensor
    dominant: Tensor
    num_dominant: Tensor

    def dominant_fraction(self) -> list[float]:
        """For each word, the share of latent pixels where it is in the dominant set."""
        return self.dominant.float().mean(dim=(1, 2)).tolist()


def rank_words(maps: Tensor, ratio: float = DOMINANCE_RATIO) -> WordRanking:
    """Rank the words at each pixel and find the dominant set: the smallest k such that the k-th largest
    influence is at least `ratio` times the (k+1)-th (Appendix G, ratio 2). A single word is dominant wherever
    its influence is positive."""
    if maps.ndim != 3 or maps.shape[0] == 0:
        raise ValueError(f"maps must be [W, h, w] with at least one word; found shape {tuple(maps.shape)}")
    values, order = maps.sort(dim=0, descending=True)
    num_words = maps.shape[0]
    num_dominant = torch.zeros(maps.shape[1:], dtype=torch.long)
    undecided = values[0] > 0
    for k in range(1, num_words):  # the set of the top k words, decided at the first k that qualifies
        qualifies = undecided & (values[k - 1] >= ratio * values[k])
        num_dominant[qualifies] = k
        undecided &= ~qualifies
    num_dominant[undecided & torch.tensor(num_words == 1)] = 1
    rank_of = torch.empty_like(order)
    rank_of.scatter_(0, order, torch.arange(num_words).view(-1, 1, 1).expand_as(order))
    dominant = rank_of < num_dominant.unsqueeze(0)
    return WordRanking(order=order, dominant=dominant, num_dominant=num_dominant)
