"""The paper's SDXL prompts (Appendix G), as the defaults of `python -m lcsbench sdxl`."""

from __future__ import annotations

from dataclasses import dataclass

# Figure 6: pixel locality and word ablation on a prompt with implicit locations.
LOCALITY_PROMPT = "a beautiful photograph with a horse in the middle, a dog on the left, and a cat on the right"


@dataclass(frozen=True)
class ConceptPrompt:
    """A prompt of the feature-space study: its figure label, its text, and the words whose token maps are
    compared (the last token of each word; Appendix G). No words: the unconditional prompt, read at its
    end-of-sequence token."""

    label: str
    text: str
    words: tuple[str, ...]

    @property
    def is_composite(self) -> bool:
        return len(self.words) > 1

    @property
    def is_unconditional(self) -> bool:
        return not self.words


# Figure 7 / 13: eight single-concept prompts, three composites and the unconditional prompt.
ATTENTION_PROMPTS = (
    ConceptPrompt("dog", "A dog, full body, highly detailed photograph.", ("dog",)),
    ConceptPrompt("horse", "A horse, full body, highly detailed photograph.", ("horse",)),
    ConceptPrompt("cat", "A cat, full body, highly detailed photograph.", ("cat",)),
    ConceptPrompt("vangogh", "An oil-painting in the style of Van Gogh.", ("gogh",)),
    ConceptPrompt("monet", "A watercolor-painting in the style of Monet.", ("monet",)),
    ConceptPrompt("hokusai", "A woodblock print in the style of Hokusai.", ("hokusai",)),
    ConceptPrompt("sushi", "Eating sushi with chopsticks, highly detailed photograph.", ("sushi",)),
    ConceptPrompt("croissant", "Eating a croissant, highly detailed photograph.", ("croissant",)),
    ConceptPrompt("vangogh+cat+sushi", "A cat eating sushi with chopsticks, oil-painting in the style of Van Gogh.",
                  ("cat", "sushi", "gogh")),
    ConceptPrompt("vangogh+cat", "A cat, full body, oil-painting in the style of Van Gogh.", ("cat", "gogh")),
    ConceptPrompt("sushi+cat", "A cat eating sushi with chopsticks.", ("cat", "sushi")),
    ConceptPrompt("unconditional", "", ()),
)


def parse_concept_prompt(spec: str) -> ConceptPrompt:
    """`label=text|word1,word2` (command line form); `label=` alone is an unconditional prompt."""
    if "=" not in spec:
        raise ValueError(f"a prompt spec is 'label=text|word1,word2' (or 'label=' for the unconditional prompt); "
                         f"found {spec!r}")
    label, rest = spec.split("=", 1)
    text, _, words = rest.partition("|")
    words_t = tuple(w.strip() for w in words.split(",") if w.strip())
    if text.strip() and not words_t:
        raise ValueError(f"prompt {label!r} names no concept word: write 'label=text|word' so its token map "
                         f"can be selected")
    return ConceptPrompt(label.strip(), text.strip(), words_t)
