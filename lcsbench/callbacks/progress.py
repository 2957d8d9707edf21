"""Training progress that reads well in a log file and on a terminal (issue 27).

`ProgressLines` prints one line every `every_seconds` (and after the first and the last step) with the optimizer
step, the total, the rate and the time left, e.g.

    lcsbench fit: step 120/600 (20%), 2.13 steps/s, ETA 0:03:45, elapsed 0:00:56, loss 0.412

and one line after each validation (its duration and val/loss), so a fit whose output goes to a file (a background job, SLURM) shows where it is; `lcsbench fit` uses it in place
of Lightning's bar when stdout is not a terminal. `StepsRichProgressBar` is Lightning's Rich bar whose epoch label
names the steps it covers out of the fit's total, where the stock bar shows "Epoch 2/-2" for a fit bounded by
`max_steps` (max_epochs -1).
"""

from __future__ import annotations

import math
import sys
import time

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.utilities import rank_zero_only

from lcsbench.timefmt import duration


def total_steps(trainer: L.Trainer) -> int | None:
    """The optimizer steps the fit will have run at its end (max_steps, or epochs x batches), None if unbounded."""
    if trainer.max_steps is not None and trainer.max_steps > 0:
        return trainer.max_steps
    try:
        total = trainer.estimated_stepping_batches
    except Exception:  # noqa: BLE001 - an unsized loader: no total to show
        return None
    return int(total) if math.isfinite(total) else None


def progress_line(step: int, total: int | None, rate: float | None, elapsed: float, metrics: dict) -> str:
    """`step S/T (P%), R steps/s, ETA h:mm:ss, elapsed h:mm:ss, <metrics>`: the rate is None before any step."""
    parts = [f"step {step}/{total} ({100 * step / total:.0f}%)" if total else f"step {step}"]
    if rate:
        parts.append(f"{rate:.3g} steps/s" if rate >= 1 else f"{1 / rate:.3g} s/step")
        if total:
            parts.append(f"ETA {duration((total - step) / rate)}")
    parts.append(f"elapsed {duration(elapsed)}")
    parts += [f"{name} {value:.4g}" for name, value in metrics.items()]
    return ", ".join(parts)


class ProgressLines(L.Callback):
    """Prints a progress line (step, total, rate, ETA, the progress-bar metrics) every `every_seconds` on rank 0."""

    def __init__(
        self,
        every_seconds: float = 30.0,  # seconds between lines (the first step and the last always print)
        prefix: str = "lcsbench fit: ",  # what each line starts with
    ):
        super().__init__()
        if not every_seconds > 0:
            raise ValueError(f"ProgressLines needs every_seconds > 0; found {every_seconds}")
        self.every_seconds, self.prefix = every_seconds, prefix
        self._start = self._last_print = 0.0
        self._start_step = 0
        self._last_step = -1
        self._validation_start = 0.0
        self._reported_step = -1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = self._last_print = time.perf_counter()
        self._start_step = trainer.global_step  # a resumed fit's rate counts this fit's steps only
        self._last_step = trainer.global_step
        total = total_steps(trainer)
        self.say(f"training from step {trainer.global_step} to {total if total else 'no step limit'}; a progress "
                 f"line every {self.every_seconds:g} s")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
                           ) -> None:
        step = trainer.global_step
        if step == self._last_step:  # gradient accumulation: batches of one optimizer step
            return
        self._last_step = step
        now = time.perf_counter()
        total = total_steps(trainer)
        if step - self._start_step == 1 or now - self._last_print >= self.every_seconds or step == total:
            self._last_print = now
            self.report(trainer, now)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._validation_start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k == "val/loss"}
        extra = "".join(f", {k} {v:.4g}" for k, v in metrics.items())
        self.say(f"validation at step {trainer.global_step} took "
                 f"{duration(time.perf_counter() - self._validation_start)}{extra}")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step != self._reported_step:  # a fit stopped between lines (max_time, an error)
            self.report(trainer, time.perf_counter())

    def report(self, trainer: L.Trainer, now: float) -> None:
        self._reported_step = trainer.global_step
        done = trainer.global_step - self._start_step
        elapsed = now - self._start
        rate = done / elapsed if done > 0 and elapsed > 0 else None
        metrics = {}
        for name, value in trainer.progress_bar_metrics.items():
            try:
                metrics[name] = float(value)
            except (TypeError, ValueError):
                continue
        self.say(progress_line(trainer.global_step, total_steps(trainer), rate, elapsed, metrics))

    @rank_zero_only
    def say(self, text: str) -> None:
        print(f"{self.prefix}{text}", file=sys.stdout, flush=True)


class StepsRichProgressBar(RichProgressBar):
    """Lightning's Rich bar labelled "Epoch E (steps A-B of T)" instead of "Epoch E/-2" for a step-bounded fit."""

    def _get_train_description(self, current_epoch: int) -> str:
        trainer = self.trainer
        per_epoch, total = trainer.num_training_batches, total_steps(trainer)
        if not total or not isinstance(per_epoch, int) or per_epoch < 1:
            return super()._get_train_description(current_epoch)
        first = trainer.global_step  # the label is made when the epoch starts
        last = min(total, first + max(1, per_epoch // trainer.accumulate_grad_batches))
        return f"Epoch {current_epoch} (steps {first}-{last} of {total})"
