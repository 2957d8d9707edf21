"""`python -m lcsbench lengthgen`: the length-generalization row of Table 1, judged automatically (App. E.2).

Examples:

    python -m lcsbench lengthgen --ckpt runs/exp1/.../last.ckpt --out reports/exp1
    python -m lcsbench lengthgen --ckpt runs/exp1/.../last.ckpt --judge runs/judge/.../last.ckpt --out reports/exp1 \\
        --ks 1-12 --samples-per-k 32 --samples-per-pixel 64
    python -m lcsbench lengthgen --ckpt reports/reproduction/cpu/weights/exp2.pt --out DIR --order random --no-oracle

Without --judge, the judge shipped inside the package for the model's resolution is used (lcsbench/weights/;
a resolution without one is an error that names the shipped ones and the recipe that trains one).

For k = 1..12 paper locations (location models) or k = 1..8 paper colours (colour models), samples the model
(EDM Heun, 32 steps, EMA weights, no guidance: the paper's sampler; the network in bf16 autocast unless
--precision fp32, which gives the same rates within their Wilson intervals on the committed weights), renders the same requested layouts with
Blender as the oracle row, judges both with the trained judge and writes to OUT:

    lengthgen.json          per-k success rate, mean missing/extra, count histogram, k_max, k_max_strict for the
                            rows "model" and "oracle" (layout: the lcsbench.analysis.lengthgen docstring)
    lengthgen.png           success vs k, model beside oracle
    samples_k{K}.png        model samples per k with requested centres (green +) and detections (yellow o
                            matched, red o extra); oracle_k{K}.png the same for the Blender renders
    table.md                a Table-1-style markdown row
    samples.npz             the model row's samples and the settings that drew them: a rerun into the same OUT
                            with the same checkpoint, ks, samples per k, order, seed and steps judges them again
                            (another --judge or --tolerance-cells) without sampling
    oracle_render/          the oracle's shards (reused when the same layouts are asked again)

The success rule follows the training data (E.2; analysis/lengthgen.SuccessRule): the trained object counts and
label mode are read from the checkpoint's DataModule settings, or given with --trained-counts / --label-mode.

The study itself is `lcsbench.analysis.lengthgen.run` (one call in a notebook); this command reads the flags,
loads the model and the judge and writes what the study returns.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lcsbench.commands._common import (CommandParser, Progress, add_precision_argument, apply_precision, check_device,
                                      check_output_dir, command_parser, default_device)

RENAMED = {"--batch": "--batch-size", "--oracle-samples": "--samples-per-pixel"}  # old flag -> new (deprecated)


def parse_ks(text: str) -> list[int]:
    from lcsbench.data.scenes import parse_counts

    try:
        return list(parse_counts(text))
    except ValueError as error:
        raise SystemExit(f"lengthgen: --ks {error}") from None


def training_setup(payload: dict, args) -> tuple[tuple[int, ...], str]:
    """Trained object counts and label mode: flags first, then the checkpoint's DataModule hyperparameters."""
    from lcsbench.checkpoints import DATA_HPARAMS_KEY
    from lcsbench.data.conditioning import LABEL_MODES
    from lcsbench.data.scenes import parse_counts

    data = payload.get(DATA_HPARAMS_KEY, {}) if isinstance(payload, dict) else {}
    counts = args.trained_counts or data.get("counts")
    label_mode = args.label_mode or data.get("label_mode")
    if counts is None or label_mode is None:
        raise SystemExit(f"lengthgen: {args.ckpt} does not record its training data (an EMA file, or a run without "
                         f"a CLEVRDataModule): pass --trained-counts (e.g. 1-3) and --label-mode "
                         f"({' | '.join(LABEL_MODES)})")
    return parse_counts(counts), label_mode


