"""carclf: turn a folder of car photos into a strong car-model classifier, and serve it."""

import os

__version__ = "0.1.0"

# albumentations asks PyPI for a newer version at import time; carclf never reaches the network
# at run time (offline boxes would wait on it, and it is not ours to ask).
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__all__ = ["Classifier", "__version__"]


def __getattr__(name):
    # Lazy: `import carclf` stays cheap (no torch import) for the CLI tools that do not need it.
    if name == "Classifier":
        from carclf.inference.classifier import Classifier

        return Classifier
    raise AttributeError(name)
