"""`python -m lcsbench closed-form <action>`: training-free closed-form denoisers of a render (issue 23).

Examples:

    python -m lcsbench closed-form spec --render data/reproduce32 --kind local --label-mode single \\
        --out closed_forms/local-single.pt
    python -m lcsbench closed-form r2 --ckpt runs/exp2/.../last.ckpt --spec closed_forms/local-single.pt \\
        --spec closed_forms/empirical-single.pt --out reports/exp2/r2
    python -m lcsbench closed-form coverage --spec closed_forms/local-single.pt
    python -m lcsbench closed-form memorisation --spec closed_forms/empirical-all.pt \\
        --samples-file reports/cf/lengthgen/samples.npz --out DIR

`python -m lcsbench closed-form <action> --help` lists the action's options with their defaults and an example.

spec          writes a closed-form spec: a small file that every command takes as --ckpt, like a checkpoint
              (models/closed_form.py). kind `local`: the local conditional score machine (the posterior mean of
              each grid cell given its noisy (2r+1)-cell patch and label sub-grid; --equivariant: training
              patches at any cell); kind `empirical`: the exact optimal denoiser of the training set. It records
              the render, its counts and the label mode, which `lengthgen` reads as the success rule.
r2            the yardstick: r2 of a trained model's D against each closed form's, per noise level, on held-out
              noisy renders (analysis/closed_form/yardstick.py). Writes OUT/r2.json and OUT/r2.png.
coverage      for the lengthgen protocol's requests: how many cells of each request the local machine has no
              training sub-grid for (it then uses the nearest one), or whether the empirical denoiser has no
              training image with the request's label grid (it then falls back to all images). Labels only.
memorisation  the distance of each sample in a lengthgen samples.npz to its nearest training image, beside the
              same for held-out renders (OUT/memorisation.json): a memorising model's samples sit much closer.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from lcsbench.commands._common import (DEFAULT_SIGMAS, CommandParser, add_model_arguments, add_precision_argument,
                                      check_device, check_output_dir, check_output_file, command_parser,
                                      default_device, memory_budget_option, parse_floats)
from lcsbench.data.scenes import DEFAULT_GRID_SIZE, parse_counts


def action_parser(sub, action: str, summary: str, example: str) -> CommandParser:
    """The parser of one action: its one-line summary, and an example in its epilog."""
    return sub.add_parser(action, help=summary, description=f"{summary}.", epilog=f"Example:\n\n    {example}")


def spec_parser(sub) -> CommandParser:
    parser = action_parser(sub, "spec", "write a closed-form spec that commands take as --ckpt",
                           "python -m lcsbench closed-form spec --render data/reproduce32 --kind empirical "
                           "--label-mode all --out closed_forms/empirical-all.pt")
    parser.add_argument("--render", required=True, help="the render whose train split is the training set")
    parser.add_argument("--kind", choices=("local", "empirical"), required=True,
                        help="which closed form: the local score machine or the empirical optimal denoiser")
    parser.add_argument("--label-mode", required=True, help="how the labels were drawn: all (Exp. 1) | single "
                                                            "(Exp. 2/3) | random | drop_one")
    parser.add_argument("--counts", default="1-3", help="object counts of the training data")
    parser.add_argument("--grid-size", type=int, default=DEFAULT_GRID_SIZE, help="location grid G")
    parser.add_argument("--radius", type=int, default=2, help="local: patches of (2r+1)^2 cells (2: "
                                                               "configs/exp3.yaml)")
    parser.add_argument("--equivariant", action="store_true", help="local: training patches at any cell")
    parser.add_argument("--images-per-count", type=int, default=None,
                        help="use the first N training images of each count (default: all)")
    parser.add_argument("--memory-budget-gib", type=float, default=0.5, help="memory of one chunk")
    parser.add_argument("--out", required=True, metavar="FILE", help="the spec file to write (.pt)")
    return parser


def write_spec(args, parser: CommandParser) -> int:
    from lcsbench.models.closed_form import write_spec as write

    budget = memory_budget_option(args.memory_budget_gib, "--memory-budget-gib", 0.5,
                                  command="closed-form spec")  # before the render is read
    try:
        entry = write(args.out, args.kind, args.render, args.counts, args.label_mode, args.grid_size, args.radius,
                      args.equivariant, args.images_per_count, budget)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"closed-form spec: {error}") from None
    print(f"closed-form spec: wrote {args.out} ({entry['kind']}, {entry['label_mode']} labels, counts "
          f"{entry['counts']} of {entry['render']}); use it as a checkpoint, e.g. `python -m lcsbench lengthgen "
          f"--ckpt {args.out} --out reports/closed_form/{Path(args.out).stem}`")
    return 0


def read_specs(paths: list[str]) -> list[dict]:
    """The spec entries of the given files, every field checked (models/closed_form.spec_entry) and each render
    found as its spec recorded it (check_spec_render), which must describe one render, label mode and grid."""
    from lcsbench.checkpoints import DATA_HPARAMS_KEY, read_checkpoint
    from lcsbench.models.closed_form import check_spec_render, spec_entry

    entries = []
    for path in paths:
        if Path(path).is_dir():
            raise SystemExit(f"closed-form: --spec {path} is a folder; --spec is a spec file (.pt) written by "
                             f"`python -m lcsbench closed-form spec`")
        try:
            payload = read_checkpoint(path, "write one with `python -m lcsbench closed-form spec`")
            entries.append(spec_entry(payload, path))
            entries[-1]["resolution"] = check_spec_render(entries[-1], payload[DATA_HPARAMS_KEY], path)[
                "settings"]["resolution"]
        except (FileNotFoundError, ValueError) as error:
            raise SystemExit(f"closed-form: {error}") from None
    shared = {(e["render"], e["label_mode"], tuple(e["counts"]), e["grid_size"]) for e in entries}
    if len(shared) > 1:
        raise SystemExit(f"closed-form: the specs describe different training data {sorted(shared)}: compare closed "
                         f"forms of one render, label mode, counts and grid")
    return entries


def r2_parser(sub) -> CommandParser:
    parser = action_parser(sub, "r2", "r2 of a trained model's D against closed forms, per noise level",
                           "python -m lcsbench closed-form r2 --ckpt runs/exp1/.../last.ckpt --spec "
                           "closed_forms/empirical-all.pt --out reports/exp1/r2 --heldout 64")
    add_model_arguments(parser, out_help="output folder for r2.json and r2.png")
    add_precision_argument(parser, default="fp32")  # bf16 not yet checked against fp32 for r2
    parser.add_argument("--spec", action="append", required=True, help="a closed-form spec (repeat for several)")
    parser.add_argument("--sigmas", default=DEFAULT_SIGMAS, help="noise levels (comma list)")
    parser.add_argument("--heldout", type=int, default=32, help="held-out renders compared")
    parser.add_argument("--batch-size", type=int, default=16, help="images per denoiser call")
    parser.deprecated_aliases({"--images": "--heldout", "--batch": "--batch-size"})
    return parser


def check_trained_as_specs(ckpt: str, data: dict, label_mode: str, counts: list[int]) -> None:
    """SystemExit unless the model of `ckpt` (its DataModule settings `data`; none recorded: nothing to compare)
    was trained with the specs' label mode and object counts: r2 compares denoisers of one training set."""
    if data.get("label_mode", label_mode) != label_mode:
        raise SystemExit(f"closed-form r2: {ckpt} was trained with {data['label_mode']!r} labels but the specs "
                         f"integrate over {label_mode!r} labels: write specs with --label-mode {data['label_mode']}")
    try:
        trained = list(parse_counts(data["counts"])) if data.get("counts") is not None else list(counts)
    except (TypeError, ValueError) as error:
        raise SystemExit(f"closed-form r2: {ckpt} records unreadable training counts {data['counts']!r} "
                         f"({error}): pass a checkpoint written by `fit`") from None
    if trained != list(counts):
        raise SystemExit(f"closed-form r2: {ckpt} was trained on object counts {trained} but the specs integrate "
                         f"over counts {list(counts)}: write specs with --counts {','.join(map(str, trained))}")


