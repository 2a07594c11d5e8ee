"""Experiment loggers and extra callbacks from their config groups (``conf/logger``,
``conf/callbacks``), built with ``hydra.utils.instantiate`` as lightning-hydra-template does.

Each entry with a ``_target_`` is built; ``${run_dir}`` in an entry is the run's dir. So adding a
logger or a callback is a YAML file, not an edit of ``train()``:

.. code-block:: yaml

    # conf/callbacks/my_monitor.yaml, then: python train.py 'callbacks=[default,my_monitor]'
    my_monitor:
      _target_: my_package.MyCallback
      every_n_epochs: 2

``logger=tensorboard`` (default), ``logger=csv`` (nothing beyond the CSV log), ``logger=mlflow``,
or several at once: ``'logger=[tensorboard,mlflow]'``. The CSV log is always written by carclf
itself (:mod:`carclf.train.csv_log`): ``curves.png``, resume and the sweep reports read it.

MLflow runs without a server: by default its tracking store is a SQLite file in ``outputs/``
(``outputs/mlflow.db``, artifacts in ``outputs/mlartifacts``); MLflow 3 refuses its old
``./mlruns`` file store unless told otherwise. ``mlflow ui --backend-store-uri
sqlite:///outputs/mlflow.db`` browses it. Any other tracking URI (a server) works the same.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from carclf.errors import CarclfError, ConfigError


def _instantiate(group: str, node: DictConfig | None) -> list:
    """Build every entry of ``node`` that has a ``_target_``; errors name the config key."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    out = []
    for name, entry in (node or {}).items():
        if not isinstance(entry, DictConfig) or "_target_" not in entry:
            continue
        try:
            out.append(instantiate(entry))
        except InstantiationException as e:
            cause = e.__cause__ if isinstance(e.__cause__, CarclfError) else None
            if cause is not None:
                raise cause from None
            raise ConfigError(f"{group}.{name}: cannot build {entry._target_} ({e})") from None
    return out


def configured_loggers(cfg: DictConfig) -> list:
    """The loggers ``cfg.logger`` selects (the CSV log is added by the caller)."""
    return _instantiate("logger", cfg.get("logger"))


def configured_callbacks(cfg: DictConfig) -> list:
    """The callbacks of ``cfg.callbacks`` (conf/callbacks/default.yaml and any added)."""
    return _instantiate("callbacks", cfg.get("callbacks"))


def mlflow_logger(
    run_dir: str,
    experiment_name: str = "carclf",
    run_name: str | None = None,
    tracking_uri: str | None = None,
    artifact_location: str | None = None,
    outputs: str = "outputs",
):
    """An MLflow logger whose store defaults to ``sqlite:///<outputs>/mlflow.db``."""
    from pytorch_lightning.loggers import MLFlowLogger

    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise CarclfError(
            "logger=mlflow needs MLflow: pip install 'carclf[tune]' (or mlflow-skinny)"
        ) from None
    run_dir = Path(run_dir)
    store = Path(outputs).absolute()
    store.mkdir(parents=True, exist_ok=True)
    return MLFlowLogger(
        experiment_name=experiment_name,
        run_name=run_name or run_dir.name,
        tracking_uri=tracking_uri or f"sqlite:///{store / 'mlflow.db'}",
        artifact_location=artifact_location or (store / "mlartifacts").as_uri(),
        tags={"run_dir": str(run_dir.absolute())},
    )
