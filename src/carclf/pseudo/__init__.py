"""Pseudo-labels for unlabelled photos: ``python -m carclf.pseudo MODEL INPUT --out pseudo.csv``.

Modules:
    threshold  the confidence cut that makes kept labels at least as precise as asked
    labels     ``pseudo_label``: predict, keep the confident answers, write a labelled CSV
"""

from carclf.pseudo.labels import PseudoResult, pseudo_label
from carclf.pseudo.threshold import Threshold, choose_threshold

__all__ = ["PseudoResult", "Threshold", "choose_threshold", "pseudo_label"]
