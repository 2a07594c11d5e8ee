"""``python -m carclf.ensemble RUN... --out DIR``: one bundle averaging the runs' logits."""

from __future__ import annotations

import argparse
import json
import logging

from carclf.cli import main_exit
from carclf.ensemble.build import build_ensemble


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m carclf.ensemble",
        description="Average trained runs (e.g. k folds) into one bundle; its temperature is "
        "refitted on the members' out-of-fold logits.",
    )
    parser.add_argument("runs", nargs="+", help="training run folders (2 or more)")
    parser.add_argument("--out", required=True, help="bundle folder to write")
    parser.add_argument("--tta", default=None, help="policy to calibrate with (default: the runs')")
    parser.add_argument("--num-workers", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    folder, metrics = build_ensemble(
        args.runs, args.out, tta=args.tta, num_workers=args.num_workers
    )
    print(json.dumps(metrics, indent=1))
    print(f"ensemble bundle: {folder}")
    return 0


if __name__ == "__main__":
    main_exit(main)