def r2(args, parser: CommandParser) -> int:
    import torch

    from lcsbench.analysis.closed_form.yardstick import denoised_over_sigmas, plot_r2, r2_report
    from lcsbench.analysis.plots import save_figure
    from lcsbench.checkpoints import DATA_HPARAMS_KEY, read_checkpoint
    from lcsbench.commands._common import load_trained_denoiser
    from lcsbench.models.closed_form import heldout_batch, load_closed_form

    check_device(args.device)  # before any file is read, as sample, lengthgen and locality do
    sigmas = parse_floats(args.sigmas, "sigmas")
    if args.heldout < 2 or args.batch_size < 1:
        raise SystemExit(f"closed-form r2: need {parser.flag('--heldout')} >= 2 (r2 compares images) and "
                         f"{parser.flag('--batch-size')} >= 1; found {args.heldout}, {args.batch_size}")
    entries = read_specs(args.spec)
    render, label_mode, counts, grid = (entries[0][k] for k in ("render", "label_mode", "counts", "grid_size"))
    try:
        data = read_checkpoint(args.ckpt, "pass a checkpoint from `fit`", mmap=True).get(DATA_HPARAMS_KEY) or {}
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"closed-form r2: {error}") from None
    check_trained_as_specs(args.ckpt, data, label_mode, counts)
    started = time.perf_counter()
    model = load_trained_denoiser(args.ckpt, ema=not args.no_ema, device=args.device, precision=args.precision)
    if model.conditioning != "location" or model.grid_size != grid:
        raise SystemExit(f"closed-form r2: the closed forms are location models on a {grid}x{grid} grid; "
                         f"{args.ckpt} is a {model.conditioning} model (grid {model.grid_size})")
    if model.image_shape[-1] != entries[0]["resolution"]:
        raise SystemExit(f"closed-form r2: {args.ckpt} makes {model.image_shape[-1]} px images but the specs' render "
                         f"{render} is {entries[0]['resolution']} px: compare a model with closed forms of its own "
                         f"render")
    try:  # the render is read, each shard checked against its manifest's sha256
        images, cond = heldout_batch(render, counts, label_mode, grid, args.heldout, int(data.get("seed", 0)))
    except ValueError as error:
        raise SystemExit(f"closed-form r2: {error}") from None
    images, cond = images.to(args.device), cond.to(args.device)
    print(f"closed-form r2: {len(images)} held-out renders x {len(sigmas)} noise levels", file=sys.stderr)
    outputs = denoised_over_sigmas(model, images, cond, sigmas, args.seed, args.batch_size)
    references, fallbacks = {}, {}
    for path, entry in zip(args.spec, entries):
        name = Path(path).stem
        print(f"closed-form r2: building {name} ({entry['kind']}) from {render}", file=sys.stderr)
        with torch.no_grad():
            try:
                closed_form = load_closed_form(path, map_location=args.device)
            except ValueError as error:
                raise SystemExit(f"closed-form r2: {error}") from None
            references[name] = denoised_over_sigmas(closed_form.denoiser, images, cond, sigmas, args.seed,
                                                      args.batch_size)
        fallbacks[name] = closed_form.denoiser.fallbacks
        del closed_form
    report = {"command": "closed-form r2", "ckpt": str(args.ckpt), "ema": not args.no_ema, "specs": args.spec,
              "precision": args.precision, "render": render, "label_mode": label_mode, "counts": counts,
              "images": len(images), "seed": args.seed,
              **r2_report(sigmas, outputs, references), "fallbacks": fallbacks,
              "seconds": round(time.perf_counter() - started, 1)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "r2.json").write_text(json.dumps(report, indent=2))
    save_figure(plot_r2(report, title=Path(args.ckpt).name), out / "r2.png")
    for name, values in report["r2"].items():
        print(f"closed-form r2: {name:>20s}  " + "  ".join(f"{s:g}: {v:.3f}" for s, v in zip(sigmas, values)))
    print(f"closed-form r2: wrote {out / 'r2.json'} and r2.png in {report['seconds']} s")
    return 0


