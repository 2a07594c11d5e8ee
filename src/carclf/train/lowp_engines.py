"""Low-precision prefix engines: ONNX Runtime static int8 and PyTorch bf16 (oneDNN).

A feature cache is augmented views seen through a frozen network, so it tolerates the noise of
int8 or bf16 arithmetic as long as a gate (:mod:`carclf.train.engine_gate`) checks that the
features still say the same thing; both engines here are only ever used through that gate.

* ``int8``: the fp32 ONNX prefix (:class:`~carclf.train.prefix_engine.OnnxPrefix`) quantized to
  static QDQ int8 (:mod:`carclf.inference.int8`), calibrated on the run's own training views
  (a plain view and a train-time crop of a few dozen photos). ONNX Runtime runs the integer
  convolutions on VNNI (AVX512-VNNI/AVX-VNNI) or AMX-INT8 where the CPU has them.
* ``bf16``: the live network under ``torch.autocast("cpu", dtype=torch.bfloat16)``,
  channels_last; oneDNN runs it on AMX-BF16 or AVX512-BF16. (ONNX Runtime's CPU provider has no
  bf16 convolution kernels, so the bf16 engine is PyTorch's.)

Each has :func:`unavailable`: the reason it cannot run here (None when it can), so a run skips
it with that reason instead of failing.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from carclf.models.network import CarNet
from carclf.train.prefix_engine import OnnxPrefix, TorchPrefix

log = logging.getLogger(__name__)

LOW_PRECISION = ("int8", "bf16")


def cpu_flags() -> set[str]:
    """The CPU's feature flags (``/proc/cpuinfo``; empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def unavailable(name: str) -> str | None:
    """Why engine ``name`` cannot run on this machine, or None when it can."""
    if name == "int8":
        try:
            import onnxruntime  # noqa: F401
            from onnxruntime.quantization import QuantFormat, quantize_static  # noqa: F401
        except ImportError as e:
            return f"onnxruntime with its quantization tools is needed ({e})"
        return None
    if name == "bf16":
        if not torch.backends.mkldnn.is_available():
            return "this PyTorch has no oneDNN (mkldnn)"
        try:
            supported = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            supported = bool({"avx512_bf16", "amx_bf16"} & cpu_flags())
        if not supported:
            return "the CPU has no bf16 instructions (avx512_bf16 / amx_bf16): bf16 is emulated"
        return None
    return f"not a low-precision engine: {name!r}"


class Bf16TorchPrefix(TorchPrefix):
    """Groups ``0..cut-1`` of the live network under bf16 autocast (eval mode, channels_last)."""

    name = "bf16"

    def __init__(self, net: CarNet, cut: int):
        super().__init__(net, cut, channels_last=True)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return super().__call__(x.float())


class Int8OnnxPrefix(OnnxPrefix):
    """The fp32 ONNX prefix quantized to static QDQ int8, run by ONNX Runtime."""

    name = "int8"

    @classmethod
    def from_fp32(cls, fp32: OnnxPrefix, calibration: torch.Tensor, threads: int | None = None):
        """Quantize the exported fp32 prefix ``fp32``, calibrated on ``calibration`` (views of
        the run's training photos, preprocessed as the cache preprocesses them)."""
        from carclf.inference.int8 import prepare, quantize_static_qdq

        t0 = time.perf_counter()
        src = Path(fp32.path)
        prepared = src.with_name(src.stem + ".prepared.onnx")
        out = src.with_name(src.stem + ".int8.onnx")
        try:
            prepare(src, prepared)
            quantize_static_qdq(prepared, out, calibration, fp32.input, moving_average=True)
        except Exception:
            out.unlink(missing_ok=True)
            raise
        finally:
            prepared.unlink(missing_ok=True)
            prepared.with_suffix(".onnx.data").unlink(missing_ok=True)
        engine = cls(out, threads)
        log.info(
            "int8 prefix: static QDQ calibrated on %d training views (%.1f s)",
            len(calibration),
            time.perf_counter() - t0,
        )
        return engine


def build_low_precision(
    name: str, net: CarNet, cut: int, fp32: OnnxPrefix | None, calibration: torch.Tensor
):
    """Engine ``name`` (``int8``: from the exported ``fp32`` prefix; ``bf16``: the network)."""
    if name == "bf16":
        return Bf16TorchPrefix(net, cut)
    if name == "int8":
        if fp32 is None:
            raise RuntimeError("no fp32 ONNX prefix to quantize (its export failed)")
        return Int8OnnxPrefix.from_fp32(fp32, calibration)
    raise ValueError(f"not a low-precision engine: {name!r}")
