"""The web service: ``carclf serve MODEL``, or ``create_app(model)`` for ASGI servers.

Both names are imported on first use, so ``carclf serve --help`` answers without loading
FastAPI or torch.
"""

__all__ = ["Limits", "create_app"]


def __getattr__(name):
    if name == "create_app":
        from carclf.serve.app import create_app

        return create_app
    if name == "Limits":
        from carclf.serve.limits import Limits

        return Limits
    raise AttributeError(name)
