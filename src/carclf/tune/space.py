"""Search spaces written in Hydra's sweep syntax, sampled by Optuna.

A search dimension is written exactly as a Hydra sweep override (the syntax the
hydra-optuna-sweeper plugin uses too), so a preset reads like a command line:

    stages.top.lr: tag(log, interval(3e-4, 1e-2))   # float, log-uniform
    model.head.dropout: interval(0.0, 0.5)           # float, uniform
    stages.top.trainable_groups: range(1, 4)         # int 1..3 (Hydra's range excludes the stop)
    data.image_size: choice(128, 160, 192)           # categorical
    model.mixup: 0.0,0.2                             # categorical (simple form)

``tag(int, interval(a, b))`` samples integers in [a, b]; ``range`` with a float step samples a
float grid. Turning an override into a distribution is the only Hydra-specific part; the rest is
plain Optuna (``trial.suggest_*``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep

from carclf.errors import CarclfError


def parse_space(params: Mapping[str, str]) -> dict[str, Any]:
    """``{key: "interval(0, 1)"}`` -> ``{key: optuna distribution}``; bad syntax names the key."""
    parser = OverridesParser.create()
    space = {}
    for key, expr in params.items():
        try:
            override = parser.parse_override(f"{key}={expr}")
        except Exception as e:
            raise CarclfError(f"search space {key}: cannot parse {expr!r}: {e}") from None
        space[key] = distribution(override)
    return space


def distribution(override: Override) -> Any:
    """The Optuna distribution of one sweep override (choice, range or interval)."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    key, value = override.get_key_element(), override.value()
    if not override.is_sweep_override():
        raise CarclfError(
            f"search space {key}={override.get_value_string()}: not a range; write choice(...), "
            "range(...), interval(...) or a,b,c (fixed values go on the command line)"
        )
    if isinstance(value, ChoiceSweep):
        return CategoricalDistribution(list(value.list))
    if isinstance(value, RangeSweep):
        start, stop, step = value.start, value.stop, value.step
        if all(isinstance(v, int) for v in (start, stop, step)):
            return IntDistribution(start, stop - 1, step=step)
        return CategoricalDistribution(list(value.range()))
    if isinstance(value, IntervalSweep):
        log = "log" in value.tags
        if "int" in value.tags:
            return IntDistribution(int(value.start), int(value.end), log=log)
        return FloatDistribution(float(value.start), float(value.end), log=log)
    raise CarclfError(f"search space {key}: unsupported sweep {override.get_value_string()}")


def suggest(trial, space: Mapping[str, Any]) -> dict[str, Any]:
    """Ask ``trial`` for a value of every dimension (the param names are the config keys)."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    values = {}
    for key, dist in space.items():
        if isinstance(dist, CategoricalDistribution):
            values[key] = trial.suggest_categorical(key, dist.choices)
        elif isinstance(dist, IntDistribution):
            values[key] = trial.suggest_int(key, dist.low, dist.high, step=dist.step, log=dist.log)
        else:
            values[key] = trial.suggest_float(key, dist.low, dist.high, log=dist.log)
    return values


def override_value(value: Any) -> str:
    """A Python value as the right-hand side of a Hydra override."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value)
    return str(value)


def as_overrides(values: Mapping[str, Any]) -> list[str]:
    return [f"{k}={override_value(v)}" for k, v in values.items()]
