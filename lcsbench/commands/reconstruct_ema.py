"""`python -m lcsbench reconstruct-ema`: the power-function EMA for any sigma_rel after training (EDM2 Alg. 3).

Examples:

    python -m lcsbench reconstruct-ema --snapshots runs/exp1/lightning_logs/version_0/phema --sigma-rel 0.075 \\
        --out runs/exp1/ema-0.075.pt
    python -m lcsbench sample --ckpt runs/exp1/ema-0.075.pt --locations paper:4 --out four.png

Reads the fp16 snapshots the PowerFunctionEMA callback wrote (phema-<step>-<sigma_rel>.pt), solves for the
least-squares combination of their averaging profiles that best matches the target profile at the target step
(default: the last snapshot's), and writes the combined weights as a file every lcsbench command accepts as --ckpt.
"""

from __future__ import annotations

import sys
from pathlib import Path

from lcsbench.commands._common import CommandParser, check_output_file, command_parser


def build_parser() -> CommandParser:
    parser = command_parser("reconstruct-ema", __doc__)
    parser.add_argument("--snapshots", required=True, help="folder of phema-*.pt snapshots (<log_dir>/phema)")
    parser.add_argument("--sigma-rel", type=float, required=True, help="target relative EMA width, in (0, 0.289)")
    parser.add_argument("--step", type=int, default=None, help="target step (default: the last snapshot's)")
    parser.add_argument("--out", required=True, metavar="FILE", help="the .pt file to write (every command takes it as --ckpt)")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)

    from lcsbench.checkpoints import read_checkpoint, snapshot_step, write_reconstruction
    from lcsbench.diffusion.phema import sigma_rel_to_gamma, solve_posthoc_coefficients, weighted_state_sum

    try:
        target_gamma = sigma_rel_to_gamma(args.sigma_rel)
    except ValueError as error:
        raise SystemExit(f"reconstruct-ema: {error}") from None
    out = check_output_file(args.out)
    files = sorted(p for p in Path(args.snapshots).glob("phema-*.pt") if snapshot_step(p) is not None)
    if not files:
        raise SystemExit(f"reconstruct-ema: no phema-<step>-<sigma_rel>.pt snapshots in {args.snapshots}: train with "
                         f"PowerFunctionEMA(snapshot_every_n_steps=N) (configs set it) and pass its <log_dir>/phema")
    steps = [snapshot_step(p) for p in files]
    target_step = args.step if args.step is not None else max(steps)
    if target_step > max(steps):
        raise SystemExit(f"reconstruct-ema: --step {target_step} lies beyond the last snapshot (step {max(steps)}): "
                         f"the average at a step needs the training up to it; pass --step <= {max(steps)}")
    usable = [(p, s) for p, s in zip(files, steps) if s <= target_step]
    if not usable:
        raise SystemExit(f"reconstruct-ema: no snapshot at or before step {target_step} (first: {min(steps)})")

    headers = [snapshot_header(path, step) for path, step in usable]  # small fields; weights are streamed below
    check_one_run(headers, args.snapshots)
    description = headers[-1]["architecture"]
    coefficients = solve_posthoc_coefficients([h["step"] for h in headers], [h["gamma"] for h in headers],
                                              [target_step], [target_gamma])[:, 0]
    used_steps = sorted({h["step"] for h in headers})
    print(f"reconstruct-ema: sigma_rel {args.sigma_rel} (gamma {target_gamma:.3f}) at step {target_step} from "
          f"{len(headers)} snapshots at {len(used_steps)} steps ({used_steps[0]}..{used_steps[-1]}) in "
          f"{args.snapshots}; coefficients in [{coefficients.min():.3f}, {coefficients.max():.3f}]", file=sys.stderr)
    spacing = min((b - a for a, b in zip(used_steps, used_steps[1:])), default=used_steps[0])
    if used_steps[0] > spacing:  # snapshots every `spacing` steps, yet none in the run's first `spacing` steps
        print(f"reconstruct-ema: warning: the first snapshot is at step {used_steps[0]} though they are {spacing} "
              f"steps apart: the earlier ones are missing from {args.snapshots}. A fit resumed by an lcsbench "
              f"older than run folders wrote its later snapshots into a new version_N: copy the earlier snapshots "
              f"of the same run here (snapshots of another run are refused)", file=sys.stderr)
    states = (read_checkpoint(h["path"], "a snapshot vanished while reading: rerun")["net_state"] for h in headers)
    combined = weighted_state_sum(states, coefficients)
    write_reconstruction(out, target_step, args.sigma_rel, target_gamma, combined, description, headers[-1]["run_id"],
                         [str(h["path"]) for h in headers], coefficients.tolist())
    print(f"reconstruct-ema: wrote {out}")
    return 0


def snapshot_header(path: Path, step: int) -> dict:
    """The small fields of one snapshot (its tensors stay on disk), checked: a SystemExit names a file that is
    not a PowerFunctionEMA snapshot or disagrees with its own name."""
    from lcsbench.checkpoints import ARCH_KEY, SNAPSHOT_KIND, read_checkpoint

    try:
        payload = read_checkpoint(path, "a snapshot vanished while reading: rerun", mmap=True)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"reconstruct-ema: {error}") from None
    gamma = payload.get("gamma")
    if payload.get("kind") != SNAPSHOT_KIND or payload.get("step") != step or not isinstance(gamma, (int, float)) \
            or not isinstance(payload.get("net_state"), dict):
        raise SystemExit(f"reconstruct-ema: {path} is not a PowerFunctionEMA snapshot of step {step} (kind "
                         f"{payload.get('kind')!r}, step {payload.get('step')!r}, gamma {gamma!r}): move it out of "
                         f"the snapshot folder")
    return {"path": path, "step": step, "gamma": float(gamma), "run_id": payload.get("run_id"),
            "architecture": payload.get(ARCH_KEY)}


def check_one_run(headers: list[dict], folder: str) -> None:
    """SystemExit when the snapshots come from more than one training run (their run ids, or for snapshots older
    than run ids their architecture records, differ): a post-hoc EMA averages one trajectory."""
    runs: dict[str, list[dict]] = {}
    for header in headers:
        runs.setdefault(str(header["run_id"]), []).append(header)
    records = {repr((h["architecture"] or {}).get("net_class")) + repr((h["architecture"] or {}).get("net_config"))
               for h in headers}  # the network only: a resume may change training hyperparameters (e.g. lr)
    if len(runs) == 1 and len(records) == 1:
        return
    if len(runs) > 1:
        listed = "; ".join(f"run {run if run != 'None' else '(no id: before run ids)'}: {len(group)} snapshots, "
                           f"steps {group[0]['step']}..{group[-1]['step']}, e.g. {group[0]['path'].name}"
                           for run, group in runs.items())
    else:
        listed = f"{len(records)} different networks in their architecture records"
    raise SystemExit(f"reconstruct-ema: {folder} mixes snapshots of more than one training run ({listed}): a post-hoc "
                     f"EMA averages one run's trajectory; keep only one run's phema-*.pt in the folder")
