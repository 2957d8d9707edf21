"""Lines Lightning and its dependencies print into every fit's log that say nothing about the run (issue 35 item 4).

`quiet_lightning_noise()` filters them where lcsbench configures Lightning (commands/trainer.py calls it before
the Trainer is built), each filter with its reason beside it, so that a fit's log holds lcsbench's lines and the
real warnings only. It filters by exact message, never by category or module, so any other warning from the same
place still shows. Calling it again changes nothing. It lives here, beside progress.py, as lcsbench's other
Lightning output plumbing; it imports only the standard library.
"""

from __future__ import annotations

import logging
import re
import warnings

# Lightning's rank-zero log lines (rank_zero_info) come from one of these loggers: each of its packages (unified
# and standalone) sets its own as lightning_utilities' rank_zero `log` when imported, and the last import wins.
RANK_ZERO_LOGGERS = tuple(f"{package}.utilities.rank_zero" for package in
                          ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric"))

# Lightning >= 2.6 logs this "Tip" on every Trainer without a LitLogger (trainer/connectors/logger_connector): an
# advertisement for a hosted service, not information about the run.
LITLOGGER_TIP = re.compile(r"Tip: .*litlogger", re.IGNORECASE)

# torch >= 2.10 deprecates its pytree `LeafSpec` with a FutureWarning when one is built, and Lightning 2.6's own
# utilities/_pytree.py builds one for every batch it moves: upstream noise that a user can neither act on nor
# fix (it goes when Lightning stops using LeafSpec).
LEAFSPEC_DEPRECATION = r"`isinstance\(treespec, LeafSpec\)` is deprecated"


class DropMessages(logging.Filter):
    """Drops log records whose message matches `pattern`; every other record passes."""

    def __init__(self, pattern: re.Pattern) -> None:
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        return self.pattern.search(record.getMessage()) is None


def quiet_lightning_noise() -> None:
    """Filter Lightning's litlogger advertisement and torch's LeafSpec deprecation (module docstring)."""
    for name in RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropMessages) and f.pattern is LITLOGGER_TIP for f in logger.filters):
            logger.addFilter(DropMessages(LITLOGGER_TIP))
    warnings.filterwarnings("ignore", message=LEAFSPEC_DEPRECATION, category=FutureWarning)
