"""Engines that run a stage's frozen backbone prefix for the feature cache.

The cache is built once per stage, but on a CPU it used to be most of a run: PyTorch eager runs
the frozen Lite0 prefix at ~35 image-views/s on 2 cores, while ONNX Runtime runs the same graph
3-4x faster (fused convolutions + BatchNorm, no autograd bookkeeping, no spinning threads). The
prefix is frozen and in eval mode, so it is a pure function of its input: any engine that
reproduces PyTorch's numbers may compute it.

* ``torch``: the network itself, in eval mode, channels_last (1.5x eager's default layout on a
  CPU). The only engine on GPUs: there PyTorch is already at the hardware's speed.
* ``onnx``: groups ``0..cut-1`` exported at the stage's image size (dynamic batch, constant
  "same" padding as in :func:`carclf.models.padding.static_padding_net`) and run by ONNX Runtime.
  Before it is trusted it must reproduce PyTorch on the first real batch within
  :data:`PARITY_TOLERANCE`; otherwise the cache falls back to ``torch`` with one log line saying
  why.
* ``int8``, ``bf16``: low-precision engines on a CPU (:mod:`carclf.train.lowp_engines`): ONNX
  Runtime static int8 calibrated on the run's own photos, PyTorch bf16 autocast (oneDNN). They
  must pass a gate on held-out photos (:mod:`carclf.train.engine_gate`); one that fails, or cannot
  run here, is skipped with one log line and the cache is computed in fp32 (``onnx``).
* ``auto``: on a CPU, the fastest of ``onnx`` and the low-precision engines that pass their
  gate, by a short measurement on the machine the run is on (chosen once per run and recorded
  in the cache dir, so a resumed run keeps it); ``torch`` on a GPU (measured:
  ``benchmarks/bench_cache.py``). :func:`resolve_engine` gives the fp32 engine it starts from.

Engines take and return fp32 tensors; the cache stores fp16.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from carclf.errors import ConfigError
from carclf.models.network import CarNet
from carclf.models.padding import static_padding_net

log = logging.getLogger(__name__)

ENGINES = ("auto", "torch", "onnx", "int8", "bf16")
CPU_ONLY = ("onnx", "int8", "bf16")
# fp32 kernels differ in summation order only; measured max |diff| 7e-5..2e-4 on Lite0/Lite2.
PARITY_TOLERANCE = 2e-3


def check_engine(name: str, device: str | torch.device) -> None:
    """Fail at start-up (not after minutes of training) on an engine that cannot run here."""
    if name not in ENGINES:
        raise ConfigError(f"cache_engine={name!r}: choose one of {', '.join(ENGINES)}")
    if name in CPU_ONLY and torch.device(device).type != "cpu":
        raise ConfigError(
            f"cache_engine={name} runs on the CPU only, but this run trains on {device}; "
            "use cache_engine=auto or torch"
        )
    if name == "onnx":
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise ConfigError(
                "cache_engine=onnx needs onnxruntime (pip install onnxruntime)"
            ) from None


def resolve_engine(name: str, device: str | torch.device) -> str:
    """The fp32 engine ``name`` means on ``device`` (``auto`` -> the fastest measured fp32 one;
    ``int8``/``bf16`` -> the fp32 engine they fall back to)."""
    check_engine(name, device)
    if name in ("torch", "onnx"):
        return name
    if torch.device(device).type != "cpu":
        return "torch"
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "torch"
    return "onnx"


class TorchPrefix:
    """Groups ``0..cut-1`` of the live network (eval mode, no autograd)."""

    name = "torch"

    def __init__(self, net: CarNet, cut: int, channels_last: bool = True):
        self.net, self.cut, self.channels_last = net, cut, channels_last

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        device = next(self.net.parameters()).device
        x = x.to(device, non_blocking=True)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        was_training = self.net.training
        self.net.eval()
        try:
            return self.net.features_from(x, 0, self.cut).float().contiguous()
        finally:
            self.net.train(was_training)


class _Prefix(nn.Module):
    def __init__(self, net: CarNet, cut: int):
        super().__init__()
        self.net, self.cut = net, cut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features_from(x, 0, self.cut)


class OnnxPrefix:
    """Groups ``0..cut-1`` exported to ONNX at ``image_size`` and run by ONNX Runtime."""

    name = "onnx"

    def __init__(self, path: Path, threads: int | None = None):
        import onnxruntime as ort

        from carclf.inference.onnx_backend import session_options

        self.path = path
        self.session = ort.InferenceSession(
            str(path), session_options(threads), providers=["CPUExecutionProvider"]
        )
        self.input = self.session.get_inputs()[0].name

    @classmethod
    def export(cls, net: CarNet, meta, cut: int, image_size: int, workdir: Path | None = None):
        """Export the prefix of ``net`` (with the backbone ``meta`` describes) and load it."""
        t0 = time.perf_counter()
        meta = dataclasses.replace(meta, image_size=image_size)
        static = static_padding_net(net, meta)  # a copy: the live network is left as it is
        module = _Prefix(static, cut).eval()
        if workdir is not None:
            workdir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(
            prefix=f"prefix-cut{cut}-{image_size}px-", suffix=".onnx", dir=workdir
        )
        os.close(fd)
        path = Path(name)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (torch.zeros(1, 3, image_size, image_size),),
                str(path),
                dynamo=False,
                opset_version=17,
                input_names=["input"],
                output_names=["features"],
                dynamic_axes={"input": {0: "batch"}, "features": {0: "batch"}},
                do_constant_folding=True,
            )
        engine = cls(path)
        log.info(
            "exported frozen groups 0-%d at %d px to ONNX (%.1f s)",
            cut - 1,
            image_size,
            time.perf_counter() - t0,
        )
        return engine

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input: x.detach().cpu().float().numpy()})[0]
        return torch.from_numpy(out)

    def close(self) -> None:
        self.session = None
        self.path.unlink(missing_ok=True)


@torch.inference_mode()
def max_abs_diff(engine, reference: TorchPrefix, x: torch.Tensor) -> float:
    """Largest absolute difference between ``engine`` and PyTorch eager (fp32) on ``x``."""
    ref = reference(x).float()
    got = engine(x).float()
    if ref.shape != got.shape:
        return float("inf")
    return float((ref - got).abs().max())


class CheckedEngine:
    """``engine`` that proves itself against PyTorch on the first batch it sees.

    If the first batch differs by more than :data:`PARITY_TOLERANCE` (or the engine fails), every
    batch from then on goes through ``fallback`` and one log line says why.
    """

    def __init__(self, engine, fallback: TorchPrefix, checked: bool = False):
        self.engine, self.fallback = engine, fallback
        self.checked = checked  # True: already proven (a low-precision engine's gate)
        self.parity: float | None = None

    @property
    def name(self) -> str:
        return self.engine.name if self.engine is not None else self.fallback.name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.engine is None:
            return self.fallback(x)
        if not self.checked:
            self.checked = True
            try:
                self.parity = max_abs_diff(self.engine, self.fallback, x)
            except Exception as e:  # an engine that cannot run is an engine we do not use
                self._give_up(f"{type(e).__name__}: {e}")
                return self.fallback(x)
            if not self.parity <= PARITY_TOLERANCE:
                self._give_up(f"max |diff| vs PyTorch {self.parity:.2e} > {PARITY_TOLERANCE:g}")
                return self.fallback(x)
            log.info("%s prefix matches PyTorch: max |diff| %.1e", self.engine.name, self.parity)
        return self.engine(x)

    def _give_up(self, why: str) -> None:
        log.warning(
            "%s prefix engine not used (%s): falling back to PyTorch", self.engine.name, why
        )
        close = getattr(self.engine, "close", None)
        if close:
            close()
        self.engine = None

    def close(self) -> None:
        close = getattr(self.engine, "close", None)
        if close:
            close()


def make_engine(
    name: str, net: CarNet, meta, cut: int, image_size: int, workdir: Path | None = None
) -> CheckedEngine:
    """The prefix engine ``name`` (already resolved, not ``auto``) for groups ``0..cut-1``."""
    reference = TorchPrefix(net, cut)
    if name == "torch":
        return CheckedEngine(None, reference)
    try:
        engine = OnnxPrefix.export(net, meta, cut, image_size, workdir)
    except Exception as e:
        log.warning(
            "cannot export the frozen prefix to ONNX (%s: %s): using PyTorch", type(e).__name__, e
        )
        return CheckedEngine(None, reference)
    return CheckedEngine(engine, reference)
