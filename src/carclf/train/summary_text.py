"""Words for TensorBoard (:mod:`carclf.train.summaries`): the stage card, the end-of-run tables,
and the HParams entry (the run's choices against its final validation metrics)."""

from __future__ import annotations

import numpy as np

# metrics.json key -> HParams metric (a scalar tag of its own, so per-epoch val/acc stays apart)
FINAL_METRICS = {
    "val_acc": "final/val_acc",
    "val_loss": "final/val_loss",
    "temperature": "final/temperature",
    "train_seconds": "final/train_seconds",
}


def group_name(net, index: int) -> str:
    """A short name for backbone group ``index``: its module path (``blocks.6``, ``conv_stem``)."""
    names = net.group_param_names[index]
    if not names:
        return f"group {index}"
    parts = names[0].split(".")
    return ".".join(parts[:2]) if len(parts) > 2 and parts[1].isdigit() else parts[0]


def _md_table(rows: list[tuple[str, str]]) -> str:
    body = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return f"| | |\n|---|---|\n{body}"


def card(stage, num_stages: int, net, cut: int) -> str:
    """The stage's text card (markdown): what trains, how fast, at what size, for how long."""
    n = net.num_groups
    trained = [group_name(net, i) for i in range(n - stage.trainable_groups, n)]
    groups = f"{stage.trainable_groups} of {n} backbone groups" + (
        f" ({', '.join(trained)})" if trained else " (backbone frozen)"
    )
    lr = f"head {stage.lr:.3g}"
    if stage.trainable_groups:
        lr += f", backbone {stage.lr * stage.backbone_lr_scale:.3g} (x{stage.backbone_lr_scale:g})"
    sched = f"{stage.scheduler}" + (
        f", warm-up {stage.warmup_epochs:g} epochs" if stage.warmup_epochs else ""
    )
    if cut:
        views = (
            f"feature cache: groups 0-{cut - 1} computed once for {stage.cache_views} views per "
            "photo (plain, mirror, random crops); one view drawn per photo per epoch"
        )
    else:
        views = "fresh random augmentation every epoch (no feature cache)"
    epochs = f"{stage.epochs} (epochs {stage.start_epoch}-{stage.end_epoch - 1})"
    if stage.auto_epochs:
        epochs += ", planned for the time budget"
    rows = [
        ("trained", f"{groups} + head"),
        ("learning rate", f"{lr}; {stage.optimizer}, weight decay {stage.weight_decay:g}"),
        ("schedule", sched),
        ("image size", f"{stage.image_size} px, batch {stage.batch_size}"),
        ("augmentation strength", f"{stage.augment_strength:g}"),
        ("views", views),
        ("epochs planned", epochs),
    ]
    return f"**Stage {stage.index + 1}/{num_stages}: {stage.name}**\n\n" + _md_table(rows)


def top_confusions_table(cm: np.ndarray, names: list[str], n: int) -> str:
    off = cm.copy()
    np.fill_diagonal(off, 0)
    flat = np.argsort(-off, axis=None, kind="stable")[:n]
    support = cm.sum(1)
    lines = []
    for i in flat:
        t, p = divmod(int(i), len(cm))
        if off[t, p] <= 0:
            break
        share = off[t, p] / max(1, support[t])
        lines.append(f"| {names[t]} | {names[p]} | {off[t, p]} | {share:.0%} |")
    if not lines:
        return "No validation mistakes."
    head = "| true class | predicted as | photos | of the class |\n|---|---|---|---|\n"
    return f"**Top confusions on the validation split**\n\n{head}" + "\n".join(lines)


def per_class_table(acc: np.ndarray, support: np.ndarray, names: list[str]) -> str:
    order = np.argsort(np.nan_to_num(acc, nan=2.0), kind="stable")
    head = "| class | accuracy | photos |\n|---|---|---|\n"
    rows = [
        f"| {names[i]} | {'-' if np.isnan(acc[i]) else f'{acc[i]:.1%}'} | {int(support[i])} |"
        for i in order
    ]
    return "**Validation accuracy per class, worst first**\n\n" + head + "\n".join(rows)


def hparams(cfg, stages, metrics: dict) -> tuple[dict, dict]:
    """``(params, metrics)`` for the HParams tab: the run's main choices (plain values) and its
    final validation metrics; the metrics are empty when the run had no validation split."""
    m, d = cfg.model, cfg.data
    params = {
        "recipe": str(cfg.recipe),
        "backbone": str(m.backbone),
        "seed": int(cfg.seed),
        "image_size": int(stages[-1].image_size),
        "batch_size": int(stages[-1].batch_size),
        "epochs": int(stages[-1].end_epoch),
        "augment_strength": float(d.augment.strength),
        "label_smoothing": float(m.label_smoothing),
        "mixup": float(m.mixup),
        "cutmix": float(m.cutmix),
        "head_dropout": float(m.head.dropout),
        "resize": str(d.resize),
        "time_budget_min": float(cfg.trainer.time_budget_min or 0),
    }
    for s in stages:
        p = f"stage/{s.index + 1}_{s.name}"
        params[f"{p}/epochs"] = int(s.epochs)
        params[f"{p}/trainable_groups"] = int(s.trainable_groups)
        params[f"{p}/lr"] = float(s.lr)
        params[f"{p}/backbone_lr"] = float(s.lr * s.backbone_lr_scale)
        params[f"{p}/image_size"] = int(s.image_size)
        params[f"{p}/views"] = int(s.cache_views)
        params[f"{p}/augment_strength"] = float(s.augment_strength)
    if "val_acc" not in metrics:
        return params, {}
    values = {tag: float(metrics[k]) for k, tag in FINAL_METRICS.items() if k in metrics}
    return params, values
