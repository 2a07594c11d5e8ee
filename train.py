"""Train a car classifier: ``python train.py data.path=<dataset> [experiment=<recipe>] [key=value]``.

The repo workflow's shell of ``carclf train`` (:mod:`carclf.hydra_apps`); ``--help`` says more.
"""

from carclf.commands import run_as

if __name__ == "__main__":
    run_as("train")
