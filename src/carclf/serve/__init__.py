"""The web service: ``python -m carclf.serve MODEL``, or ``create_app(model)`` for ASGI servers."""

from carclf.serve.app import create_app
from carclf.serve.limits import Limits

__all__ = ["Limits", "create_app"]
