"""`python -m lcsbench import-clevr`: convert CLEVR renders (clevr-dataset-gen output or CLEVR v1.0) into lcsbench
shards (data/import_clevr.py): centre square crop, resize, pixel_coords rescaled, grouped by object count.

Examples:

    python -m lcsbench import-clevr --images CLEVR_v1.0/images/train \\
        --scenes CLEVR_v1.0/scenes/CLEVR_train_scenes.json --out data/clevr_v1_64 --resolution 64
    python -m lcsbench import-clevr --images clevr-gen/images --scenes clevr-gen/scenes --out data/gen64 --limit 100

Repeat --images/--scenes to import several splits (each scene's 'split' field is kept).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lcsbench.commands._common import CommandParser, command_parser
from lcsbench.data.import_clevr import import_clevr


def build_parser() -> CommandParser:
    parser = command_parser("import-clevr", __doc__)
    parser.add_argument("--images", action="append", required=True, help="folder of the CLEVR images")
    parser.add_argument("--scenes", action="append", required=True,
                        help="CLEVR scenes file ({'scenes': [...]}) or folder of per-image scene JSON")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (must not hold a dataset yet)")
    parser.add_argument("--resolution", type=int, default=64, help="square image size in pixels")
    parser.add_argument("--shard-size", type=int, default=1000, help="images per shard")
    parser.add_argument("--limit", type=int, default=None, help="convert at most this many scenes per source")
    return parser


def main(argv: list[str]) -> int:
    parser = build_parser()
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
