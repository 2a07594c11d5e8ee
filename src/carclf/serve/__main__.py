"""``python -m carclf.serve MODEL [--host H] [--port P]``: the service with uvicorn.

The model loads before the server binds, so a wrong path or a broken bundle is one clear line on
stderr and exit code 1, not a server that never becomes ready. One process, one model copy:
requests are batched inside the process (see :mod:`carclf.serve.batcher`).
"""

from __future__ import annotations

import argparse
import socket

from carclf.cli import fail, main_exit
from carclf.errors import CarclfError
from carclf.serve.limits import Limits, MiB

# A model that cannot be loaded or an address that cannot be bound: the service's exit status
# (1, as this module's docstring has always said), not the 2 of carclf's other commands.
CANNOT_SERVE = 1


def get_args_parser() -> argparse.ArgumentParser:
    d = Limits()
    p = argparse.ArgumentParser(
        prog="python -m carclf.serve", description="Serve a carclf model over HTTP, with a page."
    )
    p.add_argument("model", help="bundle folder, training run folder, or .ckpt checkpoint")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument(
        "--backend",
        choices=("auto", "onnx", "int8", "torch"),
        default="auto",
        help="auto: model.onnx if the bundle has one, else PyTorch; int8: model.int8.onnx",
    )
    p.add_argument("--name", help="model name shown in responses (default: the bundle folder)")
    p.add_argument("--max-upload-mb", type=float, default=d.max_upload_bytes / MiB)
    p.add_argument("--max-pixels", type=int, default=d.max_pixels)
    p.add_argument("--max-batch", type=int, default=d.max_batch, help="images per model call")
    p.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms)
    p.add_argument("--max-pending", type=int, default=d.max_pending)
    p.add_argument("--timeout", type=float, default=d.request_timeout_s, help="seconds")
    p.add_argument("--log-level", default="info")
    return p


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so the URL (port 0: a free port) is known and printed."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(2048)  # clients that connect right after the URL is printed wait in the backlog
    sock.set_inheritable(True)
    return sock


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    import uvicorn

    from carclf.inference.loading import load_classifier
    from carclf.serve.app import create_app

    try:
        classifier = load_classifier(args.model, args.backend, device="cpu")
        app = create_app(
            classifier,
            name=args.name,
            max_upload_bytes=int(args.max_upload_mb * MiB),
            max_pixels=args.max_pixels,
            max_batch=args.max_batch,
            max_wait_ms=args.max_wait_ms,
            max_pending=args.max_pending,
            request_timeout_s=args.timeout,
        )
        app.state.service.engine.warm_up()
    except (CarclfError, ValueError) as e:
        fail(str(e), CANNOT_SERVE)
    try:
        sock = bind(args.host, args.port)
    except OSError as e:
        fail(f"cannot listen on {args.host}:{args.port} ({e.strerror or e})", CANNOT_SERVE)
    info = app.state.service.engine.info
    url = f"http://{args.host}:{sock.getsockname()[1]}"
    print(
        f"carclf: serving {info.name} ({info.backend}) on {url}  page: /  docs: /docs", flush=True
    )
    config = uvicorn.Config(
        app, log_level=args.log_level, timeout_keep_alive=5, server_header=False
    )
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    main_exit(main)
