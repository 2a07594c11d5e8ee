"""Structured config of ``predict.py``, registered in Hydra's ConfigStore.

``conf/predict.yaml`` is merged onto :class:`PredictConfig`, so a misspelt key (``topk=3``) or a
value of the wrong type (``batch_size=big``) fails before the model loads, naming the key.

Why ``predict.py`` reads its YAML through the ConfigStore instead of ``config_path="conf"``:
Hydra treats every folder of the primary config directory as a config group, and ``conf/model/``
is training's model group, so ``python predict.py model=<run dir>`` would be read as "pick the
option <run dir> of group model" and fail. :func:`register_configs` stores ``conf/predict.yaml``
and the ``conf/tta/`` options (and nothing else), so ``model`` stays a plain key here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf


@dataclass
class PredictConfig:
    model: str = MISSING  # a bundle folder, a training run folder, or a .ckpt
    input: str = MISSING  # image file, folder, zip, CSV of paths, or a Kaggle dataset folder
    output: str = MISSING  # submission CSV; the top-k table goes next to it (<stem>_topk.csv)
    sample_submission: str | None = None  # Kaggle sample submission: ids and order of the output
    evaluate: bool = False  # score on a labelled set and write an HTML report
    labels: str | None = None  # CSV of Id,Category with the truth for `input` (evaluate=true)
    # photos of none of the model's classes (folder, zip, CSV): evaluate=true adds an open-set
    # section to the report (ROC curve, AUROC, false accepts at the bundle's keep rate)
    unknown: str | None = None
    report_dir: str | None = None  # default: <output stem>_report/ next to the output
    # TTA preset: `_target_` is a class in carclf.data.tta; its size/mean/std come from the model.
    tta: Any = field(default_factory=lambda: {"_target_": "carclf.data.tta.NoTTA"})
    top_k: int = 3
    batch_size: int = 32
    num_workers: int = 2  # loader processes decoding images
    device: str = "auto"  # auto | cpu | cuda | cuda:1 ...
    backend: str = "auto"  # auto | torch | onnx (see Classifier.load)
    progress: bool = True  # tqdm progress bar
    ece_bins: int = 15
    gallery: int = 16  # most confident mistakes shown in the report
    # Grad-CAM heat maps (carclf.inference.explain; need the model's PyTorch weights):
    explain: bool = False  # an overlay PNG per photo in explain_dir, for its predicted class
    explain_dir: str | None = None  # default: <output stem>_explain/ next to the output
    explain_size: int = 448  # longest side of an overlay, in pixels
    report_explain: bool = True  # the report shows maps of its mistakes and 4 correct answers


def register_configs(conf_dir: str | Path | None = None) -> None:
    """Store the schema; with ``conf_dir`` also its ``predict.yaml`` and ``tta/*.yaml`` options."""
    cs = ConfigStore.instance()
    cs.store(name="predict_schema", node=PredictConfig)
    if conf_dir is None:
        return
    conf_dir = Path(conf_dir)
    for option in sorted((conf_dir / "tta").glob("*.yaml")):
        cs.store(group="tta", name=option.stem, node=OmegaConf.load(option))
    cs.store(name="predict", node=OmegaConf.load(conf_dir / "predict.yaml"))


register_configs()
