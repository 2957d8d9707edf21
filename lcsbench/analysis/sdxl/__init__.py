"""SDXL analyses through diffusers (paper Section 4, Appendix G; Figures 6, 7, 13). Extra: `lcsbench[sdxl]`.

The pipeline loader and the denoiser adapter live beside the other models (models/sdxl.py); the Euler sampler
in diffusion/sampler.py. Nothing here imports diffusers: the analyses take a loaded pipeline and, where they
need it, the adapter.

- `pipeline`: prompts -> `SDXLCondition`, the unconditional branch, latent decoding, the pipeline's noise schedule.
- `ablation`: word ablation (score difference per latent pixel), ranking and dominant words.
- `attention`: cross-attention capture (processors swapped and restored), word -> token positions.
- `cosines`: Eq. 3 mean difference vectors, cosine matrices, compositional similarity.
- `studies`: the Figure 6 and Figure 7/13 studies end to end; `plots`: their figures.

A tiny SDXL pipeline built from configs (for tests and benchmarks) is the test fixture `tests/sdxl_tiny.py`.
"""

from lcsbench.analysis.sdxl.ablation import (content_words, prompt_without_word, rank_words,  # noqa: F401
                                             word_influence)
from lcsbench.analysis.sdxl.attention import (capture_cross_attention, concept_token,  # noqa: F401
                                              cross_attention_layers, end_token, resolve_layers, word_token_span)
from lcsbench.analysis.sdxl.pipeline import (SDXLCondition, encode_prompts, unconditional_condition)  # noqa: F401
