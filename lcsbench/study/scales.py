"""The scales of the study: what each one renders (keyed by the object counts it covers), which experiments it
trains, and how it evaluates them. A fit config stack is read here too (max_steps, data root, grid, radius)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import lcsbench
from lcsbench.commands._common import DEFAULT_SIGMAS
from lcsbench.diffusion.sampler import PAPER_HEUN_STEPS
from lcsbench.study.records import REGISTRY, Experiment

COLOUR_KS = 8  # the paper's 8 CLEVR colours: a colour request asks for up to 8 distinct colours
PATCH_STEPS = PAPER_HEUN_STEPS // 2  # full-image patch-local sampling: checked against the paper's steps (STEPS_CHECK)


@dataclass(frozen=True)
class Scale:
    """One scale of the study, declared once: its renders, the experiments it trains, the evaluation."""

    name: str
    renders: dict[str, dict]  # object counts ("1-5") -> `render` flags besides --out, with "root": its folder
    lengthgen: dict  # `lengthgen` flags besides --ckpt, --out, --name, --judge
    locality: dict  # `locality` flags besides --ckpt, --out
    note: str = ""  # one line for --help
    lengthgen_by_model: dict = field(default_factory=dict)  # model kind -> lengthgen flags replacing the scale's
    lengthgen_by_experiment: dict = field(default_factory=dict)  # experiment -> flags replacing those
    closed_form_flags: dict = field(default_factory=dict)  # `closed-form spec` flags beside the derived ones
    closed_form_names: tuple[str, ...] | None = None  # the closed forms this scale builds (None: every one)
    closed_form_locality: dict = field(default_factory=dict)  # locality flags replacing the scale's for them
    r2: dict = field(default_factory=dict)  # `closed-form r2` flags besides --ckpt, --spec, --out

    @property
    def experiments(self) -> list[str]:
        """The registered experiments with a config stack at this scale, then the closed forms whose geometry
        comes from one of them, in registration order."""
        trained = [e.name for e in REGISTRY.values() if e.trained and self.name in e.configs]
        return trained + [e.name for e in REGISTRY.values()
                          if not e.trained and e.geometry_from in trained and self.closed_form_ok(e)]

    def closed_form_ok(self, record: Experiment) -> bool:
        """Whether the scale builds this closed form: named by it (or no names given), over counts it renders."""
        from lcsbench.data.scenes import parse_counts

        covered = any(set(parse_counts(record.counts)) <= set(parse_counts(key)) for key in self.renders)
        return covered and (self.closed_form_names is None or record.name in self.closed_form_names)

    @property
    def resolution(self) -> int:
        return int(next(iter(self.renders.values()))["resolution"])

    def render_for(self, counts: str) -> str:
        """The counts key of the render whose object counts cover `counts`."""
        from lcsbench.data.scenes import parse_counts

        wanted = set(parse_counts(counts))
        for key in self.renders:
            if wanted <= set(parse_counts(key)):
                return key
        raise SystemExit(f"reproduce: the {self.name} scale renders {', '.join(self.renders)} objects, none covers "
                         f"{counts}: add a render covering them to the scale")

    def lengthgen_flags(self, record: Experiment) -> dict:
        """An experiment's lengthgen flags: the scale's, its model kind's, its own; a colour model asks for at most
        the paper's 8 colours."""
        options = {**self.lengthgen, **self.lengthgen_by_model.get(record.model, {}),
                   **self.lengthgen_by_experiment.get(record.name, {})}
        if record.conditioning == "color":
            from lcsbench.data.scenes import parse_counts

            ks = [k for k in parse_counts(str(options["ks"])) if k <= COLOUR_KS]
            options["ks"] = f"{min(ks)}-{max(ks)}"
        return options


def repository() -> Path:
    return Path(lcsbench.__file__).resolve().parents[1]


def config_paths(record: Experiment, scale: str) -> list[Path]:
    """The experiment's fit config stack at a scale: as written (relative to the working directory), else in the
    repository."""
    paths = []
    for name in record.configs[scale]:
        path = Path(name)
        if not path.is_absolute() and not path.exists() and (repository() / path).exists():
            path = repository() / path
        paths.append(path)
    return paths


