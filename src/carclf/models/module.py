"""CarClassifier: the LightningModule around :class:`CarNet`.

It owns the loss and metrics, and applies the batch mix (:class:`carclf.data.mixing.BatchMix`,
seeded, resumed with the checkpoint). It does not own the optimizer schedule: which parameters
train and at what learning rate is decided per stage by the training app's stage callback, which
sets the two public attributes ``optimizer_factory`` and ``input_start``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from carclf.data.mixing import BatchMix
from carclf.models.bundle import BundleMeta
from carclf.models.factory import build_net


class CarClassifier(pl.LightningModule):
    def __init__(
        self,
        meta: dict,
        weights: str = "auto",
        drop_path_rate: float = 0.0,
        label_smoothing: float = 0.1,
        class_weights: list[float] | None = None,
        mixup: float = 0.0,
        cutmix: float = 0.0,
        mix_prob: float = 0.5,
        channels_last: bool = False,
        seed: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.mix = BatchMix(mixup, cutmix, mix_prob, seed)
        self.meta = BundleMeta.from_dict(meta)
        self.net = build_net(
            self.meta.backbone,
            self.meta.num_classes,
            weights,
            self.meta.head,
            drop_path_rate=drop_path_rate,
        )
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.register_buffer(
            "class_weights",
            torch.tensor(class_weights, dtype=torch.float32) if class_weights else None,
            persistent=False,
        )
        # Set by the stage callback: where batches enter the network (0 = images; k = cached
        # output of the first k backbone groups) and how to build the optimizer of the stage.
        self.input_start = 0
        # Set by the stage callback on a CPU (carclf.train.tail_format): the batch's layout and
        # bf16 autocast for the network's trained part, whichever measured fastest.
        self.input_channels_last = False
        self.autocast_bf16 = False
        self.optimizer_factory: Callable[[CarClassifier], dict] | None = None
        # Per training row (the index every batch carries): sample weight, soft targets and
        # their share of the loss; installed from the DataModule's ``row_targets`` at fit start.
        self.row_targets: dict[str, torch.Tensor | float] | None = None

    def on_fit_start(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        targets = dm.row_targets() if hasattr(dm, "row_targets") else None
        if targets is None:
            self.row_targets = None
            return
        n = len(targets["weight"])
        soft = targets["soft"]
        self.row_targets = {
            "weight": torch.as_tensor(targets["weight"], dtype=torch.float32, device=self.device),
            "soft": torch.as_tensor(
                np.nan_to_num(soft) if soft is not None else np.zeros((n, 1), np.float32),
                dtype=torch.float32,
                device=self.device,
            ),
            "alpha": torch.as_tensor(
                targets["alpha"] if targets["alpha"] is not None else np.zeros(n, np.float32),
                dtype=torch.float32,
                device=self.device,
            ),
            "temperature": float(targets["temperature"]),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.hparams.channels_last or self.input_channels_last) and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.autocast_bf16 and x.device.type == "cpu":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return self.net(x, start=self.input_start).float()
        return self.net(x, start=self.input_start)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            logits, target, weight=self.class_weights, label_smoothing=self.hparams.label_smoothing
        )

    def row_loss(self, logits: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Loss with per-row targets: ``w * ((1 - a) * CE(label) + a * T^2 * KL(soft || p_T))``.

        Rows without a label (-1) learn from their soft target only; a batch mean, so a weight
        of 0.5 halves a row's pull. Without row targets this is exactly :meth:`loss`.
        """
        rt = self.row_targets
        if rt is None:
            return self.loss(logits, y)
        w, a = rt["weight"][idx], rt["alpha"][idx]
        labelled = y >= 0
        a = torch.where(labelled, a, torch.ones_like(a))
        ce = F.cross_entropy(
            logits,
            y.clamp(min=0),
            weight=self.class_weights,
            label_smoothing=self.hparams.label_smoothing,
            reduction="none",
        )
        ce = torch.where(labelled, ce, torch.zeros_like(ce))
        per_row = (1 - a) * ce
        if rt["soft"].shape[1] == logits.shape[1]:
            t = rt["temperature"]
            soft = rt["soft"][idx]
            log_p = F.log_softmax(logits / t, dim=1)
            kl = (soft * (torch.log(soft.clamp(min=1e-8)) - log_p)).sum(1) * t * t
            per_row = per_row + a * kl
        return (w * per_row).mean()

    def training_step(self, batch, batch_idx):
        if batch is None:  # every image of the batch was unreadable
            return None
        x, y, idx = batch
        x, y_a, y_b, lam, perm = self.mix(x, y)
        logits = self(x)
        loss = (
            lam * self.row_loss(logits, y_a, idx)
            + (1 - lam) * self.row_loss(logits, y_b, idx[perm])
            if lam < 1
            else self.row_loss(logits, y_a, idx)
        )
        labelled = y_a >= 0
        acc = (logits.argmax(1) == y_a)[labelled].float().mean() if labelled.any() else None
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(y))
        if acc is not None:
            self.log(
                "train/acc", acc, on_step=True, on_epoch=True, prog_bar=False, batch_size=len(y)
            )
        return loss

    def validation_step(self, batch, batch_idx):
        if batch is None:
            return None
        x, y, _ = batch
        logits = self(x)
        self.log(
            "val/loss",
            F.cross_entropy(logits, y),
            on_epoch=True,
            prog_bar=True,
            batch_size=len(y),
            sync_dist=True,
        )
        self.log(
            "val/acc",
            (logits.argmax(1) == y).float().mean(),
            on_epoch=True,
            prog_bar=True,
            batch_size=len(y),
            sync_dist=True,
        )

    def configure_optimizers(self):
        if self.optimizer_factory is not None:
            return self.optimizer_factory(self)
        return torch.optim.AdamW((p for p in self.parameters() if p.requires_grad), lr=1e-3)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["batch_mix"] = self.mix.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "batch_mix" in checkpoint:
            self.mix.load_state_dict(checkpoint["batch_mix"])
