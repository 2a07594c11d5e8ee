"""Models: timm backbones (offline or hub weights), the classifier head, the network, bundles."""

from carclf.models.factory import build_net
from carclf.models.network import CarNet

__all__ = ["CarNet", "build_net"]
