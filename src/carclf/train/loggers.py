"""Which experiment loggers a run writes to: the ``logger`` config group.

``logger=tensorboard`` (default), ``logger=csv``, ``logger=mlflow``, or several at once:
``'logger=[tensorboard,mlflow]'``. Each option of the group switches on its own key, so a list
of options is the union. The CSV log is always written: ``curves.png`` and the sweep reports are
drawn from it, so ``logger=csv`` means "nothing else".

MLflow runs without a server: by default its tracking store is a SQLite file in ``outputs/``
(``outputs/mlflow.db``, artifacts in ``outputs/mlartifacts``); MLflow 3 refuses its old
``./mlruns`` file store unless told otherwise. ``mlflow ui --backend-store-uri
sqlite:///outputs/mlflow.db`` browses it. Any other tracking URI (a server) works the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class TensorBoardConfig:
    pass  # logs/tensorboard/ in the run dir


@dataclass
class CSVConfig:
    pass  # logs/csv/metrics.csv in the run dir (always written)


@dataclass
class MLflowConfig:
    experiment_name: str = "carclf"
    run_name: str | None = None  # default: the run dir's name
    tracking_uri: str | None = None  # default: sqlite:///<outputs>/mlflow.db
    artifact_location: str | None = None  # default: <outputs>/mlartifacts
    outputs: str = "outputs"  # where the default store lives (relative to the working dir)


@dataclass
class LoggerConfig:
    tensorboard: TensorBoardConfig | None = None
    csv: CSVConfig | None = None
    mlflow: MLflowConfig | None = None


def chosen_loggers(cfg, run_dir: Path, tensorboard, csv) -> list:
    """carclf's TensorBoard and CSV loggers as ``cfg.logger`` selects them, plus MLflow.

    A config without a ``logger`` node (a run saved before the group existed) keeps the old
    behaviour: TensorBoard and CSV.
    """
    choice = cfg.get("logger")
    if choice is None:
        return [tensorboard, csv]
    out = [tensorboard] if choice.get("tensorboard") is not None else []
    out.append(csv)
    if choice.get("mlflow") is not None:
        out.append(mlflow_logger(choice.mlflow, Path(run_dir)))
    return out


def mlflow_logger(c, run_dir: Path):
    from pytorch_lightning.loggers import MLFlowLogger

    from carclf.errors import CarclfError

    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise CarclfError(
            "logger=mlflow needs MLflow: pip install 'carclf[tune]' (or mlflow-skinny)"
        ) from None
    outputs = Path(c.outputs).absolute()
    outputs.mkdir(parents=True, exist_ok=True)
    return MLFlowLogger(
        experiment_name=c.experiment_name,
        run_name=c.run_name or run_dir.name,
        tracking_uri=c.tracking_uri or f"sqlite:///{outputs / 'mlflow.db'}",
        artifact_location=c.artifact_location or (outputs / "mlartifacts").as_uri(),
        tags={"run_dir": str(run_dir.absolute())},
    )
