"""The end of the run's network passes through the cache's engines: frozen prefix + tail.

The final validation (every view of ``calibration_tta``) used to run the whole network in
PyTorch eager: on 2 cores Lite2 @ 260 px does ~30 images/s that way, while ONNX Runtime runs
the frozen prefix at ~100 (``benchmarks/bench_cache.py``). The prefix is frozen, so it is the same
function at the end of the run as during it: :class:`PrefixTail` runs it through the run's fp32
prefix engine (:meth:`carclf.train.cache_stage.CacheStage.final_engine`: one export per view size,
checked against PyTorch on its first batch) and only the trained tail in PyTorch. fp32, not the
cache's int8/bf16 engine: the final validation scores (and fits the temperature of) what the
bundle will compute.

The planner's probe times the same backend (:func:`carclf.train.probe.finish_cost`), so the time
kept free for the end of the run is measured on what will run.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


class PrefixTail:
    """A Classifier backend: logits (and penultimate features) of ``pl_module``'s network, its
    groups ``0..cut-1`` computed by ``cache``'s fp32 engine at each batch's image size."""

    name = "prefix engine + tail"

    def __init__(self, cache, pl_module, cut: int):
        self.cache, self.pl_module, self.cut = cache, pl_module, cut

    @torch.inference_mode()
    def with_features(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        net = self.pl_module.net
        size = int(batch.shape[-1])
        if batch.shape[-2] != size:  # the prefix engines are exported for square inputs
            x = net.features_from(batch, 0)
        else:
            engine = self.cache.final_engine(self.cut, size, self.pl_module)
            x = net.features_from(engine(batch).float(), self.cut)
        feats = net.head(x, pre_logits=True)
        return net.head.fc(net.head.dropout(feats)).float(), feats.float()

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.with_features(batch)[0]


def final_backend(cache, stages, pl_module) -> PrefixTail | None:
    """The end of the run's backend for ``pl_module`` (None: the whole network in PyTorch):
    a :class:`PrefixTail` when the last stage was trained on a cached prefix on a CPU."""
    if stages is None or not len(stages) or pl_module.device.type != "cpu":
        return None
    try:
        cut = cache.cut(stages, stages[-1], pl_module)
    except Exception:  # a cache that cannot say (e.g. a network that cannot be split)
        return None
    return PrefixTail(cache, pl_module, cut) if cut else None
