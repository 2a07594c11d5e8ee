"""The GPU recipe ``sfdl_b6`` really runs: its seven stages on EfficientNet-B6, on a CPU.

Random weights (no hub), tiny images, two batches a stage: what is checked is the schedule the
original notebook ran by hand (head -> 1/2 -> 3/4 -> all at 224 px -> all at 448 px with falling
learning rates), stage by stage, not accuracy.
"""

from __future__ import annotations

import pytest
from test_staged_training import Spy, compose_train

from carclf.train.run import train

STAGES = ["head", "half", "three_quarters", "full", "hires1", "hires2", "hires3"]


@pytest.mark.slow
def test_sfdl_b6_runs_its_seven_stages(sfdl_photos, tmp_path):
    cfg = compose_train(
        [
            "experiment=sfdl_b6",
            f"data.path={sfdl_photos}",
            "model.weights=none",
            "data.image_size=32",
            "data.batch_size=4",
            "data.num_workers=0",
            "data.val_fraction=0.3",
            "trainer.accelerator=cpu",
            "trainer.precision=32-true",
            "trainer.limit_train_batches=2",
            "trainer.limit_val_batches=1",
            "trainer.enable_progress_bar=false",
            "fit_temperature=false",
            *(f"stages.{s}.epochs=1" for s in STAGES),
            *(f"stages.{s}.image_size=64" for s in STAGES[4:]),
            *(f"stages.{s}.batch_size=2" for s in STAGES[4:]),
        ]
    )
    spy = Spy()
    metrics = train(cfg, tmp_path / "run", callbacks=[spy])
    assert metrics["epochs"] == 7 and not metrics["cache_seconds"]  # cache off: the GPU path
    seen = [spy.epochs[e] for e in range(7)]
    groups = [len(s["trainable_groups"]) for s in seen]
    num_groups = 11  # EfficientNet: stem, 7 block stages, conv_head (+ blocks split by timm)
    assert groups[0] == 0  # head only
    assert 0 < groups[1] < groups[2] < groups[3]  # 1/2 -> 3/4 -> all
    assert groups[3] == groups[4] == groups[5] == groups[6] >= num_groups - 2
    assert [s["image_size"] for s in seen] == [32, 32, 32, 32, 64, 64, 64]
    assert [s["input_shape"][-1] for s in seen] == [32, 32, 32, 32, 64, 64, 64]
    assert [s["batch"] for s in seen] == [4, 4, 4, 4, 2, 2, 2]
    head_lr = [s["lrs"]["head"] for s in seen]
    # cosine stages start from their warmup; hires stages start at their plateau lr
    assert head_lr[4] == pytest.approx(1e-5) and head_lr[5] == pytest.approx(1e-5)
    assert head_lr[6] == pytest.approx(1e-6)
    assert max(head_lr[:4]) > 1e-4
    assert all(s["input_start"] == 0 for s in seen)
    assert (tmp_path / "run" / "bundle" / "meta.json").is_file()
