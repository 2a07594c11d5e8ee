"""``python -m carclf.pseudo MODEL INPUT --out pseudo.csv [--min-precision 0.95]``."""

from __future__ import annotations

import argparse
import logging

from carclf.cli import main_exit
from carclf.pseudo.labels import pseudo_label


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="carclf pseudo",
        description="Pseudo-label unlabelled photos with a trained model, keeping only labels "
        "at least as precise as asked (threshold chosen on held-out labelled photos).",
    )
    parser.add_argument("model", help="training run folder, its bundle/, or an ensemble bundle")
    parser.add_argument("input", help="unlabelled photos: folder, zip, CSV list or Kaggle folder")
    parser.add_argument("--out", required=True, help="labelled CSV to write (for data.extra)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--min-precision",
        type=float,
        default=None,
        help="keep photos whose calibrated confidence reaches the threshold at which validation "
        "labels are this precise (default 0.95)",
    )
    group.add_argument(
        "--min-confidence",
        type=float,
        default=None,
        help="keep photos above this raw confidence instead (no precision promise)",
    )
    parser.add_argument("--tta", default=None, help="TTA policy (default: the model's own)")
    parser.add_argument("--soft", action="store_true", help="add p:<label> probability columns")
    parser.add_argument(
        "--min-count", type=int, default=10, help="fewest validation photos a cut may keep"
    )
    parser.add_argument("--num-workers", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    precision = args.min_precision
    if precision is None and args.min_confidence is None:
        precision = 0.95
    result = pseudo_label(
        args.model,
        args.input,
        args.out,
        min_precision=precision,
        min_confidence=args.min_confidence,
        tta=args.tta,
        soft=args.soft,
        min_count=args.min_count,
        num_workers=args.num_workers,
    )
    print(
        f"{result.out}: kept {result.kept} of {result.total} photos (confidence >= "
        f"{result.threshold:.4f}, tta={result.tta}; {result.unreadable} unreadable)"
        + (f"\n{result.rule.describe()}" if result.rule else "")
    )
    return 0


if __name__ == "__main__":
    main_exit(main)
