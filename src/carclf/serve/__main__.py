"""``carclf serve MODEL [--host H] [--port P]`` (or ``python -m carclf.serve``): the service.

The model loads before the server binds, so a wrong path or a broken bundle is one clear line on
stderr and exit code 2 (carclf's code for bad input), not a server that never becomes ready. One
process, one model copy: requests are batched inside the process (see :mod:`carclf.serve.batcher`).
``--help`` answers before anything heavy is imported (no torch, no FastAPI).
"""

from __future__ import annotations

import argparse
import socket

from carclf.cli import EXIT_USAGE, fail, main_exit
from carclf.errors import CarclfError
from carclf.serve.limits import Limits, MiB

# A model that cannot be loaded or an address that cannot be bound: bad input, exit code 2 as in
# every carclf command (it was 1 before the codes were made the same everywhere).
CANNOT_SERVE = EXIT_USAGE

EXAMPLES = """\
examples:
  carclf serve outputs/runs/<run>                    # page + API on http://127.0.0.1:8000
  carclf serve outputs/runs/<run>/bundle --backend int8 --port 9000
  curl -F file=@car.jpg http://127.0.0.1:8000/predict

exit codes: 0 stopped, 2 the model cannot be loaded or the address bound, 130 interrupted"""


def get_args_parser() -> argparse.ArgumentParser:
    d = Limits()
    p = argparse.ArgumentParser(
        prog="carclf serve",
        description="Serve a carclf model over HTTP: an upload page at /, the API at /predict "
        "and /predict/batch, OpenAPI docs at /docs, Prometheus metrics at /metrics.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", help="bundle folder, training run folder, or .ckpt checkpoint")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port; 0 picks a free one (default 8000)")
    p.add_argument(
        "--backend",
        choices=("auto", "onnx", "int8", "torch"),
        default="auto",
        help="auto: model.onnx if the bundle has one, else PyTorch; int8: model.int8.onnx",
    )
    p.add_argument("--name", help="model name shown in responses (default: the bundle folder)")
    limits = p.add_argument_group(
        "limits (over a limit a request gets a JSON error, never a crash)"
    )
    limits.add_argument(
        "--max-upload-mb",
        type=float,
        default=d.max_upload_bytes / MiB,
        help=f"largest image upload in MB; larger: 413 (default {d.max_upload_bytes / MiB:g})",
    )
    limits.add_argument(
        "--max-pixels",
        type=int,
        default=d.max_pixels,
        help="largest image in pixels (width x height, read from the header before decoding); "
        f"larger: 413 (default {d.max_pixels:,})",
    )
    limits.add_argument(
        "--max-batch",
        type=int,
        default=d.max_batch,
        help=f"images per model call, requests are micro-batched (default {d.max_batch})",
    )
    limits.add_argument(
        "--max-wait-ms",
        type=float,
        default=d.max_wait_ms,
        help=f"how long a micro-batch waits for more requests, ms (default {d.max_wait_ms:g})",
    )
    limits.add_argument(
        "--max-pending",
        type=int,
        default=d.max_pending,
        help=f"requests admitted at once; more get 503 with Retry-After (default {d.max_pending})",
    )
    limits.add_argument(
        "--timeout",
        type=float,
        default=d.request_timeout_s,
        help=f"seconds a request may take; longer: 504 (default {d.request_timeout_s:g})",
    )
    p.add_argument(
        "--log-level",
        default="info",
        choices=("critical", "error", "warning", "info", "debug", "trace"),
        help="uvicorn's log level (default info)",
    )
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
