"""One frozen record per experiment of the study: what it is, what the paper measured, what the study predicts.

A record's `configs` name, per scale, the configs its `fit` stacks (LightningCLI's repeated --config: a scale's
base, the patch model's layer for patch-local models, then the experiment's small delta). Closed forms train
nothing: their spec's grid and radius are read from the config of the experiment named in `geometry_from`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MODEL_KINDS = ("global", "patch", "closed_form")
CONDITIONINGS = ("location", "color")


@dataclass(frozen=True)
class Experiment:
    """One model of the study (trained, or a training-free closed form)."""

    name: str  # the study's folder and --experiments name, e.g. "exp1"
    title: str  # for tables and figures, e.g. "Exp 1: global EDM2, all objects labelled"
    model: str  # MODEL_KINDS: the global EDM2, the patch-local EDM2 (App. E.3), or a closed form
    counts: str  # object counts of the training data, e.g. "1-3"
    label_mode: str  # all | single | random | drop_one (the datamodule's label_mode)
    conditioning: str = "location"  # CONDITIONINGS
    paper: str | None = None  # the paper's k_max in its notation, e.g. "9+(0-2)" (None: not in the paper)
    source: str = ""  # where the paper's value is, e.g. "Table 1, 1-3 objects"
    prediction: str = ""  # what the study predicts of this model, in words
    k_max_at_least: int | None = None  # the prediction as a bound on k_max (a pre-registered goal), if any
    k_max_at_most: int | None = None
    learned_first: bool = False  # a predicted failure counts only if k = 1 succeeds (the model learned its labels)
    configs: dict[str, tuple[str, ...]] = field(default_factory=dict)  # scale -> the fit config stack
    closed_form: str | None = None  # local | empirical: the closed form's kind (model "closed_form")
    geometry_from: str | None = None  # closed forms: the experiment whose config gives the grid and patch radius
    colour: str | None = None  # its line colour in the figures
    judged: bool = True  # closed forms: lengthgen and locality run on it (False: a yardstick for r2 only)
    # (its cell of the paper's Tables 1 and 2 follows from model, conditioning, label_mode and counts:
    # analysis/paper_tables.py derives it, so a record does not restate it)

    def __post_init__(self):
        if self.model not in MODEL_KINDS:
            raise ValueError(f"experiment {self.name}: model is one of {MODEL_KINDS}, got {self.model!r}")
        if self.conditioning not in CONDITIONINGS:
            raise ValueError(f"experiment {self.name}: conditioning is one of {CONDITIONINGS}, got "
                             f"{self.conditioning!r}")
        if (self.model == "closed_form") != (self.closed_form is not None):
            raise ValueError(f"experiment {self.name}: a closed form names its kind (closed_form), a trained "
                             f"model does not")

    @property
    def trained(self) -> bool:
        return self.model != "closed_form"

    @property
    def paper_rule(self) -> str | None:
        """The paper's success rule behind its value: "+(0-j)" allows 0 to j objects beyond the k requested."""
        if self.paper is None:
            return None
        extras = re.search(r"\+\(0-(\d+)\)", self.paper)
        return (f"the k requested objects and 0 to {extras.group(1)} others" if extras
                else "exactly the k requested objects")


REGISTRY: dict[str, Experiment] = {}


def register(experiment: Experiment) -> Experiment:
    """Add an experiment to the study (a name is registered once)."""
    if experiment.name in REGISTRY:
        raise ValueError(f"experiment {experiment.name} is registered already")
    REGISTRY[experiment.name] = experiment
    return experiment


def unregister(name: str) -> None:
    REGISTRY.pop(name, None)


def experiment(name: str) -> Experiment:
    try:
        return REGISTRY[name]
    except KeyError:
        raise SystemExit(f"reproduce: no experiment {name!r}; the study's experiments: "
                         f"{', '.join(REGISTRY)}") from None


def cpu(delta: str, patch: bool = False) -> tuple[str, ...]:
    """The cpu scale's stack: base.yaml, patch.yaml for a patch-local model, the experiment's delta."""
    folder = "configs/reproduce/cpu"
    return (f"{folder}/base.yaml", *((f"{folder}/patch.yaml",) if patch else ()), f"{folder}/{delta}.yaml")


def smoke(delta: str, patch: bool = False) -> tuple[str, ...]:
    folder = "configs/reproduce/smoke"
    return (f"{folder}/base.yaml", *((f"{folder}/patch.yaml",) if patch else ()), f"{folder}/{delta}.yaml")


GLOBAL = "global EDM2"
PATCH = "patch-local EDM2"
