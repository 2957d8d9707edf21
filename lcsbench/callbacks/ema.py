"""Power-function EMA of the network during training (EDM2 Sec. 3.1), with snapshots for post-hoc reconstruction.

After every optimizer step t (1-based) each tracked average moves `theta_ema <- lerp(theta_ema, theta, 1 - beta)`,
`beta = (1 - 1/t)^(gamma + 1)`, one gamma per sigma_rel (0.05 and 0.10 by default, EDM2's pair). Parameters only;
buffers (the frozen Fourier features) are copied from the network when weights are read out.

DDP: every rank holds the same network after a step, so every rank updates its own copy identically and no
collective is needed; only global rank 0 writes snapshot files. The averages live in the callback's checkpoint
state (key "PowerFunctionEMA", checkpoints.EMA_STATE_KEY), so a resumed run continues them, and
`models.loaders.load_denoiser` reads them.

Snapshots (every `snapshot_every_n_steps` steps, fp16, self-describing) go to `<log_dir>/phema/`; from them
`python -m lcsbench reconstruct-ema` builds the average for any sigma_rel (Alg. 3). Each snapshot carries its
run's id (`run_id`: drawn when a fresh fit starts, kept in the checkpoint so a resumed fit keeps it), so that
`reconstruct-ema` refuses to mix the snapshots of two runs (issue 25 item 10). Runs begun before ids existed
keep `run_id: None`, also when resumed.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from lcsbench.checkpoints import EMA_STATE_KEY, write_snapshot
from lcsbench.diffusion.phema import ema_net_state, power_ema_beta, sigma_rel_to_gamma, tracked_index



class PowerFunctionEMA(L.Callback):
    """Tracks power-function EMAs of `pl_module.net`; `average_weights(pl_module)` swaps one in temporarily."""

    def __init__(
        self,
        sigma_rels: Sequence[float] = (0.05, 0.10),  # relative widths of the tracked averages
        snapshot_every_n_steps: int = 0,  # optimizer steps between snapshot files; 0 = none
        snapshot_dir: str | None = None,  # where snapshots go; None: <trainer.log_dir>/phema
    ):
        super().__init__()
        self.sigma_rels = [float(s) for s in sigma_rels]
        if not self.sigma_rels:
            raise ValueError("PowerFunctionEMA needs at least one sigma_rel, e.g. [0.05, 0.10]")
        self.gammas = [sigma_rel_to_gamma(s) for s in self.sigma_rels]
        if snapshot_every_n_steps < 0:
            raise ValueError(f"snapshot_every_n_steps must be >= 0 (0 = no snapshots), got {snapshot_every_n_steps}")
        self.snapshot_every_n_steps = snapshot_every_n_steps
        self.snapshot_dir = snapshot_dir
        self.step = 0  # optimizer steps folded into the averages
        self.averages: list[dict[str, torch.Tensor]] | None = None  # one {param name: fp32 tensor} per sigma_rel
        self.run_id: str | None = None  # this training run's id, written into every snapshot
        self.restored = False  # state came from a checkpoint: keep its run id (None for runs older than ids)

    @property
    def state_key(self) -> str:
        return EMA_STATE_KEY

    # -- tracking --

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.restored and self.run_id is None:  # a fresh run (a resumed one loaded its id already)
            self.run_id = uuid.uuid4().hex[:16]
        self._ensure_averages(pl_module)
        # trainer.log_dir broadcasts from rank 0: every rank must ask, here, never inside a rank-0-only branch
        log_dir = trainer.log_dir
        self._snapshot_path = Path(self.snapshot_dir) if self.snapshot_dir else Path(log_dir or ".") / "phema"

    def _ensure_averages(self, pl_module: L.LightningModule) -> None:
        """Start the averages from the network, or move restored ones to its device."""
        params = dict(pl_module.net.named_parameters())
        if self.averages is None:
            self.averages = [{k: p.detach().float().clone() for k, p in params.items()} for _ in self.sigma_rels]
        elif any(v.device != params[k].device for k, v in self.averages[0].items()):
            self.averages = [{k: v.to(params[k].device) for k, v in avg.items()} for avg in self.averages]

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step <= self.step:  # no optimizer step this batch (gradient accumulation)
            return
        self._ensure_averages(pl_module)
        self.step = trainer.global_step
        params = [p.detach() for _, p in pl_module.net.named_parameters()]
        with torch.no_grad():
            for average, gamma in zip(self.averages, self.gammas):
                weight = 1 - power_ema_beta(self.step, gamma)
                targets = list(average.values())
                torch._foreach_lerp_(targets, [p.float() for p in params], weight)
        if self.snapshot_every_n_steps and self.step % self.snapshot_every_n_steps == 0 and trainer.is_global_zero:
            self.write_snapshots(trainer, pl_module)

    # -- reading the averages --

    def net_state(self, pl_module: L.LightningModule, sigma_rel: float | None = None) -> dict[str, torch.Tensor]:
        """Full network state_dict with the averaged parameters of `sigma_rel` (default: the first tracked)."""
        return ema_net_state(self.state_dict(), pl_module.net, sigma_rel)

    @contextlib.contextmanager
    def average_weights(self, pl_module: L.LightningModule, sigma_rel: float | None = None) -> Iterator[None]:
        """Temporarily load the averaged parameters into `pl_module.net` (for samples and figures)."""
        if self.averages is None:
            yield
            return
        index = tracked_index(self.sigma_rels, sigma_rel)
        params = dict(pl_module.net.named_parameters())
        saved = {k: p.detach().clone() for k, p in params.items()}
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(self.averages[index][k])
        try:
            yield
        finally:
            with torch.no_grad():
                for k, p in params.items():
                    p.copy_(saved[k])

    # -- snapshots for post-hoc reconstruction --

    def write_snapshots(self, trainer: L.Trainer, pl_module: L.LightningModule) -> list[Path]:
        directory = getattr(self, "_snapshot_path", None) or Path(self.snapshot_dir or "phema")
        directory.mkdir(parents=True, exist_ok=True)
        describe = getattr(pl_module, "describe", None)
        record = describe() if callable(describe) else None
        paths = [write_snapshot(directory, self.step, sigma_rel, gamma, self.run_id,
                                self.net_state(pl_module, sigma_rel), record)
                 for sigma_rel, gamma in zip(self.sigma_rels, self.gammas)]
        rank_zero_info(f"PowerFunctionEMA: step {self.step}: wrote {len(paths)} snapshot(s) to {directory}")
        return paths

    # -- checkpointing --

    def state_dict(self) -> dict[str, Any]:
        return {"sigma_rels": list(self.sigma_rels), "gammas": list(self.gammas), "step": self.step,
                "averages": self.averages, "run_id": self.run_id}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if [round(s, 9) for s in state_dict["sigma_rels"]] != [round(s, 9) for s in self.sigma_rels]:
            raise ValueError(f"the checkpoint tracks EMAs with sigma_rel {state_dict['sigma_rels']} but this run asks "
                             f"for {self.sigma_rels}: resume with the same PowerFunctionEMA sigma_rels")
        self.step = int(state_dict["step"])
        self.averages = state_dict["averages"]
        self.run_id = state_dict.get("run_id")  # None: a checkpoint of a run older than run ids
        self.restored = True

