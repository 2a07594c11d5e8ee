"""``python -m carclf.batch MODEL INPUT... OUTPUT``: see :mod:`carclf.batch.pipeline`."""

from __future__ import annotations

import argparse
import logging

from carclf.cli import exit_code, main_exit


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="carclf batch",
        description="Predict many photos into Parquet files, on this machine or a Ray cluster; "
        "rerun the same command after a crash to finish the rest (no input is written twice).",
    )
    p.add_argument("model", help="bundle folder, training run folder, or .ckpt checkpoint")
    p.add_argument(
        "input",
        nargs="+",
        help="a folder, a zip, a CSV of paths, or Parquet files of paths (globs allowed)",
    )
    p.add_argument("output", help="folder of Parquet files (created; reused by a rerun)")
    where = p.add_argument_group("where it runs (default: this machine, one process, no Ray)")
    where.add_argument("--address", help="Ray cluster to run on: auto, HOST:PORT, ray://HOST:10001")
    where.add_argument(
        "--ray", action="store_true", help="run on a local Ray started for the job (no --address)"
    )
    where.add_argument(
        "--workers", type=int, help="Ray: tasks at a time (default: one per CPU of the cluster)"
    )
    where.add_argument(
        "--threads",
        type=int,
        help="ONNX Runtime threads (default: local, the CPUs up to 8; Ray, 1 per task and CPU)",
    )
    where.add_argument(
        "--decoders", type=int, help="local: photo decoding threads (default: the CPUs)"
    )
    where.add_argument(
        "--num-cpus", type=int, help="CPUs to use here (local runner or local Ray; default: all)"
    )
    where.add_argument(
        "--object-store-mb", type=int, help="object store of a local Ray (default: 128)"
    )
    p.add_argument(
        "--backend",
        choices=("auto", "onnx", "int8", "torch"),
        default="auto",
        help="auto: model.onnx where the bundle has one, else PyTorch; int8: model.int8.onnx",
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: PyTorch on GPUs")
    p.add_argument("--top-k", type=int, default=5, help="classes per photo (5)")
    p.add_argument("--batch-size", type=int, default=8, help="images per model call (8)")
    p.add_argument(
        "--rows-per-block",
        type=int,
        help="inputs per part: one output file, one Ray task (default: ~4 per CPU, <= 512)",
    )
    p.add_argument(
        "--no-draft",
        action="store_true",
        help="decode JPEGs at full size (default: drafted to the model's size while decoding)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    """0 when every input has exactly one row; 1 when some are missing or duplicated; 2 (one line
    on stderr) for bad input or a cluster that does not answer."""
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
        ray=args.ray,
        workers=args.workers,
        threads=args.threads,
        decoders=args.decoders,
        backend=args.backend,
        device=args.device,
        top_k=args.top_k,
        batch_size=args.batch_size,
        rows_per_block=args.rows_per_block,
        num_cpus=args.num_cpus,
        object_store_mb=args.object_store_mb,
        draft=not args.no_draft,
        progress=not args.no_progress,
    )
    print(report.format(), flush=True)
    return 0 if report.summary.missing == 0 and report.summary.duplicates == 0 else 1


if __name__ == "__main__":
    main_exit(main)
