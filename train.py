"""Train a car classifier: python train.py data.path=<dataset> [experiment=<recipe>] [overrides]."""

import hydra
from omegaconf import DictConfig

import carclf.config  # noqa: F401  (registers the structured config schema)
from carclf.cli import run_safely


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    from carclf.train.run import train

    metrics = run_safely(lambda: train(cfg, HydraConfig.get().runtime.output_dir))
    return metrics.get("val_acc")  # the value a Hydra sweeper optimises


if __name__ == "__main__":
    main()
