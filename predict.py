"""Predict with a trained carclf model: a Kaggle submission, a top-k table, and an HTML report.

    python predict.py model=outputs/run input=data/test_upload \\
        sample_submission=data/sample-submission.csv output=submission.csv [tta=none]
    python predict.py model=outputs/run input=data/test_upload labels=test-labels.csv \\
        evaluate=true output=eval.csv      # + eval_report/report.html

Settings: conf/predict.yaml and conf/tta/ (schema: carclf.evaluate.config.PredictConfig, which
says why they are read through the ConfigStore); library code: carclf.evaluate.run.
"""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from carclf.cli import main_exit
from carclf.evaluate.config import register_configs

register_configs(Path(__file__).resolve().parent / "conf")


@hydra.main(version_base="1.3", config_path=None, config_name="predict")
def main(cfg: DictConfig) -> None:
    from carclf.evaluate.run import main as run

    main_exit(run, cfg)


if __name__ == "__main__":
    main()
