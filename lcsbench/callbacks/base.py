"""The one base of lcsbench's analysis callbacks: decide WHEN an analysis runs, and on which weights.

`EveryNSteps` runs its `analyse(trainer, pl_module, batch, writer)` hook every `every_n_steps` optimizer steps
(step > 0, not while sanity checking, once per optimizer step also with gradient accumulation), on global rank 0
only and only when a TensorBoard writer is there to log to, with the EMA weights swapped in (when an EMA callback
is present: the weights the paper analyses) and the module in eval mode. Nothing in the rank-0 branch
communicates across ranks (no `self.log`, no `sync_dist`, no barrier), so the other ranks simply carry on. Without
a TensorBoard logger the callback says so once, when the fit starts (a warning), and then does nothing.

Each analysis says what it shows: a subclass sets `ABOUT` (one sentence: what the analysis shows and which paper
figure it is) and `CARD_TAG`, and the callback writes them as a TensorBoard text card (TEXT tab) when the fit
starts, with the settings it runs with (`settings()`), so a reader of the run needs no documentation.

`tensorboard_writer`, `ema_weights` and `eval_mode` are the pieces, for callbacks that need them on their own.
A callback reads the conditioning kind and grid from the module's Denoiser (`pl_module.denoiser`), never from
the shapes of a batch.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn


def tensorboard_writer(trainer: L.Trainer):
    """The SummaryWriter of the first TensorBoard logger, or None."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


def add_text_card(writer, tag: str, text: str, step: int) -> None:
    """A TEXT-tab card (Markdown) under `tag` itself: SummaryWriter.add_text would file it under
    `tag + "/text_summary"`, so the summary it builds is renamed and written through the writer's own file writer."""
    from torch.utils.tensorboard.summary import text as text_summary

    summary = text_summary(tag, text)
    summary.value[0].tag = tag
    writer._get_file_writer().add_summary(summary, step)


@contextlib.contextmanager
def ema_weights(trainer: L.Trainer, pl_module: L.LightningModule) -> Iterator[None]:
    """Swap the EMA weights into the module for the duration, if an EMA callback offers them.

    Looks for a callback with a context manager `average_weights(pl_module)` (lcsbench's power-function EMA);
    without one, the current weights are used.
    """
    for callback in trainer.callbacks:
        swap = getattr(callback, "average_weights", None)
        if callable(swap):
            with swap(pl_module):
                yield
            return
    yield


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[None]:
    """The module in eval mode for the duration; its train/eval mode is restored afterwards."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


class EveryNSteps(L.Callback):
    """Calls `analyse` every `every_n_steps` optimizer steps on rank 0, on the EMA weights in eval mode."""

    ABOUT = ""  # one sentence for the text card: what the analysis shows, which paper figure it is
    CARD_TAG = ""  # the card's TensorBoard tag, e.g. "locality/about"; "" writes no card

    def __init__(
        self,
        every_n_steps: int,  # optimizer steps between analyses
    ):
        super().__init__()
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be a positive number of steps; found {every_n_steps}")
        self.every_n_steps = every_n_steps
        self._last_step = -1  # the optimizer step last analysed (batches of one step share global_step)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if tensorboard_writer(trainer) is None:
            rank_zero_warn(f"{type(self).__name__} logs to TensorBoard only and the trainer has no TensorBoardLogger "
                           f"(loggers: {[type(x).__name__ for x in trainer.loggers] or 'none'}), so it will do "
                           f"nothing: add trainer.logger: lightning.pytorch.loggers.TensorBoardLogger to the config")
        elif trainer.is_global_zero and self.CARD_TAG:
            ema = any(callable(getattr(callback, "average_weights", None)) for callback in trainer.callbacks)
            add_text_card(tensorboard_writer(trainer), self.CARD_TAG, self.card(ema), trainer.global_step)

    def card(self, ema: bool = True) -> str:
        """The text card (Markdown): `ABOUT`, then when it runs, on which weights, and its settings."""
        settings = ", ".join(f"{name} {value}" for name, value in self.settings().items())
        weights = "the EMA weights" if ema else "the raw weights (no EMA callback)"
        return f"{self.ABOUT}\n\nEvery {self.every_n_steps} optimizer steps, on {weights}" + (
            f"; {settings}." if settings else ".")

    def settings(self) -> dict[str, object]:
        """The analysis' settings a reader needs to read its numbers (name -> value), for the card."""
        return {}

    def due(self, trainer: L.Trainer) -> bool:
        step = trainer.global_step
        return (step > 0 and step % self.every_n_steps == 0 and step != self._last_step
                and not trainer.sanity_checking)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch: dict,
                           batch_idx: int) -> None:
        if not self.due(trainer):
            return
        self._last_step = trainer.global_step  # once per step, also with gradient accumulation
        if not trainer.is_global_zero:
            return
        writer = tensorboard_writer(trainer)
        if writer is None:
            return
        with ema_weights(trainer, pl_module), eval_mode(pl_module):
            self.analyse(trainer, pl_module, batch, writer)

    def analyse(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: dict, writer) -> None:
        """Run the analysis on `batch` and log it to `writer` at `trainer.global_step`."""
        raise NotImplementedError
