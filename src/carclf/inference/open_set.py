"""Open-set rejection: say "not one of my classes" for photos of other cars and non-cars.

An open-set *score* is high for photos like the training classes and low for others; a photo
whose score is under a threshold is ``unknown``. Four scores:

* ``msp``: the maximum softmax probability at the model's temperature (the baseline, Hendrycks &
  Gimpel 2017); ``energy``: ``logsumexp(logits)``, the negative free energy (Liu et al. 2020);
* ``knn``: minus the distance from the photo's L2-normalised penultimate features (the input of
  the classifier layer) to its k-th nearest training photo's (Sun et al. 2022);
* ``hybrid`` (the default): ``knn`` as a gate for non-cars the head is sure about (a photo farther
  from the training photos than 99% of the known validation photos), ``msp`` for the rest: it
  catches other car models the head finds ambiguous (:func:`hybrid_score`).

``keep=0.95`` sets each threshold to accept 95% of the known validation photos
(:func:`fit_threshold`). Scores use the plain eval view only (every TTA policy's first view), so
one threshold holds for ``tta=none`` and ``tta=multiscale`` and costs no extra view. The bundle
keeps an :class:`OpenSet` in ``meta.json`` (``open_set``: score, thresholds, validation figures)
and ``open_set.npz`` (knn bank, validation scores). Plain numpy; the features come with the
logits (:func:`carclf.inference.torch_backend.net_outputs`, or model.onnx's second output).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from carclf.errors import ConfigError, ModelError

log = logging.getLogger(__name__)

OPEN_SET_FILE = "open_set.npz"
SCORES = ("msp", "energy", "knn", "hybrid")
FEATURE_SCORES = ("knn", "hybrid")
# ``open_set.score=auto``: chosen on real photos (README "unknown photos"; bench_open_set.py)
DEFAULT_SCORE = "hybrid"
DEFAULT_LOGIT_SCORE = "msp"  # where there are no features (ensembles, old ONNX files)
CHUNK = 1024  # rows per distance block: bounds memory to CHUNK x bank floats
# hybrid: the share of known validation photos whose knn score a photo must beat to be ranked by
# msp (bench_open_set.py; chosen against stanford-cars-scale *train* photos, 0.5-2% alike)
HYBRID_GATE = 0.01


@dataclass
class OpenSetConfig:
    """``open_set`` in train.py's config: what the end of a run fits for unknown rejection."""

    enabled: bool = True  # fit and store open-set data in the bundle
    keep: float = 0.95  # share of known-class validation photos accepted (0 < keep < 1)
    score: str = "auto"  # auto (hybrid) | msp | energy | knn | hybrid: what decides `unknown`
    k: int = 5  # neighbour of the knn score (the k-th nearest training photo)
    max_bank: int = 2048  # training photos in the knn bank (a class-stratified sample)


def check_config(cfg, key: str = "open_set") -> None:
    """A ConfigError naming the key for a setting that cannot work (checked before training)."""
    keep = float(cfg.keep)
    if not 0.0 < keep < 1.0:
        raise ConfigError(
            f"{key}.keep={cfg.keep}: the share of known photos kept must be in (0, 1)"
        )
    if cfg.score != "auto" and cfg.score not in SCORES:
        raise ConfigError(f"{key}.score={cfg.score!r}: choose auto or one of {', '.join(SCORES)}")
    if int(cfg.k) < 1:
        raise ConfigError(f"{key}.k={cfg.k}: the neighbour rank must be at least 1")
    if int(cfg.max_bank) < int(cfg.k):
        raise ConfigError(f"{key}.max_bank={cfg.max_bank}: must be at least {key}.k={cfg.k}")


# -- scores (higher = more like the training classes) --------------------------------------------
def _logsumexp(z: np.ndarray) -> np.ndarray:
    top = z.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(z - top).sum(axis=1, keepdims=True)))[:, 0]


