"""Exponential moving average of the network's weights, validated and exported in their place."""

from __future__ import annotations

import pytorch_lightning as pl
import torch


class EMA(pl.Callback):
    """Keeps an EMA of ``pl_module.net``'s floating-point state.

    The decay warms up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so a short CPU
    run does not validate a shadow still dominated by the initial random head. Validation runs on
    the EMA weights (swapped in and out); the shadow is part of the checkpoint, so resume keeps it.
    """

    def __init__(self, decay: float = 0.999):
        self.decay = decay
        self.updates = 0
        self.shadow: dict[str, torch.Tensor] | None = None
        self._backup: dict[str, torch.Tensor] | None = None

    @property
    def state_key(self) -> str:
        return "EMA"

    def _state(self, pl_module) -> dict[str, torch.Tensor]:
        return {k: v for k, v in pl_module.net.state_dict().items() if v.is_floating_point()}

    def on_fit_start(self, trainer, pl_module) -> None:
        if self.shadow is None:
            self.shadow = {k: v.detach().clone() for k, v in self._state(pl_module).items()}
        else:
            self.shadow = {k: v.to(pl_module.device) for k, v in self.shadow.items()}

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for k, v in self._state(pl_module).items():
            self.shadow[k].lerp_(v.detach(), 1.0 - d)

    def swap_in(self, pl_module) -> None:
        self._backup = {k: v.detach().clone() for k, v in self._state(pl_module).items()}
        pl_module.net.load_state_dict(self.shadow, strict=False)

    def swap_out(self, pl_module) -> None:
        if self._backup is not None:
            pl_module.net.load_state_dict(self._backup, strict=False)
            self._backup = None

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if self.shadow is not None and not trainer.sanity_checking:
            self.swap_in(pl_module)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self.swap_out(pl_module)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.updates = state.get("updates", 0)
        self.shadow = state.get("shadow")
