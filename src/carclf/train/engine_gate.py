"""The gate a low-precision prefix engine passes before it computes a feature cache, and the
choice ``cache_engine=auto`` makes among the engines that pass.

The gate runs on a sample of the run's own photos (:class:`GateSample`): views of a few dozen
training photos (what int8 calibrates on) and a held-out slice (validation photos: no engine has
seen them). It compares the candidate with the fp32 prefix on the held-out slice:

* the relative error of the prefix output, ``||lowp - fp32|| / ||fp32||``
  (:data:`MAX_REL_ERROR`): catches an engine that is broken outright;
* more tellingly, top-1 agreement (:data:`MIN_AGREEMENT`) of a head that knows the run's classes,
  fed the network's own fp32 tail on each engine's output. At cache time no head has been
  trained yet (the first stage's head is random, and its agreement says little about features
  a head will learn from), so the gate's head is the nearest class mean (cosine, after removing
  the features' common mean) of the pooled fp32 tail features of the calibration photos: a head
  fitted on the run's labels, in the feature space the trained head will use.

Measured on stanford-cars-dev (photos spread over the split), Lite0 @ 224, the prefix
``cpu_best`` caches: int8 relative error 0.09, agreement 0.94; bf16 0.03 and 0.94-0.97; a
shuffled (broken) engine 1.0 and 0.09-0.13. A linear head trained on the int8 or bf16 cache
scored within noise (-2..+1 points on 300 test photos) of one trained on the fp32 cache, tested on
fp32 features.

``auto`` times every engine that passes, and the fp32 baseline, on the held-out slice (the min of
:data:`TIMING_REPEATS` runs: a shared box's noise only slows a run down) and keeps the fastest.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from carclf.models.network import CarNet
from carclf.train import lowp_engines
from carclf.train.lowp_engines import LOW_PRECISION, unavailable

log = logging.getLogger(__name__)

MAX_REL_ERROR = 0.2
MIN_AGREEMENT = 0.85
TIMING_REPEATS = 3
BATCH = 32


@dataclasses.dataclass
class GateSample:
    """Preprocessed views: ``calibration`` (training photos, with ``labels``) and ``held``
    (held-out photos, never used to calibrate)."""

    calibration: torch.Tensor
    labels: torch.Tensor
    held: torch.Tensor


@dataclasses.dataclass
class GateResult:
    engine: str
    passed: bool
    why: str = ""
    rel_error: float | None = None
    agreement: float | None = None
    views_per_s: float | None = None

    def to_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in vars(self).items()}


@torch.inference_mode()
def run_batches(engine, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([engine(x[i : i + BATCH]).float() for i in range(0, len(x), BATCH)])


def views_per_s(engine, x: torch.Tensor, beat: float | None = None) -> float:
    """Views/s of ``engine`` on ``x`` (already warm): the fastest of a few runs, stopping early
    once a run is over twice as slow as ``beat`` views/s (it cannot win)."""
    best = float("inf")
    for _ in range(TIMING_REPEATS):
        t = time.perf_counter()
        run_batches(engine, x)
        best = min(best, time.perf_counter() - t)
        if beat is not None and len(x) / best < beat / 2:
            break
    return len(x) / max(best, 1e-9)


class Reference:
    """The fp32 prefix's outputs on a :class:`GateSample` and the gate's nearest-class-mean
    head."""

    def __init__(self, fp32, net: CarNet, cut: int, sample: GateSample):
        self.net, self.cut, self.sample = net, cut, sample
        self.held = run_batches(fp32, sample.held)
        pooled = self._pooled(run_batches(fp32, sample.calibration))
        self.center = pooled.mean(0)  # pooled features share a large mean: compare the rest
        pooled = F.normalize(pooled - self.center, dim=1)
        labels = sample.labels
        self.means = torch.stack([pooled[labels == c].mean(0) for c in labels.unique()])
        self.means = F.normalize(self.means, dim=1)
        self.predicted = self.predict(self.held)

    @torch.inference_mode()
    def _pooled(self, feats: torch.Tensor) -> torch.Tensor:
        net, was_training = self.net, self.net.training
        net.eval()
        try:
            out = [
                net.head(net.features_from(feats[i : i + BATCH], self.cut), pre_logits=True)
                for i in range(0, len(feats), BATCH)
            ]
        finally:
            net.train(was_training)
        return torch.cat(out).float()

    def predict(self, feats: torch.Tensor) -> torch.Tensor:
        pooled = F.normalize(self._pooled(feats) - self.center, dim=1)
        return (pooled @ self.means.T).argmax(1)

    def check(self, engine, name: str) -> GateResult:
        """Gate ``engine`` (never raises: an engine that fails is an engine that does not pass)."""
        try:
            got = run_batches(engine, self.sample.held)
        except Exception as e:
            return GateResult(name, False, f"it failed: {type(e).__name__}: {e}")
        if got.shape != self.held.shape:
            return GateResult(name, False, f"output shape {tuple(got.shape)} is not fp32's")
        rel = float((got - self.held).norm() / self.held.norm().clamp_min(1e-12))
        agree = float((self.predict(got) == self.predicted).float().mean())
        result = GateResult(name, True, "", rel, agree)
        if not (rel <= MAX_REL_ERROR and agree >= MIN_AGREEMENT):
            result.passed = False
            result.why = (
                f"relative error {rel:.3f} (max {MAX_REL_ERROR:g}), top-1 agreement with fp32 "
                f"{agree:.3f} (min {MIN_AGREEMENT:g}) on {len(got)} held-out views"
            )
        return result


def _close(engine) -> None:
    close = getattr(engine, "close", None)
    if close is not None:
        close()


def candidates(choice: str, recorded: str | None) -> list[str]:
    """Low-precision engines to try: the one a resumed run recorded, the one asked for, or
    (``auto``) all of them."""
    if recorded is not None:
        return [recorded] if recorded in LOW_PRECISION else []
    if choice in LOW_PRECISION:
        return [choice]
    if choice != "auto":
        return []
    # bf16 without AMX tiles ran the prefix at 0.45-0.62x fp32 ONNX Runtime (AVX512-BF16 only,
    # BENCHMARKS.md): auto does not spend a gate and a timing on it there
    return [n for n in LOW_PRECISION if n != "bf16" or "amx_bf16" in lowp_engines.cpu_flags()]


def select(
    names: list[str],
    build: Callable[[str], object],
    reference: Reference,
    baseline,
    *,
    measure: bool,
) -> tuple[object | None, list[GateResult]]:
    """The engine to use among ``names`` (built by ``build``) that pass the gate: with
    ``measure``, the fastest of them and of ``baseline`` (None: the baseline wins); else the first
    that passes. Every engine not chosen is closed; each one skipped gets one log line."""
    results, passed = [], []
    for name in names:
        why = unavailable(name)
        engine = None
        if why is None:
            try:
                engine = build(name)
            except Exception as e:
                why = f"it cannot be built: {type(e).__name__}: {e}"
        if engine is None:
            results.append(GateResult(name, False, why))
            log.info("cache engine %s skipped: %s", name, why)
            continue
        result = reference.check(engine, name)
        results.append(result)
        if not result.passed:
            log.warning("cache engine %s failed its gate (%s): using fp32", name, result.why)
            _close(engine)
            continue
        passed.append((engine, result))
        if not measure:
            break
    if not passed:
        return None, results
    if not measure:
        return passed[0][0], results
    base = GateResult(getattr(baseline, "name", "fp32"), True, "fp32 baseline", 0.0, 1.0)
    base.views_per_s = views_per_s(baseline, reference.sample.held)
    results.append(base)
    for engine, result in passed:
        result.views_per_s = views_per_s(engine, reference.sample.held, base.views_per_s)
    best, best_result = max(passed, key=lambda p: p[1].views_per_s)
    for engine, _ in passed:
        if engine is not best:
            _close(engine)
    if best_result.views_per_s <= base.views_per_s:
        _close(best)
        return None, results
    return best, results