def msp_score(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Maximum softmax probability of ``softmax(logits / temperature)``, per row."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    return np.exp(z.max(axis=1) - _logsumexp(z))


def energy_score(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Negative free energy ``T * logsumexp(logits / T)``, per row."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    return temperature * _logsumexp(z)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def knn_score(features: np.ndarray, bank: np.ndarray, k: int = 5) -> np.ndarray:
    """Minus the Euclidean distance of each normalised feature row to its k-th nearest bank row.

    ``bank`` holds L2-normalised rows (as :func:`l2_normalize` gives them); for unit vectors the
    distance is ``sqrt(2 - 2 cos)``, so the k-th nearest is the k-th largest cosine.
    """
    bank = np.asarray(bank, dtype=np.float32)
    if not len(bank):
        raise ValueError("the knn bank is empty")
    k = min(k, len(bank))
    feats = l2_normalize(features)
    out = np.empty(len(feats), dtype=np.float64)
    for start in range(0, len(feats), CHUNK):
        sims = feats[start : start + CHUNK] @ bank.T
        kth = -np.partition(-sims, k - 1, axis=1)[:, k - 1]
        out[start : start + CHUNK] = -np.sqrt(np.maximum(2.0 - 2.0 * kth, 0.0))
    return out


def hybrid_score(
    msp: np.ndarray, knn: np.ndarray, val_msp, val_knn, gate: float | None = None
) -> np.ndarray:
    """``msp`` behind a ``knn`` gate, in [0, 1]; F is a score's CDF on the validation photos.

    A photo with ``F_knn <= gate`` (farther from the training photos than all but ``gate`` of the
    known ones: a non-car the head may be sure about) scores ``F_knn``; any other scores
    ``gate + (1 - gate) * F_msp``: among car-like photos the head's confidence decides, which
    ranks other car models best (README "unknown photos": it beat ``min(F_msp, F_knn)``).
    """
    gate = HYBRID_GATE if gate is None else gate

    def cdf(val, x):
        return np.searchsorted(np.sort(np.asarray(val, np.float64)), x, side="right") / len(val)

    f_knn = cdf(val_knn, knn)
    return np.where(f_knn > gate, gate + (1.0 - gate) * cdf(val_msp, msp), f_knn)


# -- thresholds and the figures behind them ---------------------------------------------------------
def fit_threshold(scores: np.ndarray, keep: float) -> float:
    """The highest threshold that accepts (``score >= threshold``) at least ``keep`` of ``scores``.

    With ``n`` scores, ``floor(n * (1 - keep))`` of the lowest are rejected: 100 scores at
    ``keep=0.95`` reject the 5 lowest (ties at the threshold are accepted).
    """
    s = np.sort(np.asarray(scores, dtype=np.float64))
    if not len(s):
        raise ValueError("no scores to fit a threshold on")
    if not 0.0 < keep < 1.0:
        raise ValueError(f"keep={keep}: must be in (0, 1)")
    reject = int(np.floor(len(s) * (1.0 - keep) + 1e-9))
    return float(s[reject])


# -- what a bundle stores -------------------------------------------------------------------------
@dataclass
class OpenSet:
    """Fitted open-set data: the default score, a threshold per score, what fitted them.

    Attributes:
        score: the score ``unknown`` is decided on.
        keep: the share of known validation photos the thresholds accept.
        thresholds: score name -> threshold (accept ``score >= threshold``).
        temperature: the temperature of the ``msp`` score (the model's, when fitted).
        k: neighbour rank of the ``knn`` score.
        bank: (M, D) L2-normalised training features (float16), or None (no ``knn``).
        validation: per score: photos, kept share, accuracy of the kept photos.
        val_scores: score name -> the validation scores the thresholds were fitted on.
            (``hybrid`` measures a photo against the ``msp`` and ``knn`` ones).
    """

    score: str
    keep: float
    thresholds: dict[str, float]
    temperature: float = 1.0
    k: int = 5
    bank: np.ndarray | None = None
    validation: dict = field(default_factory=dict)
    val_scores: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [s for s in SCORES if s in self.thresholds]

    @property
    def needs_features(self) -> bool:
        return self.score in FEATURE_SCORES

    @property
    def threshold(self) -> float:
        return self.thresholds[self.score]

    def scores(
        self, logits: np.ndarray, features: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """Every score this open set has a threshold for (``knn`` only given ``features``)."""
        logits = np.asarray(logits, dtype=np.float64)
        out = {}
        if "msp" in self.thresholds:
            out["msp"] = msp_score(logits, self.temperature)
        if "energy" in self.thresholds:
            out["energy"] = energy_score(logits)
        if "knn" in self.thresholds and features is not None and self.bank is not None:
            out["knn"] = knn_score(features, self.bank, self.k)
            val = self.val_scores
            if "hybrid" in self.thresholds and "msp" in val and "knn" in val:
                msp, knn = out.get("msp", msp_score(logits, self.temperature)), out["knn"]
                f32 = np.float32  # as the validation scores are stored
                out["hybrid"] = hybrid_score(
                    msp.astype(f32), knn.astype(f32), val["msp"], val["knn"]
                )
        return out

    def score_of(self, logits: np.ndarray, features: np.ndarray | None = None) -> np.ndarray:
        """The default score of each row (plain-view logits and, for knn/hybrid, features)."""
        if self.score in ("msp", "energy"):
            features = None  # not needed: skip the distances
        out = self.scores(logits, features)
        if self.score not in out:
            raise ModelError(f"open-set score {self.score!r} needs the penultimate features")
        return out[self.score]

    def unknown(self, scores: np.ndarray) -> np.ndarray:
        """True where a default-score value is under its threshold."""
        return np.asarray(scores) < self.threshold

    def reason(self, score: float) -> str:
        """Why a photo was called unknown, in words."""
        return (
            f"open-set score {score:.4g} ({self.score}) is under the threshold {self.threshold:.4g} "
            f"that keeps {self.keep:.0%} of the known models' validation photos"
        )

    def with_score(self, name: str) -> OpenSet:
        if name not in self.thresholds:
            raise ModelError(f"open-set score {name!r}: this model has {', '.join(self.names)}")
        return replace(self, score=name)

    def without_features(self) -> OpenSet:
        """The same data for a backend without features: the default falls back to ``msp``."""
        if not self.needs_features:
            return self
        return replace(self, score=DEFAULT_LOGIT_SCORE)

    # -- serialisation --------------------------------------------------------------------------
    def meta_dict(self) -> dict:
        """JSON for ``meta.json``'s ``open_set`` entry."""
        return {
            "score": self.score,
            "keep": self.keep,
            "thresholds": {k: float(v) for k, v in self.thresholds.items()},
            "temperature": float(self.temperature),
            "k": int(self.k),
            "bank_size": 0 if self.bank is None else int(len(self.bank)),
            "validation": self.validation,
            "file": OPEN_SET_FILE,
        }

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays of ``open_set.npz``."""
        out = {f"val_{k}": np.asarray(v, np.float32) for k, v in self.val_scores.items()}
        if self.bank is not None:
            out["bank"] = np.asarray(self.bank, dtype=np.float16)
        return out

    @classmethod
    def from_parts(cls, entry: dict, arrays: dict[str, np.ndarray] | None) -> OpenSet:
        arrays = arrays or {}
        bank = arrays.get("bank")
        val_scores = {k[4:]: v for k, v in arrays.items() if k.startswith("val_")}
        thresholds = {str(k): float(v) for k, v in entry["thresholds"].items()}
        if "hybrid" in thresholds and "msp" in val_scores and "knn" in val_scores:
            # refitted from the stored scores: also right for a bundle of an earlier formula
            v_msp, v_knn = val_scores["msp"], val_scores["knn"]
            val_scores["hybrid"] = hybrid_score(v_msp, v_knn, v_msp, v_knn).astype(np.float32)
            thresholds["hybrid"] = fit_threshold(val_scores["hybrid"], float(entry["keep"]))
        return cls(
            score=str(entry["score"]),
            keep=float(entry["keep"]),
            thresholds=thresholds,
            temperature=float(entry.get("temperature", 1.0)),
            k=int(entry.get("k", 5)),
            bank=None if bank is None else np.asarray(bank, dtype=np.float32),
            validation=dict(entry.get("validation", {})),
            val_scores=val_scores,
        )


def fit_open_set(
    logits: np.ndarray,
    labels: np.ndarray,
    *,
    keep: float = 0.95,
    temperature: float = 1.0,
    features: np.ndarray | None = None,
    bank: np.ndarray | None = None,
    k: int = 5,
    score: str = "auto",
) -> OpenSet:
    """Thresholds for every score from known-class validation photos.

    Args:
        logits: (N, K) plain-view validation logits; labels: (N,) their classes.
        features: (N, D) their penultimate features and ``bank`` (M, D) the training photos';
            without both there is no ``knn`` score.
        score: the default score (``auto``: :data:`DEFAULT_SCORE`, or ``msp`` without features).
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    if not len(logits):
        raise ValueError("no validation photos to fit open-set thresholds on")
    has_knn = features is not None and bank is not None and len(bank) > 0
    bank_n = l2_normalize(bank).astype(np.float16) if has_knn else None
    probe = OpenSet("msp", keep, dict.fromkeys(SCORES if has_knn else ("msp", "energy"), 0.0),
                    temperature, k, bank_n)  # fmt: skip
    val = probe.scores(logits, features)
    if has_knn:  # float32, as stored: predict time compares against exactly these values
        v_msp, v_knn = val["msp"].astype(np.float32), val["knn"].astype(np.float32)
        val["hybrid"] = hybrid_score(v_msp, v_knn, v_msp, v_knn)
    correct = logits.argmax(1) == labels
    thresholds, figures = {}, {}
    for name, s in val.items():
        t = fit_threshold(s, keep)
        kept = s >= t
        thresholds[name] = t
        figures[name] = {
            "photos": int(len(s)),
            "kept": float(kept.mean()),
            "accuracy_kept": float(correct[kept].mean()) if kept.any() else float("nan"),
            "accuracy_all": float(correct.mean()),
        }
    if score == "auto":
        score = DEFAULT_SCORE if DEFAULT_SCORE in thresholds else DEFAULT_LOGIT_SCORE
    if score not in thresholds:
        raise ConfigError(f"open_set.score={score!r}: not available here ({', '.join(thresholds)})")
    return OpenSet(
        score=score,
        keep=float(keep),
        thresholds=thresholds,
        temperature=float(temperature),
        k=int(k),
        bank=bank_n,
        validation=figures,
        val_scores={n: s.astype(np.float32) for n, s in val.items()},
    )


def stratified_sample(labels: np.ndarray, limit: int, seed: int = 0) -> np.ndarray:
    """Up to ``limit`` row indices (sorted), each class in proportion to its rows (all if fewer).

    Each class's rows are shuffled and given evenly spaced ranks in [0, 1); the ``limit`` lowest
    ranks are taken, so every class keeps about ``limit / N`` of its photos.
    """
    labels = np.asarray(labels)
    if len(labels) <= limit:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    rank = np.empty(len(labels))
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        rank[rows] = (np.arange(len(rows)) + rng.random()) / len(rows)
    return np.sort(np.argsort(rank, kind="stable")[:limit])


# -- the bundle side --------------------------------------------------------------------------------
def load_open_set(folder: str | Path, meta) -> OpenSet | None:
    """The open set stored in a bundle, or None (an older bundle: one log line says so)."""
    from carclf.models.bundle import read_arrays

    folder = Path(folder)
    entry = getattr(meta, "open_set", None) or {}
    if not entry:
        log.info(
            "%s: no open-set data (trained before carclf fitted it): predictions carry no "
            "unknown flag",
            folder,
        )
        return None
    arrays = read_arrays(folder, entry.get("file", OPEN_SET_FILE))
    try:
        open_set = OpenSet.from_parts(entry, arrays)
    except (KeyError, TypeError, ValueError) as e:
        raise ModelError(f"{folder}/meta.json: invalid open_set entry ({e})") from None
    if open_set.needs_features and open_set.bank is None:
        log.warning("%s: no %s with the knn bank; using the msp score", folder, OPEN_SET_FILE)
        open_set = open_set.without_features()
    return open_set