def build_parser() -> CommandParser:
    from lcsbench.data.conditioning import LABEL_MODES
    from lcsbench.diffusion.sampler import PAPER_HEUN_STEPS

    parser = command_parser("lengthgen", __doc__)
    parser.add_argument("--ckpt", required=True, help="model checkpoint from `fit` (or an EMA file, a closed-form "
                                                      "spec)")
    parser.add_argument("--judge", default=None, help="judge checkpoint (fit --config configs/judge.yaml); default: "
                                                      "the judge shipped for the model's resolution")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--samples-per-k", type=int, default=32, help="samples per k (the paper: 8)")
    parser.add_argument("--conditioning", choices=("location", "color"), default=None,
                        help="the protocol to run (default: the checkpoint's); a mismatch is an error")
    parser.add_argument("--ks", default=None, help="numbers of requested objects, e.g. 1-12 (default: location "
                                                   "1-12, color 1-8)")
    parser.add_argument("--order", choices=("paper", "random"), default="paper",
                        help="location requests: the paper's order (prefixes) or random k-subsets")
    parser.add_argument("--tolerance-cells", type=float, default=1.0, help="matching tolerance in grid cells")
    parser.add_argument("--match", choices=("cell", "point"), default="cell",
                        help="cell (the paper's): a detection matches when its centre lies within the "
                             "tolerance of the requested cell's centre along each axis, and the oracle places each "
                             "object at a random point of its cell; point: Euclidean distance to the requested "
                             "point, oracle objects exactly there")
    parser.add_argument("--trained-counts", default=None, help="training object counts (default: the checkpoint's)")
    parser.add_argument("--label-mode", choices=LABEL_MODES, default=None,
                        help="training label mode, which sets the success rule (default: the checkpoint's)")
    parser.add_argument("--steps", type=int, default=PAPER_HEUN_STEPS, help="Heun steps (the paper's)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per sampler and judge batch")
    parser.add_argument("--seed", type=int, default=0, help="noise, subset and oracle scene seed")
    parser.add_argument("--samples-per-pixel", type=int, default=64,
                        help="Cycles samples per pixel of the oracle's Blender renders")
    parser.add_argument("--no-oracle", action="store_true", help="skip the Blender oracle row")
    parser.add_argument("--name", default=None, help="row name in table.md (default: the checkpoint's run folder)")
    parser.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    add_precision_argument(parser)
    parser.deprecated_aliases(RENAMED)
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.samples_per_k < 1 or args.steps < 2 or args.batch_size < 1:
        raise SystemExit(f"lengthgen: need --samples-per-k >= 1, --steps >= 2, {parser.flag('--batch-size')} >= 1")
    if not (args.tolerance_cells > 0 and args.tolerance_cells < float("inf")):  # NaN fails this too
        raise SystemExit(f"lengthgen: --tolerance-cells is a positive number of grid cells (1 is the protocol's), "
                         f"got {args.tolerance_cells}")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    from lcsbench.analysis import lengthgen as lg
    from lcsbench.checkpoints import read_checkpoint
    from lcsbench.data.render import RenderError
    from lcsbench.data.shards import ShardError

    device = check_device(args.device or default_device())
    check_output_dir(args.out)  # before loading, sampling or rendering anything
    model, judge = load_model_and_judge(args, device)
    denoiser = model.denoiser
    payload = read_checkpoint(args.ckpt, "pass the checkpoint written by `python -m lcsbench fit`")
    trained_counts, label_mode = training_setup(payload, args)
    del payload
    try:  # the grid recorded is the model's own setting also for a colour model (lengthgen.json's grid_size)
        protocol = lg.LengthGenProtocol(lg.SuccessRule(denoiser.conditioning, trained_counts, label_mode),
                                        parse_ks(args.ks) if args.ks else None, args.samples_per_k, args.order,
                                        args.match, args.tolerance_cells, model.grid_size, args.steps, args.seed)
    except ValueError as error:
        raise SystemExit(f"lengthgen: {error}") from None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meter = Progress("lengthgen sampling", len(protocol.ks) * args.samples_per_k)
    try:  # the oracle row first: an --out rendered with other settings is refused before any sampling
        result = lg.run(denoiser, judge, protocol, oracle_root=None if args.no_oracle else out / "oracle_render",
                        oracle_samples=args.samples_per_pixel, samples_file=out / "samples.npz",
                        samples_key=samples_key(args), record={"ckpt": str(args.ckpt), "judge": judge.identity["path"],
                                                               "judge_sha256": judge.identity["sha256"],
                                                               "steps": args.steps, "precision": args.precision,
                                "seed": args.seed,
                                "oracle_samples": None if args.no_oracle else args.samples_per_pixel},
                        batch=args.batch_size, device=device, progress=lambda done, total: meter.update(done),
                        log=lambda line: print(f"lengthgen: {line}", file=sys.stderr))
    except RenderError as error:
        raise SystemExit(f"lengthgen: the oracle row: {error}") from None
    except ShardError as error:
        raise SystemExit(f"lengthgen: {error}") from None
    write_outputs(out, args, result)
    return 0


