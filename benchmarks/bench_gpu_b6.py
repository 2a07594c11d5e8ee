"""sfdl_b6 on a GPU: training images/s of carclf's pipeline against a bare timm training loop.

Both train EfficientNet-B6 (random weights; speed does not depend on them) with every layer
trainable, bf16 autocast, channels_last and AdamW, at the recipe's sizes and batch sizes (224 px
batch 32, 448 px batch 8) and a larger 448 px batch. carclf's figure is the real thing: photos
decoded and augmented by the DataModule's workers, the StagedFinetuning callback, Lightning's
loop. The bare loop feeds one random batch that already sits in GPU memory: the model's compute
ceiling on this GPU, which no input pipeline can beat.

    python benchmarks/bench_gpu_b6.py --data <stanford-cars-dev> [--steps 40] [--workers 12]
"""

from __future__ import annotations

import argparse
import time

import pytorch_lightning as pl
import timm
import torch
import torch.nn.functional as F

from carclf.data.datamodule import CarDataModule
from carclf.models.module import CarClassifier
from carclf.train.finetune import StagedFinetuning
from carclf.train.stages import resolve_stages

WARMUP = 8


class StepTimer(pl.Callback):
    def __init__(self):
        self.t0, self.images = None, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == WARMUP:
            torch.cuda.synchronize()
            self.t0 = time.perf_counter()
        elif batch_idx > WARMUP:
            self.images += len(batch[1])

    def on_train_epoch_end(self, trainer, pl_module):
        torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.t0


def carclf_rate(data: str, size: int, batch: int, steps: int, workers: int) -> float:
    dm = CarDataModule(
        data,
        image_size=size,
        batch_size=batch,
        num_workers=workers,
        seed=0,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
    )
    meta = {
        "backbone": "efficientnet_b6",
        "class_names": dm.class_names,
        "image_size": size,
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
        "head": {"dropout": 0.3, "hidden": [512]},
    }
    module = CarClassifier(meta, weights="none", drop_path_rate=0.2, channels_last=True)
    stages = resolve_stages(
        {"full": {"epochs": 1, "unfreeze": 1.0, "cache": "off", "lr": 3e-4}},
        module.net.num_groups,
        size,
        batch,
        1.0,
    )
    timer = StepTimer()
    trainer = pl.Trainer(
        accelerator="gpu",
        devices=1,
        precision="bf16-mixed",
        max_epochs=1,
        limit_train_batches=WARMUP + steps + 1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        reload_dataloaders_every_n_epochs=1,
        num_sanity_val_steps=0,
        callbacks=[StagedFinetuning(stages), timer],
    )
    trainer.fit(module, datamodule=dm)
    return timer.images / timer.seconds


def timm_rate(size: int, batch: int, steps: int, classes: int = 49) -> float:
    model = timm.create_model("efficientnet_b6", num_classes=classes, drop_path_rate=0.2)
    model = model.cuda().to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    x = torch.randn(batch, 3, size, size, device="cuda").to(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,), device="cuda")
    for i in range(WARMUP + steps):
        if i == WARMUP:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--workers", type=int, default=12)
    args = p.parse_args()
    torch.backends.cudnn.benchmark = True
    print(
        f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}, timm {timm.__version__}"
    )
    print("| size | batch | carclf sfdl_b6 pipeline img/s | bare timm loop img/s | carclf / bare |")
    print("|---|---|---|---|---|")
    for size, batch in [(224, 32), (448, 8), (448, 32)]:
        bare = timm_rate(size, batch, args.steps)
        ours = carclf_rate(args.data, size, batch, args.steps, args.workers)
        print(f"| {size} | {batch} | {ours:.0f} | {bare:.0f} | {ours / bare:.2f} |", flush=True)


if __name__ == "__main__":
    main()