def merged(base: dict, later: dict) -> dict:
    """Two config layers as LightningCLI stacks them for reading: mappings merged key by key, the rest replaced."""
    out = dict(base)
    for key, value in later.items():
        out[key] = merged(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


def read_config(paths: list[Path]) -> dict:
    """The stacked config's max_steps, data settings, model settings and the merged document."""
    import yaml

    config: dict = {}
    for path in paths:
        if not path.is_file():
            raise SystemExit(f"reproduce: the fit config {path} does not exist: the scale's configs live in "
                             f"{path.parent}/; write it, or choose another --scale")
        layer = yaml.safe_load(path.read_text()) or {}
        for section, value in layer.items():  # `model: models/x.yaml`: a section read from a file beside the config
            if section in ("trainer", "model", "data") and isinstance(value, str):
                layer[section] = yaml.safe_load((path.parent / value).read_text()) or {}
        config = merged(config, layer)
    try:
        max_steps = int(config["trainer"]["max_steps"])
        data = dict(config["data"]["init_args"])
        root = str(data["root"])
    except (KeyError, TypeError, ValueError):
        raise SystemExit(f"reproduce: {' + '.join(map(str, paths))} must set trainer.max_steps and "
                         f"data.init_args.root (as configs/reproduce/cpu/base.yaml does)") from None
    model = (config.get("model") or {}).get("init_args") or {}
    return {"max_steps": max_steps, "data_root": root, "data": data, "model": model, "config": config}


SCALES: dict[str, Scale] = {
    "smoke": Scale(
        "smoke",
        renders={"1-3": {"root": "data/reproduce-smoke", "counts": "1-3", "per-count": 8, "val-per-count": 4,
                         "resolution": 32, "samples-per-pixel": 4, "seed": 0}},
        lengthgen={"ks": "1-3", "samples-per-k": 2, "steps": 4, "samples-per-pixel": 4},
        locality={"sigmas": "0.5,40", "noise-draws": 1, "steps": 4, "locations": 3},
        note="tiny everything: the pipeline in minutes, no claim about results",
        closed_form_names=("cf_local_single", "cf_empirical_all"),
        r2={"sigmas": "0.5,40", "heldout": 4}),
    "cpu": Scale(
        "cpu",
        # 10,000 images per count: minutes of Blender per count, and the judge ships (judge-32.pt)
        renders={"1-5": {"root": "data/reproduce32", "counts": "1-5", "per-count": 10000, "val-per-count": 100,
                         "resolution": 32, "samples-per-pixel": 16, "seed": 3}},
        lengthgen={"ks": "1-10", "samples-per-k": 32, "steps": PAPER_HEUN_STEPS, "samples-per-pixel": 16},
        # Figure 2 with its spread: 8 scenes x 4 noise draws x every conditioner of each scene
        locality={"sigmas": DEFAULT_SIGMAS, "noise-draws": 4, "scenes": 8, "steps": PAPER_HEUN_STEPS,
                  "locations": 3},
        note="32 px, G = 16, 1-5 objects rendered: hours on 2 CPU cores",
        # full-image patch-local sampling runs the patch U-Net on all 256 patches per step (about 22x the global
        # net's work): half the paper's Heun steps, checked against them at k = 1..4 (STEPS_CHECK); a patch-local
        # or local-machine sample takes ~9 s of one core at 16 steps (measured 2026-12-03), so Figure 4's local
        # model is judged on 16 samples per k, the closed forms on 8 (wider intervals: read them beside the counts)
        lengthgen_by_model={"patch": {"steps": PATCH_STEPS},
                            "closed_form": {"steps": PATCH_STEPS, "samples-per-k": 8}},
        lengthgen_by_experiment={"fig4_local": {"samples-per-k": 16}},
        closed_form_locality={"scenes": 1, "noise-draws": 2, "steps": PATCH_STEPS},
        r2={"heldout": 32}),
    "paper": Scale(
        "paper",
        renders={"1-3": {"root": "data/clevr64", "counts": "1-3", "per-count": 500000, "val-per-count": 1000,
                         "resolution": 64, "samples-per-pixel": 64, "seed": 0}},
        lengthgen={"ks": "1-12", "samples-per-k": 32, "steps": PAPER_HEUN_STEPS, "samples-per-pixel": 64},
        locality={"sigmas": DEFAULT_SIGMAS, "noise-draws": 2, "steps": PAPER_HEUN_STEPS, "locations": 3},
        note="the paper's scale: 64 px, edm2-img64-xs, G = 16, for a GPU cluster",
        # the closed forms' cost grows with the training set: the first 30,000 renders of each count
        closed_form_flags={"images-per-count": 30000},
        r2={"heldout": 64}),
}
