"""The search report, rewritten after every batch of trials so it can be read mid-sweep.

In the sweep dir:

* ``trials.csv``: one row per trial: state (complete / pruned / fail), objective, reason,
  duration, epochs reported, every searched parameter, and the override line;
* ``summary.csv`` / ``summary.md``: the multirun summary (``carclf.tune.sweep``), which lists
  pruned and failed jobs too;
* ``report.png``: objective per trial by state with the best-so-far curve, validation accuracy per
  epoch for every trial (where pruning cut trials short), and parameter importances (fANOVA, from
  Optuna, once enough trials have completed);
* ``best.txt``: the best trial's value and the full command that reruns it.

Files are written to a temporary name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import logging
import math
import shlex
import sys
from pathlib import Path

import pandas as pd

from carclf import io
from carclf.tune.sweep import write_summary

log = logging.getLogger(__name__)

STATE_COLOURS = {"COMPLETE": "tab:blue", "PRUNED": "tab:orange", "FAIL": "tab:red"}


def trials_table(study) -> pd.DataFrame:
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name.lower(),
                "value": t.value,
                "reason": t.user_attrs.get("reason", ""),
                "duration_s": round(t.duration.total_seconds(), 1) if t.duration else None,
                "epochs_reported": len(t.intermediate_values),
                **{f"param:{k}": v for k, v in t.params.items()},
                "overrides": " ".join(t.user_attrs.get("overrides", [])),
            }
        )
    return pd.DataFrame(rows)


def rerun_command(overrides: list[str], script: str | None = None) -> str:
    """The shell command that trains a trial's config again as a single run."""
    script = script or (Path(sys.argv[0]).name if sys.argv[0].endswith(".py") else "train.py")
    return " ".join(["python", script, *(shlex.quote(o) for o in overrides)])


def best_trial(study):
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        return None
    pick = max if study.direction.name == "MAXIMIZE" else min
    return pick(done, key=lambda t: t.value)


def write_report(study, sweep_dir: str | Path, final: bool = False) -> Path | None:
    sweep_dir = Path(sweep_dir)
    table = trials_table(study)
    if table.empty:
        return None
    with io.atomic_path(sweep_dir / "trials.csv") as tmp:
        table.to_csv(tmp, index=False)
    try:
        write_summary(sweep_dir, echo=False)
    except Exception as e:  # a summary problem must not stop the search
        log.warning("sweep summary not written: %s", e)
    try:
        with io.atomic_path(sweep_dir / "report.png", suffix=".png") as tmp:
            plot_report(study, tmp)
    except Exception as e:
        log.warning("report.png not written: %s", e)
    best = best_trial(study)
    counts = table["state"].value_counts().to_dict()
    head = f"{len(table)} trials ({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))})"
    if best is None:
        text = f"{head}; none completed yet\n"
    else:
        cmd = rerun_command(best.user_attrs.get("overrides", []))
        text = f"{head}\nbest: trial {best.number}, value {best.value:.4f}\nrerun: {cmd}\n"
    io.write_text(sweep_dir / "best.txt", text)
    if final:
        print(
            f"\nsearch report ({sweep_dir}): trials.csv, summary.md, report.png\n{text}", flush=True
        )
    return sweep_dir / "best.txt"


def plot_report(study, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trials = study.get_trials(deepcopy=False)
    maximize = study.direction.name == "MAXIMIZE"
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))

    ax = axes[0]
    for state, colour in STATE_COLOURS.items():
        pts = [(t.number, t.value) for t in trials if t.state.name == state and t.value is not None]
        if pts:
            ax.scatter(*zip(*pts, strict=True), c=colour, label=state.lower(), s=28, zorder=3)
    failed = [t.number for t in trials if t.state.name == "FAIL"]
    for n in failed:
        ax.axvline(n, color=STATE_COLOURS["FAIL"], alpha=0.25, lw=3)
    best, xs, ys = None, [], []
    for t in trials:
        if t.state.name == "COMPLETE" and t.value is not None and math.isfinite(t.value):
            if best is None or (t.value > best if maximize else t.value < best):
                best = t.value
        if best is not None:
            xs.append(t.number)
            ys.append(best)
    if xs:
        ax.step(xs, ys, where="post", color="black", lw=1.5, label="best so far")
    ax.set(xlabel="trial", ylabel="objective (validation accuracy)", title="Objective per trial")
    if failed:
        ax.plot([], [], color=STATE_COLOURS["FAIL"], alpha=0.4, lw=3, label="fail (no value)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)

    ax = axes[1]
    for t in trials:
        if t.intermediate_values:
            steps = sorted(t.intermediate_values)
            colour = STATE_COLOURS.get(t.state.name, "grey")
            ax.plot(
                [s + 1 for s in steps],
                [t.intermediate_values[s] for s in steps],
                c=colour,
                alpha=0.6,
            )
    ax.set(xlabel="epoch", ylabel="validation accuracy", title="Per epoch (orange: pruned)")
    ax.grid(alpha=0.3)

    ax = axes[2]
    importances = param_importances(study)
    if importances:
        names = list(importances)[::-1]
        ax.barh(names, [importances[n] for n in names], color="tab:green")
        ax.set(xlabel="importance (fANOVA)", title="Parameter importances")
        ax.tick_params(axis="y", labelsize=8)
    else:
        ax.text(0.5, 0.5, "importances need 3+ completed trials", ha="center", va="center")
        ax.set_axis_off()
    fig.suptitle(f"study {study.study_name}: {len(trials)} trials")
    fig.tight_layout()
    fig.savefig(path, dpi=90, format="png")
    plt.close(fig)


def param_importances(study) -> dict[str, float]:
    import optuna
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(done) < 3:
        return {}
    try:
        return optuna.importance.get_param_importances(study)
    except Exception as e:  # e.g. every completed trial has the same parameters
        log.info("no parameter importances yet: %s", e)
        return {}
