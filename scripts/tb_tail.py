"""Print the latest value of TensorBoard scalars of a run folder (for polling long background fits).

    python scripts/tb_tail.py runs/reproduction/cpu/exp1/lightning_logs/run [TAG_PREFIX ...]
"""

from __future__ import annotations

import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def main() -> None:
    folder, prefixes = sys.argv[1], sys.argv[2:] or [""]
    events = EventAccumulator(folder, size_guidance={"scalars": 0})
    events.Reload()
    for tag in sorted(events.Tags()["scalars"]):
        if any(tag.startswith(p) for p in prefixes):
            last = events.Scalars(tag)[-1]
            print(f"{tag:32s} step {last.step:6d}  {last.value:.4f}")


if __name__ == "__main__":
    main()
