"""Hydra multirun: collect every job's metrics.json into one summary table at the end."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
from hydra.experimental.callback import Callback

from carclf import io

log = logging.getLogger(__name__)


def summarize(sweep_dir: str | Path) -> pd.DataFrame:
    """One row per job: its ``metrics.json`` and, for search trials, its ``trial.json``.

    A search trial that was pruned or failed has no metrics.json; its trial.json (state, reason,
    objective) still gives it a row, so the table shows every trial.
    """
    rows = []
    jobs = {p.parent for p in Path(sweep_dir).glob("*/metrics.json")}
    jobs |= {p.parent for p in Path(sweep_dir).glob("*/trial.json")}
    for job in sorted(jobs, key=lambda p: (len(p.name), p.name)):
        m = _read_json(job / "metrics.json")
        t = _read_json(job / "trial.json")
        row = {"job": job.name}
        if m.get("overrides"):
            row["overrides"] = " ".join(m["overrides"])
        if t:  # a search trial: its searched values, state and reason
            row |= {"state": t.get("state"), "reason": t.get("reason", "")}
            if t.get("params"):
                row["overrides"] = " ".join(f"{k}={v}" for k, v in t["params"].items())
            if t.get("value") is not None and "val_acc" not in m:
                row["val_acc"] = t["value"]
        row |= {k: v for k, v in m.items() if isinstance(v, (int, float))}
        rows.append(row)
    return pd.DataFrame(rows)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def write_summary(sweep_dir: str | Path, echo: bool = True) -> pd.DataFrame:
    """Write ``summary.csv`` and ``summary.md`` (atomically); callable while a sweep runs."""
    sweep_dir = Path(sweep_dir)
    table = summarize(sweep_dir)
    if table.empty:
        log.warning("sweep %s: no job wrote metrics.json", sweep_dir)
        return table
    with io.atomic_path(sweep_dir / "summary.csv") as tmp:
        table.to_csv(tmp, index=False)
    cols = [
        c
        for c in ("job", "state", "overrides", "val_acc", "val_loss", "train_seconds", "reason")
        if c in table
    ]
    md = (
        table[cols].to_markdown(index=False)
        if _has_tabulate()
        else table[cols].to_string(index=False)
    )
    io.write_text(sweep_dir / "summary.md", md + "\n")
    if echo:
        print(f"\nsweep summary ({sweep_dir}):\n{md}")
    return table


class SweepSummary(Callback):
    """Writes ``summary.csv`` and ``summary.md`` in the sweep dir and prints the table."""

    def on_multirun_end(self, config, **kwargs) -> None:
        write_summary(config.hydra.sweep.dir)


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True
