"""``carclf ensemble RUN... --out DIR``: one bundle averaging the runs' logits."""

from __future__ import annotations

import argparse
import json
import logging
import os

from carclf.cli import main_exit
from carclf.ensemble.build import build_ensemble
from carclf.errors import ConfigError
from carclf.inference.loading import find_model

EXAMPLES = """\
examples:
  carclf train -m data.path=data data.fold=0,1,2,3,4 experiment=cpu_best
  carclf ensemble outputs/multirun/<date>/{0,1,2,3,4} --out outputs/ensemble
  carclf predict model=outputs/ensemble input=data output=submission.csv"""


def check_distinct(runs: list[str]) -> None:
    """A ConfigError if two of ``runs`` are the same model (a run and its ``bundle/`` count as
    one): its out-of-fold answers would count twice."""
    seen: dict[str, str] = {}
    for run in runs:
        key = os.path.realpath(find_model(run))
        if key in seen:
            raise ConfigError(
                f"{run}: the same model as {seen[key]}, given twice; an ensemble's members must "
                "be different runs (e.g. the k folds of one multirun)"
            )
        seen[key] = run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="carclf ensemble",
        description="Average trained runs (e.g. k folds) into one bundle; its temperature is "
        "refitted on the members' out-of-fold logits.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("runs", nargs="+", help="training run folders (2 or more)")
    parser.add_argument("--out", required=True, help="bundle folder to write")
    parser.add_argument("--tta", default=None, help="policy to calibrate with (default: the runs')")
    parser.add_argument("--num-workers", type=int, default=2, help="decoding processes (2)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    check_distinct(args.runs)
    folder, metrics = build_ensemble(
        args.runs, args.out, tta=args.tta, num_workers=args.num_workers
    )
    print(json.dumps(metrics, indent=1))
    print(f"ensemble bundle: {folder}")
    return 0


if __name__ == "__main__":
    main_exit(main)
