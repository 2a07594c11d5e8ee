"""The Hydra apps of the ``carclf`` command: ``train`` (and ``search``, its ``-m``) and ``predict``.

Both compose their configs from the YAML files shipped inside the package (``carclf/conf``,
Hydra's ``pkg://carclf.conf`` search path), so they work after ``pip install`` from any folder;
a user's ``--config-dir DIR`` comes first in the search path and overrides them.

Before Hydra composes anything, every ``key=value`` of the command line is checked against the
schema (``carclf.config.TrainConfig``, ``carclf.evaluate.config.PredictConfig``), the appended
``+key=value`` form included: a misspelt key stops the run at once, with the closest key name
("did you mean image_size?"), exit code 2, and nothing written. A run refused at start-up removes
the run dir Hydra made for it; Hydra's own refusals (an unknown option of a group) exit 2 too.
"""

from __future__ import annotations

import dataclasses
import difflib
import shutil
import sys
import typing
from pathlib import Path

from carclf.cli import EXIT_USAGE, fail, run_safely, sigterm_as_interrupt
from carclf.errors import ConfigError

CONF = Path(__file__).resolve().with_name("conf")  # pkg://carclf.conf
CONFIG_PATH = "pkg://carclf.conf"
PREDICT_CONFIG_PATH = "pkg://carclf.conf.no_groups"  # see its docstring


# -- the key check ---------------------------------------------------------------------------


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def key_problem(path: list[str], schema: type) -> str | None:
    """Why the dotted key ``path`` is not in the dataclass ``schema`` (None: it is, or it lies
    under a free-form node such as ``logger`` or a ``stages`` entry's unknown type)."""
    cls, i = schema, 0
    while i < len(path):
        hints = _hints(cls)
        part = path[i]
        if part not in hints:
            where = ".".join(path[:i])
            close = difflib.get_close_matches(part, list(hints), n=1, cutoff=0.6)
            hint = f" (did you mean {'.'.join([*path[:i], close[0]])}?)" if close else ""
            keys = hint or f"; its keys: {', '.join(sorted(hints))}"
            return f"no key {part!r} in {where or 'the config'}{keys}"
        kind = hints[part]
        i += 1
        if dataclasses.is_dataclass(kind):
            cls = kind
            continue
        args = typing.get_args(kind)
        if typing.get_origin(kind) is dict and len(args) == 2 and dataclasses.is_dataclass(args[1]):
            if i + 1 >= len(path):  # the dict itself or one of its entries
                return None
            cls, i = args[1], i + 1
            continue
        return None  # a value, a list or a free-form dict: nothing below to check
    return None


def check_overrides(overrides: list[str], schema: type, groups: set[str]) -> None:
    """A ConfigError for the first command-line override whose key is not in ``schema``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as e:
        raise ConfigError(str(e).strip().splitlines()[0]) from None
    for o in parsed:
        key = o.key_or_group
        if o.package is not None or "/" in key or key.split(".")[0] == "hydra":
            continue  # a group option placed somewhere, or Hydra's own settings
        if key in groups:
            continue  # group=option
        problem = key_problem(key.split("."), schema)
        if problem:
            shown = o.input_line.split("=", 1)[0]
            raise ConfigError(f"{shown}: {problem}")


def unknown_keys(cfg, prefix: str = "") -> list[str]:
    """Keys of a composed config that its schema does not have (``+key`` lets Hydra add them)."""
    from omegaconf import DictConfig, OmegaConf

    out = []
    kind = OmegaConf.get_type(cfg)
    known = {f.name for f in dataclasses.fields(kind)} if dataclasses.is_dataclass(kind) else None
    for key in cfg.keys():
        full = f"{prefix}{key}"
        if known is not None and key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.6)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            out.append(f"{full}: not a key of the schema{hint}")
            continue
        child = cfg._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            out += unknown_keys(child, f"{full}.")
    return out


def group_names(*dirs) -> set[str]:
    """The config groups (sub-folders) of the config folders ``dirs``."""
    return {p.name for d in dirs if d for p in Path(d).iterdir() if p.is_dir()}


# -- running a Hydra app ---------------------------------------------------------------------


def run_hydra(
    task,
    config_name: str,
    argv: list[str],
    schema: type,
    groups: set[str],
    config_path: str | None = CONFIG_PATH,
) -> int:
    """Parse ``argv`` as Hydra's command line, check its keys, run ``task``; the exit code."""
    from hydra._internal.utils import _run_hydra, get_args_parser

    parser = get_args_parser()
    args = parser.parse_args(argv)
    user_groups = group_names(args.config_dir) if args.config_dir else set()
    try:
        check_overrides(args.overrides, schema, groups | user_groups)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    started = False

    def job(cfg):
        nonlocal started
        started = True
        return task(cfg)

    try:
        _run_hydra(
            args=args,
            args_parser=parser,
            task_function=job,
            config_path=config_path,
            config_name=config_name,
        )
    except SystemExit as e:
        if e.code == 1 and not started:  # Hydra refused the config before the job ran
            return EXIT_USAGE
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        from hydra.core.global_hydra import GlobalHydra

        GlobalHydra.instance().clear()  # the next app (or a test's compose) starts afresh
    return 0


