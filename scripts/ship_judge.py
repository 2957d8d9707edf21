"""Ship a trained judge inside the package: lcsbench/weights/judge-<resolution>.pt (plain data: architecture
record, weights, recipe and measured accuracy), which `load_judge(resolution=R)` then loads with no path.

    python scripts/ship_judge.py --judge runs/judge32/lightning_logs/version_0/checkpoints/last.ckpt \\
        --render "python -m lcsbench render --out data/judge32 ..." --fit "python -m lcsbench fit ..." \\
        --accuracy reports/judge32/heldout.json [--accuracy-oracle reports/judge32/oracle/lengthgen.json] \\
        [--accuracy-degraded reports/judge32/heldout_degraded.json --degradation 1.0,0.05,0.03]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from lcsbench import __version__
from lcsbench.checkpoints import read_checkpoint
from lcsbench.models.judge import SHIPPED_JUDGE, load_judge, ship_judge


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--judge", required=True, help="the judge's Lightning checkpoint (last.ckpt)")
    parser.add_argument("--render", required=True, help="the render command of its training data")
    parser.add_argument("--fit", required=True, help="the fit command that trained it")
    parser.add_argument("--accuracy", required=True, help="`eval-judge --json` output on held-out renders")
    parser.add_argument("--accuracy-oracle", default=None, help="`oracle-check` lengthgen.json (protocol layouts)")
    parser.add_argument("--accuracy-degraded", default=None, help="`eval-judge --degrade ... --json` output")
    parser.add_argument("--degradation", default=None, help="the --degrade levels of --accuracy-degraded")
    parser.add_argument("--notes", default="", help="anything a user should know about this judge")
    args = parser.parse_args(argv)

    judge = load_judge(args.judge)
    payload = read_checkpoint(args.judge, "pass the judge's last.ckpt")
    config = run_config(args.judge)

    def read(path: str) -> dict:
        return json.loads(Path(path).read_text())

    recipe = {"render": args.render, "fit": args.fit, "steps": int(payload.get("global_step", 0)),
              "seed": yaml.safe_load(config).get("seed_everything") if config else None,
              "config": config, "lcsbench": __version__,
              "resolution": judge.resolution, "accuracy_heldout": read(args.accuracy),
              "accuracy_oracle": read(args.accuracy_oracle)["rows"]["oracle"] if args.accuracy_oracle else None,
              "accuracy_degraded": {"levels": args.degradation, "table": read(args.accuracy_degraded)}
              if args.accuracy_degraded else None, "notes": args.notes}
    weights = Path(__file__).resolve().parents[1] / "lcsbench" / "weights"
    out = weights / SHIPPED_JUDGE.format(resolution=judge.resolution)
    ship_judge(args.judge, out, recipe)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")
    return 0


def run_config(checkpoint: str) -> str | None:
    """The config.yaml LightningCLI saved in the run folder of `checkpoint` (.../version_N/checkpoints/x.ckpt):
    every setting of the fit, its seed included; None when the checkpoint is not in a CLI run folder."""
    path = Path(checkpoint).resolve().parents[1] / "config.yaml"
    return path.read_text() if path.is_file() else None


if __name__ == "__main__":
    sys.exit(main())
