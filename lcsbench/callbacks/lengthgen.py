"""`LengthGenCurve`: a small length-generalization protocol during training (paper Table 1, App. E.2; issue 6).

Every `every_n_steps` optimizer steps, on global rank 0 only, with the EMA weights (when a PowerFunctionEMA
callback is present) and the module in eval mode (callbacks/base.py decides when): samples `samples_per_k`
images for each k, judges them with a trained judge (models/judge.py) and logs to TensorBoard
`lengthgen/success@k=K` (fraction of the k-object requests drawn right), `lengthgen/k_max` and
`lengthgen/k_max_strict` (the largest k succeeding more than 25% / 50% of the time, App. E.2), the success-vs-k
figure `lengthgen/curve` and the text card `lengthgen/about`. No oracle row here (no Blender during training):
`python -m lcsbench lengthgen` gives the full report. Nothing in the rank-0 branch communicates across ranks (no
`self.log`, no barrier), so the other ranks carry on.

The success rule follows the training data: the DataModule's `counts` and `label_mode` unless given.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch

from lcsbench.analysis import lengthgen as lg
from lcsbench.callbacks.base import EveryNSteps, tensorboard_writer
from lcsbench.diffusion.sampler import PAPER_HEUN_STEPS


class LengthGenCurve(EveryNSteps):
    """Logs the length-generalization curve of the EMA model every N steps (module docstring)."""

    ABOUT = ("Whether the model composes: the success rate of samples asked for k objects (k beyond the trained "
             "counts included), judged by a trained object judge, against k; k_max is the largest k that succeeds "
             "more than 25% of the time (paper Figure 1 and Table 1, App. E.2).")
    CARD_TAG = "lengthgen/about"

    def __init__(
        self,
        judge: str | None = None,  # judge checkpoint at the model's resolution; None: the shipped one
        every_n_steps: int = 5000,  # optimizer steps between evaluations
        ks: Sequence[int] | None = None,  # requested object counts; default 1..12 (location) / 1..8 (colour)
        samples_per_k: int = 4,  # samples per k (the paper counts 8 by eye)
        num_steps: int = PAPER_HEUN_STEPS // 2,  # Heun steps (fewer than the paper's keep training fast)
        trained_counts: Sequence[int] | None = None,  # training object counts; default: the DataModule's
        label_mode: str | None = None,  # all | single | random | drop_one; default: the DataModule's
        tolerance_cells: float = 1.0,  # matching tolerance in grid cells
        match: str = "cell",  # cell (the paper's: the requested grid cell) | point (analysis/lengthgen)
        seed: int = 0,  # noise seed (the same noise every evaluation, so curves compare over training)
    ) -> None:
        if every_n_steps < 1 or samples_per_k < 1 or num_steps < 2:
            raise ValueError(f"need every_n_steps >= 1, samples_per_k >= 1, num_steps >= 2; got {every_n_steps}, "
                             f"{samples_per_k}, {num_steps}")
        lg.check_tolerance(tolerance_cells)
        self.match = lg.check_match_rule(match)
        super().__init__(every_n_steps)
        self.judge_path, self.ks = judge, list(ks) if ks else None
        self.samples_per_k, self.num_steps = samples_per_k, num_steps
        self.tolerance_cells, self.seed = tolerance_cells, seed
        self.trained_counts, self.label_mode = trained_counts, label_mode
        self._judge = None
        self.last_report: dict | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Check the judge against the model now rather than after hours of training (every rank)."""
        from lcsbench.models.judge import load_judge

        resolution = pl_module.denoiser.image_shape[-1]
        self._judge = load_judge(self.judge_path, resolution=resolution)
        if self._judge.resolution != resolution:
            raise ValueError(f"LengthGenCurve: the judge {self._judge.source} was trained on "
                             f"{self._judge.resolution}px images but the model draws {resolution}px: train a judge "
                             f"at {resolution}")
        data = getattr(trainer, "datamodule", None)
        counts = self.trained_counts or getattr(data, "counts", None)
        label_mode = self.label_mode or getattr(data, "label_mode", None)
        if counts is None or label_mode is None:
            raise ValueError("LengthGenCurve: pass trained_counts and label_mode "
                             "(no CLEVRDataModule to read them from)")
        self.rule = lg.SuccessRule(pl_module.denoiser.conditioning, tuple(counts), label_mode)  # the model's kind
        self.protocol = lg.LengthGenProtocol(self.rule, self.ks, self.samples_per_k, match=self.match,
                                             tolerance_cells=self.tolerance_cells, num_steps=self.num_steps,
                                             seed=self.seed)
        self.ks = list(self.protocol.ks)

    def analyse(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, writer) -> None:
        self.evaluate(trainer, pl_module, trainer.global_step)

    @torch.no_grad()
    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> dict:
        """Sample, judge and log the protocol at `step` with the module's current weights (`analyse` calls it
        inside `ema_weights` and `eval_mode`); returns the report, also kept as `last_report`."""
        result = lg.run(pl_module.denoiser, self._judge.to(pl_module.device), self.protocol,
                        device=pl_module.device)  # grid size and kind: the denoiser's
        report = result.report
        self.last_report = report
        writer = tensorboard_writer(trainer)
        if writer is not None:
            row = report["rows"]["model"]
            for k, values in row["per_k"].items():
                writer.add_scalar(f"lengthgen/success@k={k}", values["success_rate"], step)
            writer.add_scalar("lengthgen/k_max", row["k_max"], step)
            writer.add_scalar("lengthgen/k_max_strict", row["k_max_strict"], step)
            trained = ", ".join(str(k) for k in self.rule.trained_counts)
            title = (f"Table 1 at step {step}: success rate vs requested k\n"
                     f"{self.samples_per_k} samples per k; trained on k = {trained}")
            writer.add_figure("lengthgen/curve", lg.plot_success_curves(report, title=title), step, close=True)
        return report

    def settings(self) -> dict[str, object]:
        judge = self._judge.source if self._judge is not None else (self.judge_path or "shipped")
        return {"judge": judge, "k": self.ks, "samples per k": self.samples_per_k, "Heun steps": self.num_steps,
                "match": f"{self.match} within {self.tolerance_cells:g} cells"}
