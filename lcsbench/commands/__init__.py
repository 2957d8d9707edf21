"""One module per `python -m lcsbench` subcommand: argparse and printing only (docs/architecture.md, "The layers
and their rule").

Each module exposes `main(argv: list[str]) -> int`; `lcsbench/cli.py` maps command names to them. Helpers that
several commands share live in `_common.py`; a command never imports from a sibling command.
"""
