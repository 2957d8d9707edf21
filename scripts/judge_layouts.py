"""Write the protocol's own layouts as a `render --layout` file, for the judge's training stream (issue 14).

The length-generalization protocol (analysis/lengthgen/protocol.py) asks for k of the paper's 12 locations; its oracle
row renders exactly those layouts (small objects, other attributes random). A judge trained only on random
CLEVR scenes sees the far-back paper locations rarely; mixing renders of random k-subsets of the paper's
locations into its training stream (`CLEVRDataModule(extra_train=[...])`) closes that gap.

    python scripts/judge_layouts.py --ks 1-12 --per-k 100 --seed 5 --out data/judge_layouts.json
    python -m lcsbench render --layout data/judge_layouts.json --out data/judge64_layouts --resolution 64 --seed 5

Positions are written as image fractions, so one file serves every resolution. Use a seed other than the
evaluation's (lengthgen --seed, 0 by default) so the judge never trains on the exact evaluation layouts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lcsbench.analysis.lengthgen import protocol_requests
from lcsbench.data.scenes import parse_counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ks", default="1-12", help="numbers of requested locations, e.g. 1-12")
    parser.add_argument("--per-k", type=int, default=100, help="layouts per k")
    parser.add_argument("--seed", type=int, default=5, help="seed of the random k-subsets (not the evaluation's)")
    parser.add_argument("--out", required=True, help="layout JSON to write")
    args = parser.parse_args()
    if args.per_k < 1:
        parser.error(f"--per-k must be >= 1, got {args.per_k}")
    requests = protocol_requests("location", parse_counts(args.ks), args.per_k, order="random", seed=args.seed)
    scenes = [[{"frac": [x, y], "size": "small"} for x, y in request["locations"]] for request in requests]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"scenes": scenes}))
    print(f"{len(scenes)} layouts (k = {args.ks}, {args.per_k} each, seed {args.seed}) -> {args.out}")


if __name__ == "__main__":
    main()
