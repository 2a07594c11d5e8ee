"""carclf: turn a folder of car photos into a strong car-model classifier, and serve it."""

__version__ = "0.1.0"

__all__ = ["Classifier", "__version__"]


def __getattr__(name):
    # Lazy: `import carclf` stays cheap (no torch import) for the CLI tools that do not need it.
    if name == "Classifier":
        from carclf.inference.classifier import Classifier

        return Classifier
    raise AttributeError(name)