def coverage_parser(sub) -> CommandParser:
    parser = action_parser(sub, "coverage", "cells (local) or requests (empirical) without training labels, per k",
                           "python -m lcsbench closed-form coverage --spec closed_forms/local-single.pt --ks 1-12 "
                           "--json reports/coverage.json")
    parser.add_argument("--spec", required=True, help="a closed-form spec")
    parser.add_argument("--ks", default="1-12", help="numbers of requested objects")
    parser.add_argument("--order", choices=("paper", "random"), default="paper", help="as lengthgen's --order")
    parser.add_argument("--samples-per-k", type=int, default=1,
                        help="requests per k (1: in the paper's order all requests of a k are one grid)")
    parser.add_argument("--seed", type=int, default=0, help="as lengthgen's --seed")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the printed table to this JSON "
                                                                      "file (default: print only)")
    parser.deprecated_aliases({"--out": "--json"})
    return parser


MAX_COVERAGE_SAMPLES = 4096  # requests per k held at once (their label grids and one batched call of the machine)


def coverage(args, parser: CommandParser) -> int:
    import torch

    from lcsbench.analysis import lengthgen as lg
    from lcsbench.data.scenes import parse_counts
    from lcsbench.models.closed_form import load_closed_form

    if not 1 <= args.samples_per_k <= MAX_COVERAGE_SAMPLES:
        raise SystemExit(f"closed-form coverage: --samples-per-k is the number of requests per k, in 1.."
                         f"{MAX_COVERAGE_SAMPLES} (each is one label grid; the paper's order gives one grid per k); "
                         f"found {args.samples_per_k}")
    if args.json:
        check_output_file(args.json, parser.flag("--json"))  # before the closed form is built
    entry = read_specs([args.spec])[0]
    try:
        ks = list(parse_counts(args.ks))
        requests = lg.protocol_requests("location", ks, args.samples_per_k, args.order, args.seed)
    except ValueError as error:
        raise SystemExit(f"closed-form coverage: --ks {args.ks}: {error}") from None
    try:
        machine = load_closed_form(args.spec).denoiser
    except ValueError as error:
        raise SystemExit(f"closed-form coverage: {error}") from None
    per_k = {}
    for k in ks:
        cond = torch.stack([lg.request_conditioner(r, entry["grid_size"]) for r in requests if r["k"] == k])
        with torch.no_grad():  # D is not needed: the fallbacks depend on the labels only; one call records them
            machine(torch.zeros(len(cond), *machine.image_shape), 1.0, cond)
        if entry["kind"] == "local":
            cells = machine.last_fallback_cells.float()
            per_k[k] = {"cells_fell_back_mean": float(cells.mean()), "cells_fell_back_max": int(cells.max()),
                        "cells": entry["grid_size"] ** 2}
        else:
            per_k[k] = {"requests_fell_back": float(machine.last_fell_back.float().mean())}
        print(f"closed-form coverage: k={k:2d}  " + "  ".join(f"{n} {v:g}" for n, v in per_k[k].items()))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"command": "closed-form coverage", "spec": args.spec, **entry,
                                              "order": args.order, "per_k": per_k}, indent=2))
    return 0


