"""Constant "same" padding for a fixed input size: what an exported or engine-run network needs.

TF-ported backbones (``tf_efficientnet_*``) pad stride-2 convolutions "same" as TensorFlow does,
computed from the input size at every call. Exported as is, that becomes a float subgraph
(Shape, Div, Ceil, Clip) per convolution, which int8 quantization then rounds into wrong pad
widths. When the size is fixed (an ONNX export, a training prefix engine), a copy of the network
whose pads are constants computes the same thing without it.
"""

from __future__ import annotations

import torch

from carclf.models.bundle import BundleMeta
from carclf.models.network import CarNet


def static_padding_net(net: CarNet, meta: BundleMeta) -> CarNet:
    """A copy of ``net`` whose TF-"same" convolutions pad by constants for ``meta.image_size``.

    Rebuilt from ``meta`` (not deep-copied: CarNet's chunk functions refer to their own backbone)
    with timm's export-friendly ``Conv2dSameExport``, which fixes its padding on the first call.
    """
    from timm.layers.conv2d_same import Conv2dSame, Conv2dSameExport

    from carclf.models.factory import build_from_meta

    copy = build_from_meta(meta)  # a CarNet, or an EnsembleNet of them
    copy.load_state_dict(net.state_dict())
    swapped = 0
    for parent in list(copy.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is Conv2dSame:
                static = Conv2dSameExport(
                    child.in_channels,
                    child.out_channels,
                    child.kernel_size,
                    stride=child.stride,
                    dilation=child.dilation,
                    groups=child.groups,
                    bias=child.bias is not None,
                )
                static.load_state_dict(child.state_dict())
                setattr(parent, name, static)
                swapped += 1
    copy.eval()
    if swapped:
        with torch.no_grad():  # fixes each layer's padding for this input size
            copy(torch.zeros(1, 3, meta.image_size, meta.image_size))
    return copy
