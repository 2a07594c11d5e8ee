"""``carclf``: one command for every job (``carclf <command> --help`` for each).

``train``, ``search`` and ``predict`` take Hydra overrides (``key=value``, ``group=option``);
the others take flags (``--out DIR``). Every command exits with the same codes (README, "Exit
codes"; :mod:`carclf.cli`): 0 done, 2 bad input or configuration, 1 internal error, 130
interrupted.

Nothing heavy is imported before a command is chosen and its arguments parsed, so
``carclf serve --help`` answers at once (no torch import).
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys

from carclf import __version__
from carclf.cli import exit_code

# name -> (module and function to call with the arguments, what it does)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("carclf.hydra_apps:train_main", "train a classifier on a folder of car photos"),
    "search": ("carclf.hydra_apps:search_main", "hyper-parameter search (Optuna): train -m"),
    "predict": ("carclf.hydra_apps:predict_main", "submission, top-k table, evaluation report"),
    "check": ("carclf.data.check:main", "data check: counts, sizes, unreadable files"),
    "report": ("carclf.inspect.report:main", "dataset report (report.html), --doctor too"),
    "doctor": ("carclf.inspect.doctor:main", "label doctor: mislabelled photos, --review"),
    "export": ("carclf.export.__main__:main", "ONNX (and int8) export, checked against PyTorch"),
    "serve": ("carclf.serve.__main__:main", "web service and page for a trained model"),
    "batch": ("carclf.batch.__main__:main", "batch inference with Ray Data into Parquet"),
    "ensemble": ("carclf.ensemble.__main__:main", "average k-fold runs into one bundle"),
    "pseudo": ("carclf.pseudo.__main__:main", "pseudo-label unlabelled photos"),
    "synthetic": ("carclf.data.synthetic:main", "write a small synthetic dataset (a demo)"),
}

EXAMPLES = """\
examples:
  carclf synthetic data/cars                      # a small synthetic dataset to try things on
  carclf check data/cars                          # what is there, what is broken
  carclf train data.path=data/cars                # the quick recipe (minutes on a CPU)
  carclf train data.path=data/cars experiment=cpu_best trainer.time_budget_min=15
  carclf predict model=outputs/runs/<run> input=data/cars/test_upload output=submission.csv
  carclf export outputs/runs/<run> --images data/cars/train
  carclf serve outputs/runs/<run>                 # http://127.0.0.1:8000

exit codes: 0 done, 2 bad input or configuration, 1 internal error, 130 interrupted"""


def overview() -> str:
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items())
    return (
        f"usage: carclf <command> [arguments]   (carclf <command> --help for its own)\n\n"
        f"Turn a folder of car photos into a car-model classifier, and serve it.\n\n"
        f"commands:\n{rows}\n\n{EXAMPLES}"
    )


def _command(name: str):
    target, _ = COMMANDS[name]
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def main(argv: list[str] | None = None) -> int:
    """Run ``carclf <command> ...``; returns the exit code (``sys.exit`` inside is caught)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(overview(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        print(f"carclf {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        print(f"error: unknown command {name!r}{hint}; commands: {', '.join(COMMANDS)}",
              file=sys.stderr)  # fmt: skip
        return 2
    try:  # a carclf error is one line and 2, Ctrl-C 130, as main_exit would make them
        code = exit_code(lambda: _command(name)(rest))
    except SystemExit as e:  # argparse (--help, bad flags) and the Hydra apps exit
        code = e.code
    if code is None:
        return 0
    if not isinstance(code, int):  # sys.exit("message")
        print(code, file=sys.stderr)
        return 1
    return code


def run() -> None:
    """The ``carclf`` console script."""
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:  # `carclf train --help | head`: the reader left; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    sys.exit(code)


def run_as(name: str) -> None:
    """``python train.py ...`` is ``carclf train ...`` (the repo workflow's thin shells)."""
    sys.exit(main([name, *sys.argv[1:]]))
