"""Hydra multirun: collect every job's metrics.json into one summary table at the end."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
from hydra.experimental.callback import Callback

log = logging.getLogger(__name__)


def summarize(sweep_dir: str | Path) -> pd.DataFrame:
    rows = []
    for path in sorted(Path(sweep_dir).glob("*/metrics.json")):
        m = json.loads(path.read_text())
        rows.append(
            {
                "job": path.parent.name,
                "overrides": " ".join(m.get("overrides", [])),
                **{k: v for k, v in m.items() if isinstance(v, (int, float))},
            }
        )
    return pd.DataFrame(rows)


class SweepSummary(Callback):
    """Writes ``summary.csv`` and ``summary.md`` in the sweep dir and prints the table."""

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        table = summarize(sweep_dir)
        if table.empty:
            log.warning("sweep %s: no job wrote metrics.json", sweep_dir)
            return
        table.to_csv(sweep_dir / "summary.csv", index=False)
        cols = [
            c for c in ("job", "overrides", "val_acc", "val_loss", "train_seconds") if c in table
        ]
        md = (
            table[cols].to_markdown(index=False)
            if _has_tabulate()
            else table[cols].to_string(index=False)
        )
        (sweep_dir / "summary.md").write_text(md + "\n")
        print(f"\nsweep summary ({sweep_dir}):\n{md}")


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True
