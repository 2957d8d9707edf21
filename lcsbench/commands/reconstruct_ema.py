"""`python -m lcsbench reconstruct-ema`: the power-function EMA for any sigma_rel after training (EDM2 Alg. 3).

    python -m lcsbench reconstruct-ema --snapshots runs/exp1/lightning_logs/version_0/phema --sigma-rel 0.075 \\
        --out runs/exp1/ema-0.075.pt
    python -m lcsbench sample --ckpt runs/exp1/ema-0.075.pt --locations paper:4 --out four.png

Reads the fp16 snapshots the PowerFunctionEMA callback wrote (phema-<step>-<sigma_rel>.pt), solves for the
least-squares combination of their averaging profiles that best matches the target profile at the target step
(default: the last snapshot's), and writes the combined weights as a file every lcsbench command accepts as --ckpt.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lcsbench.commands._common import snapshot_step


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m lcsbench reconstruct-ema", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--snapshots", required=True, help="folder of phema-*.pt snapshots (<log_dir>/phema)")
    parser.add_argument("--sigma-rel", type=float, required=True, help="target relative EMA width, in (0, 0.289)")
    parser.add_argument("--step", type=int, default=None, help="target step (default: the last snapshot's)")
    parser.add_argument("--out", required=True, help="output .pt file")
    args = parser.parse_args(argv)

    import torch

    from lcsbench.diffusion.phema import sigma_rel_to_gamma, solve_posthoc_coefficients, weighted_state_sum
    from lcsbench.checkpoints import ARCH_KEY, RECONSTRUCTION_KIND, read_checkpoint

    try:
        target_gamma = sigma_rel_to_gamma(args.sigma_rel)
    except ValueError as error:
        raise SystemExit(f"reconstruct-ema: {error}") from None
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

    headers = []
    for path, _ in usable:  # read the small fields first; weights are streamed in the sum below
        payload = read_checkpoint(path, "a snapshot vanished while reading: rerun")
        headers.append((path, payload["step"], payload["gamma"]))
        description = payload.get(ARCH_KEY)
        del payload
    coefficients = solve_posthoc_coefficients([h[1] for h in headers], [h[2] for h in headers],
                                              [target_step], [target_gamma])[:, 0]
    used_steps = sorted({h[1] for h in headers})
    print(f"reconstruct-ema: sigma_rel {args.sigma_rel} (gamma {target_gamma:.3f}) at step {target_step} from "
          f"{len(headers)} snapshots at {len(used_steps)} steps ({used_steps[0]}..{used_steps[-1]}) in "
          f"{args.snapshots}; coefficients in [{coefficients.min():.3f}, {coefficients.max():.3f}]", file=sys.stderr)
    spacing = min((b - a for a, b in zip(used_steps, used_steps[1:])), default=used_steps[0])
    if used_steps[0] > spacing:  # snapshots every `spacing` steps, yet none in the run's first `spacing` steps
        print(f"reconstruct-ema: warning: the first snapshot is at step {used_steps[0]} though they are {spacing} "
              f"steps apart: the earlier ones are missing from {args.snapshots} (a fit resumed by lcsbench before "
              f"resumed runs kept their folder wrote its snapshots into a new version_N: copy the earlier "
              f"version's phema-*.pt here)", file=sys.stderr)
    states = (read_checkpoint(path, "a snapshot vanished while reading: rerun")["net_state"] for path, _, _ in headers)
    combined = weighted_state_sum(states, coefficients)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"kind": RECONSTRUCTION_KIND, "step": target_step, "sigma_rel": args.sigma_rel,
                "gamma": target_gamma, "net_state": combined, ARCH_KEY: description,
                "sources": [str(h[0]) for h in headers], "coefficients": coefficients.tolist()}, out)
    print(f"reconstruct-ema: wrote {out}")
    return 0
