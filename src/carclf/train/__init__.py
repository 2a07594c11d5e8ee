"""Training: stages, the stage-scheduling callback, the feature cache, checkpoints, the run."""
