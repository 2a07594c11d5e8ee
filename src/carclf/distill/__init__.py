"""Knowledge distillation: ``python train.py experiment=distill teacher=<bundle>``.

Modules:
    targets  ``attach_teacher``: the teacher's soft targets for every training (and unlabelled)
             photo, computed once; the loss itself is ``CarClassifier.row_loss``
"""

from carclf.distill.targets import attach_teacher

__all__ = ["attach_teacher"]
