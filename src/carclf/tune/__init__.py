"""Hyper-parameter search: an Optuna study driven by a Hydra sweeper, and the job side of a trial.

``carclf.tune.sweeper`` asks the study for trials and launches them as Hydra jobs;
``carclf.tune.trial`` opens the same trial from the study's storage inside the job, so Lightning
can report validation accuracy per epoch and stop an unpromising or diverging trial early;
``carclf.tune.report`` writes the sweep's report. Optuna is an optional extra (``pip install
carclf[tune]``): nothing here imports it until a search runs.
"""