def memorisation_parser(sub) -> CommandParser:
    parser = action_parser(sub, "memorisation", "nearest-training-image distances of samples and held-out renders",
                           "python -m lcsbench closed-form memorisation --spec closed_forms/empirical-all.pt "
                           "--samples-file reports/exp1/lengthgen/samples.npz --out reports/exp1/memorisation")
    parser.add_argument("--spec", required=True, help="a closed-form spec (its render's train split is compared)")
    parser.add_argument("--samples-file", required=True, metavar="FILE", help="a lengthgen samples.npz")
    parser.add_argument("--heldout", type=int, default=300, help="held-out renders compared")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder for memorisation.json")
    parser.deprecated_aliases({"--samples": "--samples-file"})
    return parser


def read_samples(path: str, resolution: int):
    """The images `uint8 [N, H, W, 3]` and settings of a lengthgen samples.npz, checked to be `resolution` px
    images (what the render's training images are compared with), or a SystemExit saying what was expected."""
    import zipfile

    import numpy as np

    hint = "pass the samples.npz that `python -m lcsbench lengthgen` writes in its --out"
    if not Path(path).is_file():
        found = "is a folder" if Path(path).is_dir() else "does not exist"
        raise SystemExit(f"closed-form memorisation: --samples-file {path} {found}: {hint}")
    try:
        with np.load(path, allow_pickle=False) as saved:
            samples, settings = saved["images"], json.loads(str(saved["settings"]))
    except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as error:
        raise SystemExit(f"closed-form memorisation: {path} is not a lengthgen samples.npz ({type(error).__name__}: "
                         f"{' '.join(str(error).split()).split('. ')[0][:120]}): {hint}") from None
    shape = (resolution, resolution, 3)
    if samples.dtype != np.uint8 or samples.ndim != 4 or samples.shape[1:] != shape or len(samples) == 0:
        raise SystemExit(f"closed-form memorisation: {path} holds images of dtype {samples.dtype} and shape "
                         f"{list(samples.shape)}; expected uint8 [N >= 1, {', '.join(map(str, shape))}] (the spec's "
                         f"render is {resolution} px): {hint} for a model of that render")
    if not isinstance(settings, dict):
        raise SystemExit(f"closed-form memorisation: {path} records settings {settings!r}; expected the dict lengthgen "
                         f"writes: {hint}")
    return samples, settings


