"""`python -m lcsbench <command>`: Trainer commands go to LightningCLI, tools to plain functions.

Each command lives in its own module of `lcsbench/commands/` exposing `main(argv: list[str]) -> int`; modules are
imported only when their command runs, so `--help` stays fast and a tool never pays for Lightning's import.
"""

from __future__ import annotations

import importlib
import sys

TRAINER_COMMANDS = {
    "fit": "train a model (LightningCLI; --config configs/<experiment>.yaml)",
    "validate": "run one validation pass of a checkpoint (LightningCLI)",
}  # no test / predict: the models have no test_step or predict_step (lengthgen, locality, sample evaluate)

# command -> (module with main(argv), one-line description); every module is in lcsbench/commands/
TOOLS: dict[str, tuple[str, str]] = {
    "render": ("lcsbench.commands.render", "render CLEVR scenes with Blender into WebDataset shards"),
    "import-clevr": ("lcsbench.commands.import_clevr", "convert official CLEVR renders into lcsbench shards"),
    "sdxl": ("lcsbench.commands.sdxl", "SDXL word-ablation locality and cross-attention cosines (Figures 6, 7, 13)"),
    "locality": ("lcsbench.commands.locality", "pixel and conditional locality heatmaps and radii over noise levels"),
    "features": ("lcsbench.commands.features", "feature-space cosine matrices of the EDM2 conditioning modulation"),
    "sample": ("lcsbench.commands.sample", "sample a PNG grid from a trained model for given locations or colours"),
    "lengthgen": ("lcsbench.commands.lengthgen", "length-generalization curve and Table-1 row, judged beside a Blender oracle"),
    "eval-judge": ("lcsbench.commands.eval_judge", "the object judge's accuracy per object count on held-out renders"),
    "oracle-check": ("lcsbench.commands.oracle_check", "the judge on Blender renders of the protocol's own layouts"),
    "reconstruct-ema": ("lcsbench.commands.reconstruct_ema", "post-hoc power-function EMA for any sigma_rel from snapshots"),
    "closed-form": ("lcsbench.commands.closed_form", "training-free closed-form denoisers: specs, r2 yardstick, coverage"),
    "reproduce": ("lcsbench.commands.reproduce", "the whole study: render, fit Exp 1-3, evaluate, Table 1 / Figure 2 report"),
}

TRAINER_MODULE = "lcsbench.commands.trainer"


def usage() -> str:
    width = max(len(name) for name in [*TRAINER_COMMANDS, *TOOLS])
    lines = ["usage: python -m lcsbench <command> [options]   (python -m lcsbench <command> --help)", ""]
    lines.append("training (LightningCLI):")
    lines += [f"  {name:<{width}}  {text}" for name, text in TRAINER_COMMANDS.items()]
    lines.append("")
    lines.append("tools:")
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in TOOLS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command in TRAINER_COMMANDS:
        trainer = importlib.import_module(TRAINER_MODULE)
        return trainer.main([command, *rest])
    if command in TOOLS:
        module = importlib.import_module(TOOLS[command][0])
        return int(module.main(rest) or 0)
    print(f"lcsbench: unknown command {command!r}.\n\n{usage()}", file=sys.stderr)
    return 2
