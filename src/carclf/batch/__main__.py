"""``python -m carclf.batch MODEL INPUT... OUTPUT``: see :mod:`carclf.batch.pipeline`."""

from __future__ import annotations

import argparse
import logging

from carclf.cli import exit_code, main_exit


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="carclf batch",
        description="Predict many photos with Ray Data into Parquet files; rerun the same "
        "command after a crash to finish the rest (no input is written twice).",
    )
    p.add_argument("model", help="bundle folder, training run folder, or .ckpt checkpoint")
    p.add_argument(
        "input",
        nargs="+",
        help="a folder, a zip, a CSV of paths, or Parquet files of paths (globs allowed)",
    )
    p.add_argument("output", help="folder of Parquet files (created; reused by a rerun)")
    p.add_argument(
        "--address",
        help="Ray cluster to join (auto, ray://head:10001); default: a local Ray on this machine",
    )
    p.add_argument("--workers", type=int, default=1, help="model actors (default 1)")
    p.add_argument(
        "--backend",
        choices=("auto", "onnx", "int8", "torch"),
        default="auto",
        help="auto: model.onnx where the bundle has one, else PyTorch; int8: model.int8.onnx",
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: PyTorch on GPUs")
    p.add_argument("--top-k", type=int, default=5, help="classes per photo (5)")
    p.add_argument("--batch-size", type=int, default=16, help="images per model call (16)")
    p.add_argument(
        "--num-cpus", type=int, help="CPUs of the local Ray (default: all this process may use)"
    )
    p.add_argument(
        "--object-store-mb", type=int, help="object store of the local Ray (default: Ray's)"
    )
    p.add_argument(
        "--rows-per-block",
        type=int,
        help="inputs per Ray read block and output file (default: about 4 blocks per CPU, <= 1024)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    """0 when every input has exactly one row; 1 when some are missing or duplicated; 2 (one line
    on stderr) for bad input, before Ray starts."""
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return exit_code(lambda: _run(args))


def _run(args) -> int:
    from carclf.batch.pipeline import run_batch

    report = run_batch(
        args.model,
        args.input,
        args.output,
        address=args.address,
        workers=args.workers,
        backend=args.backend,
        device=args.device,
        top_k=args.top_k,
        batch_size=args.batch_size,
        rows_per_block=args.rows_per_block,
        num_cpus=args.num_cpus,
        object_store_mb=args.object_store_mb,
        progress=not args.no_progress,
    )
    print(report.format(), flush=True)
    return 0 if report.summary.missing == 0 and report.summary.duplicates == 0 else 1


if __name__ == "__main__":
    main_exit(main)