def memorisation(args, parser: CommandParser) -> int:
    import numpy as np
    import torch

    from lcsbench.analysis.closed_form import nearest_training_distance
    from lcsbench.models.closed_form import render_images

    if args.heldout < 1:
        raise SystemExit(f"closed-form memorisation: {parser.flag('--heldout')} is the number of held-out renders "
                         f"compared, >= 1; found {args.heldout}")
    out = check_output_dir(args.out)  # before any image is read
    entry = read_specs([args.spec])[0]
    samples, settings = read_samples(args.samples_file, entry["resolution"])
    per_count = -(-args.heldout // len(entry["counts"]))
    try:  # each shard checked against its manifest's sha256
        train, _ = render_images(entry["render"], entry["counts"], "train", entry["images_per_count"])
        heldout, _ = render_images(entry["render"], entry["counts"], "val", per_count)
    except ValueError as error:
        raise SystemExit(f"closed-form memorisation: {error}") from None
    if len(heldout) < args.heldout:
        print(f"closed-form memorisation: {parser.flag('--heldout')} {args.heldout} asked for more held-out renders "
              f"than {entry['render']} has for counts {entry['counts']}: comparing its {len(heldout)}",
              file=sys.stderr)
    pixels = torch.from_numpy(np.ascontiguousarray(samples)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    sample_distance = nearest_training_distance(pixels, train)
    heldout_distance = nearest_training_distance(heldout, train)
    drawn, each = settings.get("ks"), settings.get("samples_per_k")  # the order lengthgen drew them in, if recorded
    readable = isinstance(drawn, list) and all(isinstance(k, int) for k in drawn) and isinstance(each, int)
    ks = [k for k in drawn for _ in range(each)] if readable else []
    per_k = {}
    for k in sorted(set(ks)) if len(ks) == len(samples) else []:
        chosen = sample_distance[torch.tensor([x == k for x in ks])]
        per_k[k] = {"mean": float(chosen.mean()), "median": float(chosen.median())}
    report = {"command": "closed-form memorisation", "spec": args.spec, "samples": args.samples_file,
              "distance": "L2 in [-1, 1] pixel units over the whole image", "training_images": len(train),
              "heldout_images": len(heldout),
              "samples_mean": float(sample_distance.mean()), "samples_median": float(sample_distance.median()),
              "heldout_mean": float(heldout_distance.mean()), "heldout_median": float(heldout_distance.median()),
              "per_k": per_k}
    out.mkdir(parents=True, exist_ok=True)
    (out / "memorisation.json").write_text(json.dumps(report, indent=2))
    print(f"closed-form memorisation: nearest training image, median L2: samples {report['samples_median']:.2f}, "
          f"held-out renders {report['heldout_median']:.2f}; wrote {out / 'memorisation.json'}")
    return 0


ACTIONS = {"spec": (spec_parser, write_spec), "r2": (r2_parser, r2), "coverage": (coverage_parser, coverage),
           "memorisation": (memorisation_parser, memorisation)}


def build_parser() -> CommandParser:
    parser = command_parser("closed-form", __doc__)
    sub = parser.add_subparsers(dest="action", required=True, metavar="{" + ",".join(ACTIONS) + "}")
    parser.action_parsers = {action: make_parser(sub) for action, (make_parser, _) in ACTIONS.items()}
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "device", None) is None and args.action == "r2":
        args.device = default_device()
    return ACTIONS[args.action][1](args, parser.action_parsers[args.action])
