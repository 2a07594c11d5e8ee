"""DDP inside a Hydra multirun (``python train.py -m ... trainer=ddp``) without hanging.

Lightning starts DDP ranks 1..N-1 by running the script again with the *original* command line
(``sys.argv``) plus ``hydra.run.dir=<hydra.run.dir>``. Under ``-m`` that command line is the whole
sweep, so every child starts a multirun of its own and the ranks never meet (the hang reported in
lightning-hydra-template #393), and ``hydra.run.dir`` is not the job's dir either.

``single_job_command_line()`` makes both describe the job being run while it trains: ``sys.argv``
becomes the script plus this job's own overrides (``hydra.overrides.task``: the sweep values of
this job, no ``-m``), and ``hydra.run.dir`` becomes the job's output dir. The child then composes
exactly the job's config from the same files and writes into the same dir. Outside a multirun it
changes nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def single_job_command_line() -> Iterator[None]:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import read_write

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        yield
        return
    hc = HydraConfig.get()
    argv, run_dir = sys.argv[:], hc.run.dir
    # `carclf train -m ...` / `carclf search ...`: the ranks run `carclf train <job overrides>`
    command = [argv[0], "train"] if argv[1:2] in (["train"], ["search"]) else argv[:1]
    sys.argv = [*command, *hc.overrides.task]
    with read_write(hc):
        hc.run.dir = hc.runtime.output_dir
    try:
        yield
    finally:
        sys.argv = argv
        with read_write(hc):
            hc.run.dir = run_dir
