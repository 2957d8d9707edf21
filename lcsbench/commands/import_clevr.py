"""`python -m lcsbench import-clevr`: official CLEVR renders -> lcsbench's shard format (data/import_clevr.py)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lcsbench.data.import_clevr import import_clevr


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lcsbench import-clevr",
        description="Convert CLEVR renders (clevr-dataset-gen output or CLEVR v1.0) into lcsbench shards: "
                    "centre square crop, resize, pixel_coords rescaled, grouped by object count. Repeat "
                    "--images/--scenes to import several splits (each scene's 'split' field is kept).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--images", action="append", required=True, help="folder of the CLEVR images")
    parser.add_argument("--scenes", action="append", required=True,
                        help="CLEVR scenes file ({'scenes': [...]}) or folder of per-image scene JSON")
    parser.add_argument("--out", required=True, help="output directory (must not hold a dataset yet)")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--limit", type=int, default=None, help="convert at most this many scenes per source")
    args = parser.parse_args(argv)
    if len(args.images) != len(args.scenes):
        parser.error(f"give one --scenes per --images (got {len(args.images)} --images, {len(args.scenes)} --scenes)")
    try:
        manifest = import_clevr([(Path(i), Path(s)) for i, s in zip(args.images, args.scenes)], Path(args.out),
                                resolution=args.resolution, shard_size=args.shard_size, limit=args.limit)
    except (FileNotFoundError, FileExistsError, ValueError, KeyError, OSError) as error:
        print(f"lcsbench import-clevr: error: {error}", file=sys.stderr)
        return 1
    print(json.dumps({"out": args.out, "images": manifest["images"], "totals": manifest["totals"],
                      "dropped_objects_outside_crop": manifest["dropped_objects_outside_crop"]}, indent=2))
    return 0