def _only_hydra_files(run_dir: Path, job: str) -> bool:
    return run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {".hydra", f"{job}.log"}


def remove_failed_start(run_dir: Path, job: str) -> None:
    """Remove a run dir that a run refused at start-up made (and empty parents it made inside
    the working dir, e.g. ``outputs/runs/``). Anything a run had trained or cached stays."""
    if (run_dir / "checkpoints").exists() or (run_dir / "cache").exists():
        return
    cwd, run_dir = Path.cwd().resolve(), run_dir.resolve()
    if run_dir == cwd or run_dir in cwd.parents:  # hydra.run.dir=.: only what Hydra put there
        shutil.rmtree(run_dir / ".hydra", ignore_errors=True)
        (run_dir / f"{job}.log").unlink(missing_ok=True)
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    parent = run_dir.parent
    while parent != cwd and cwd in parent.parents:
        try:
            parent.rmdir()  # only when empty
        except OSError:
            break
        parent = parent.parent


# -- train -----------------------------------------------------------------------------------


def _train_job(cfg) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    fresh = _only_hydra_files(run_dir, hc.job.name)
    try:
        return _train(cfg, run_dir)
    except SystemExit as e:
        if e.code == EXIT_USAGE and fresh:
            remove_failed_start(run_dir, hc.job.name)
        raise


def _train(cfg, run_dir: Path) -> float | None:
    from carclf.phases import clock_start
    from carclf.train.multirun import single_job_command_line
    from carclf.train.run import train

    started = clock_start()
    problems = unknown_keys(cfg)
    if problems:
        fail("; ".join(problems))
    with single_job_command_line(), sigterm_as_interrupt():
        if cfg.get("tune", {}).get("storage"):  # a search trial (carclf.tune): may be pruned
            from carclf.tune.trial import run_trial

            return run_trial(cfg, run_dir, train)
        metrics = run_safely(lambda: train(cfg, run_dir, started=started))
    return metrics.get("val_acc")  # the value a Hydra sweeper optimises


def train_main(argv: list[str]) -> int:
    """``carclf train key=value ...`` (``--help`` says which keys matter)."""
    import carclf.config  # registers the schema in Hydra's ConfigStore

    return run_hydra(_train_job, "train", argv, carclf.config.TrainConfig, group_names(CONF))


def search_main(argv: list[str]) -> int:
    """``carclf search ...`` is ``carclf train -m hparams_search=cpu_quick ...``."""
    chosen = any(a.split("=")[0].lstrip("+") == "hparams_search" for a in argv)
    return train_main(["-m", *argv] + ([] if chosen else ["hparams_search=cpu_quick"]))


# -- predict ---------------------------------------------------------------------------------


def _predict_job(cfg) -> None:
    from carclf.evaluate.run import main as run

    code = run(cfg)
    if code:
        sys.exit(code)


def predict_main(argv: list[str]) -> int:
    """``carclf predict model=... input=... output=...``."""
    from carclf.evaluate.config import PredictConfig, register_configs

    # Not pkg://carclf.conf: its model/ group would turn model=<run dir> into a group choice.
    # The ConfigStore holds predict.yaml and the tta/ options (carclf.evaluate.config).
    register_configs(CONF)
    return run_hydra(
        _predict_job, "predict", argv, PredictConfig, {"tta"}, config_path=PREDICT_CONFIG_PATH
    )
