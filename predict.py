"""Predict with a trained carclf model: a Kaggle submission, a top-k table, and an HTML report.

    python predict.py model=outputs/run input=data/test_upload \\
        sample_submission=data/sample-submission.csv output=submission.csv [tta=none]
    python predict.py model=outputs/run input=data/test_upload labels=test-labels.csv \\
        evaluate=true output=eval.csv      # + eval_report/report.html

The repo workflow's shell of ``carclf predict`` (:mod:`carclf.hydra_apps`); settings:
``src/carclf/conf/predict.yaml`` and ``conf/tta/`` (schema: carclf.evaluate.config.PredictConfig);
library code: carclf.evaluate.run.
"""

from carclf.commands import run_as

if __name__ == "__main__":
    run_as("predict")
