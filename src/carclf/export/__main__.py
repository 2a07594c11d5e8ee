"""``carclf export MODEL [--int8] [--images DIR ...]``: see :mod:`carclf.export.pipeline`."""

from __future__ import annotations

import argparse
import sys

from carclf.cli import EXIT_INTERNAL, EXIT_USAGE, main_exit
from carclf.errors import CarclfError
from carclf.export.onnx import OPSET
from carclf.export.quantize import METHODS

# A model that cannot be exported (missing, broken, bad flags): 2, bad input, as in every carclf
# command (it was 1 before the codes were made the same everywhere). An int8 model refused by
# --max-drop is a result that failed its check: 1.
NOT_EXPORTED = EXIT_USAGE
INT8_REFUSED = EXIT_INTERNAL

EXAMPLES = """\
examples:
  carclf export outputs/runs/<run> --images ~/photos/cars        # model.onnx, checked
  carclf export outputs/runs/<run> --int8 --images ~/photos/cars --max-drop 0.5

exit codes: 0 exported, 2 bad input (the model or a flag), 1 int8 refused by --max-drop"""


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="carclf export",
        description="Export a carclf model to ONNX (model.onnx, one model.<size>px.onnx per "
        "other input size of the default TTA policy, and model.int8.onnx with --int8) inside "
        "its bundle folder, and check each against PyTorch.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", help="bundle folder, training run folder, or .ckpt checkpoint")
    p.add_argument("--int8", action="store_true", help="also write an int8 model.int8.onnx")
    p.add_argument(
        "--int8-method",
        choices=METHODS,
        default="static",
        help="static: calibrated on --images, fast (default); dynamic: no photos, slow on CPU",
    )
    p.add_argument(
        "--images",
        nargs="+",
        metavar="PATH",
        help="photos (files or folders) for the parity check and int8 calibration "
        "(default: a run folder's training data, else synthetic images for parity)",
    )
    p.add_argument("--num-images", type=int, default=32, help="how many photos to use (32)")
    p.add_argument(
        "--max-drop",
        type=float,
        metavar="POINTS",
        help="keep model.int8.onnx only if it loses at most POINTS (accuracy where labels exist, "
        "else top-1 agreement) against fp32 on held-out photos; else it is removed",
    )
    p.add_argument(
        "--holdout",
        nargs="+",
        metavar="PATH",
        help="held-out photos for --max-drop: folder (class folders give labels), zip, CSV or "
        "Kaggle dataset (default: --images less the calibration photos)",
    )
    p.add_argument("--holdout-labels", metavar="CSV", help="labels of --holdout (Id,Category)")
    p.add_argument("--holdout-images", type=int, default=200, help="held-out photos to use (200)")
    p.add_argument("--out", help="bundle folder to write (default: the model's own bundle)")
    p.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default {OPSET})")
    return p


def main(argv: list[str] | None = None) -> int:
    """0 when exported; 2 (one line on stderr) when the model cannot be exported; 1 when its
    int8 version was refused."""
    args = get_args_parser().parse_args(argv)
    from carclf.export.pipeline import export_model

    try:
        report = export_model(
            args.model,
            int8=args.int8,
            int8_method=args.int8_method,
            images=args.images,
            num_images=args.num_images,
            out=args.out,
            opset=args.opset,
            max_drop=args.max_drop,
            holdout=args.holdout,
            holdout_labels=args.holdout_labels,
            holdout_images=args.holdout_images,
        )
    except CarclfError as e:  # returned, not exited: tests call main() (see cli.run_safely)
        print(f"error: {e}", file=sys.stderr)
        return NOT_EXPORTED
    print(report.format())
    if report.int8_check is not None and not report.int8_check.kept:
        print(f"error: int8 model refused ({report.int8_check.measure} "
              f"{report.int8_check.loss:.2f} points > --max-drop {args.max_drop:g})",
              file=sys.stderr)  # fmt: skip
        return INT8_REFUSED
    return 0


if __name__ == "__main__":
    main_exit(main)
