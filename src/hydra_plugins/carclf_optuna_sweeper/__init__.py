"""Hydra plugin shim: Hydra only loads sweepers from the ``hydra_plugins`` namespace package.

The sweeper lives in ``carclf.tune.sweeper``; importing this module (Hydra does it at start-up
for plugin discovery) is cheap and does not import Optuna.
"""

from carclf.tune.sweeper import OptunaSweeper, register


class CarclfOptunaSweeper(OptunaSweeper):
    """``hydra/sweeper=carclf_optuna``: an Optuna study over carclf trials."""


register()
