"""Train a car classifier: python train.py data.path=<dataset> [experiment=<recipe>] [overrides]."""

import hydra
from omegaconf import DictConfig

import carclf.config  # noqa: F401  (registers the structured config schema)
from carclf.cli import run_safely


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    from carclf.train.multirun import single_job_command_line
    from carclf.train.run import clock_start, train

    run_dir = HydraConfig.get().runtime.output_dir
    with single_job_command_line():  # under -m, DDP ranks rerun this job, not the whole sweep
        if cfg.get("tune", {}).get("storage"):  # a search trial (carclf.tune): may be pruned
            from carclf.tune.trial import run_trial

            return run_trial(cfg, run_dir, train)
        metrics = run_safely(lambda: train(cfg, run_dir, started=clock_start()))
    return metrics.get("val_acc")  # the value a Hydra sweeper optimises


if __name__ == "__main__":
    main()
