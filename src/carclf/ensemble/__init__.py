"""k-fold (or any) ensembles as one bundle: ``python -m carclf.ensemble RUN... --out DIR``.

Modules:
    build  ``build_ensemble``: members' logits averaged, temperature refitted out of fold
The network itself (``EnsembleNet``) lives in :mod:`carclf.models.ensemble`, so every loader of
bundles knows it without importing this package.
"""

from carclf.ensemble.build import EnsembleError, build_ensemble, check_compatible

__all__ = ["EnsembleError", "build_ensemble", "check_compatible"]