def samples_key(args: argparse.Namespace) -> dict:
    """What identifies the samples of samples.npz besides the protocol: the checkpoint's hash, and bf16 where the
    network ran so (fp32 samples, written before --precision existed, keep their key)."""
    from lcsbench.data.shards import file_sha256

    key = {"ckpt_sha256": file_sha256(Path(args.ckpt))}
    return {**key, "precision": "bf16"} if args.precision == "bf16" else key


def load_model_and_judge(args: argparse.Namespace, device: str):
    """The model (EMA weights) and the judge (--judge, or the one shipped for the model's resolution) on `device`,
    checked: the model's conditioning is --conditioning's, the judge's resolution the model's."""
    from lcsbench.models.loaders import load_denoiser
    from lcsbench.models.judge import load_judge

    try:
        model = apply_precision(load_denoiser(args.ckpt, ema=True, map_location=device), args.precision).to(device)
        judge = load_judge(args.judge, map_location=device,
                           resolution=model.denoiser.image_shape[-1]).to(device)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"lengthgen: {error}") from None
    print(f"lengthgen: judge {judge.source}" + (" (shipped with lcsbench)" if args.judge is None else ""),
          file=sys.stderr)
    kind, resolution = model.denoiser.conditioning, model.denoiser.image_shape[-1]
    if args.conditioning is not None and args.conditioning != kind:
        raise SystemExit(f"lengthgen: the {args.conditioning} protocol was asked for but {args.ckpt} is a "
                         f"{kind}-conditioned model: drop --conditioning or pass --conditioning {kind}")
    if judge.resolution != resolution:
        raise SystemExit(f"lengthgen: the judge {judge.source} was trained on {judge.resolution}x{judge.resolution} "
                         f"images but the model draws {resolution}x{resolution}: train a judge at {resolution} "
                         f"(configs/judge.yaml with data rendered at --resolution {resolution})")
    return model, judge


def write_outputs(out: Path, args: argparse.Namespace, result) -> None:
    """lengthgen.json, the figures and table.md of a study's result, and its rows in one line each."""
    from lcsbench.analysis import lengthgen as lg

    report = result.report
    (out / "lengthgen.json").write_text(json.dumps(report, indent=2))
    lg.save_figures(result, out, title=f"{result.protocol.kind} length generalization")
    name = args.name or Path(args.ckpt).resolve().parent.parent.name
    (out / "table.md").write_text(f"{lg.TABLE_HEADER}\n{lg.table_row(name, report)}\n")
    for row_name, row in report["rows"].items():
        rates = " ".join(f"{k}:{v['success_rate']:.0%}" for k, v in row["per_k"].items())
        print(f"lengthgen: {row_name:6s} k_max {row['k_max']} (strict {row['k_max_strict']})  {rates}")
    print(f"lengthgen: wrote {out / 'lengthgen.json'}, lengthgen.png, sample grids, table.md and samples.npz")
