"""Label doctor on real photos: planted label flips must come out on top."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("cleanlab")
# A backbone forward pass over ~100 photos: seconds on a quiet CPU, minutes on a busy one.
pytestmark = pytest.mark.slow

from carclf.data.layouts import read_dataset  # noqa: E402
from carclf.inspect import doctor  # noqa: E402
from carclf.inspect.report import write_report  # noqa: E402

# Eight Stanford Cars classes a frozen ImageNet backbone tells apart easily (SUV, supercar,
# pickup, minivan, van, roadster, limousine...), so a flip to another of them is a clear error.
CLASSES = ("0", "11", "17", "21", "38", "39", "42", "44")
PER_CLASS = 12


@pytest.fixture(scope="module")
def flipped(stanford, tmp_path_factory):
    """A path,label CSV of 96 real photos with 4 labels moved to another class (seeded)."""
    rows = [
        (str(p), c)
        for c in CLASSES
        for p in sorted((stanford / "train" / c).glob("*.jpg"))[:PER_CLASS]
    ]
    df = pd.DataFrame(rows, columns=["path", "label"])
    rng = np.random.default_rng(3)
    flips = rng.choice(len(df), size=4, replace=False)
    truth = df["label"].copy()
    for i in flips:
        df.loc[i, "label"] = rng.choice([c for c in CLASSES if c != truth[i]])
    out = tmp_path_factory.mktemp("doctor")
    csv = out / "noisy.csv"
    df.to_csv(csv, index=False)
    return {"csv": csv, "out": out, "flipped": set(df["path"][flips]), "truth": truth, "df": df}


@pytest.fixture(scope="module")
def result(flipped):
    index = read_dataset(flipped["csv"])
    return doctor.diagnose(index, image_size=192, folds=4, cache_dir=flipped["out"])


def test_flips_are_ranked_first(flipped, result):
    from cleanlab.rank import get_label_quality_scores

    # The ranking: most of the flips are the photos whose given label is least plausible.
    scores = get_label_quality_scores(result.labels, result.pred_probs)
    top6 = {result.paths[i] for i in np.argsort(scores)[:6]}
    assert len(flipped["flipped"] & top6) >= 3, sorted(top6)
    # The flags (default cut: half the chance probability): mostly flips, few false alarms.
    issues = result.issues
    found = issues[issues["path"].isin(flipped["flipped"])]
    assert len(found) >= 2 and len(issues) <= 6, issues
    truth = dict(zip(flipped["df"]["path"], flipped["truth"], strict=True))
    assert all(
        str(s) == truth[p] for p, s in zip(found["path"], found["suggested_label"], strict=True)
    )
    assert list(issues["rank"]) == list(range(1, len(issues) + 1))
    assert issues["score"].is_monotonic_increasing and (issues["score"] < 0.5 / 8).all()


def test_report_with_doctor_gallery(flipped, result, tmp_path):
    index = read_dataset(flipped["csv"])
    report, _ = write_report(
        index,
        tmp_path,
        doctor=True,
        doctor_options={"image_size": 192, "folds": 4, "cache_dir": flipped["out"]},
    )
    issues = pd.read_csv(tmp_path / doctor.ISSUES_FILE)
    assert list(issues.columns[:4]) == ["rank", "path", "id", "given_label"]
    assert set(issues["path"]) == set(result.issues["path"])
    page = (tmp_path / "report.html").read_text()
    assert "Likely mislabelled photos" in page and "suggested:" in page
    assert json.loads((tmp_path / "report.json").read_text())["doctor"]["flagged"] == len(issues)


def test_too_few_photos_for_the_folds_means_fewer_folds(flipped, result, capsys):
    # ~12 photos per given label, 13 folds asked: the doctor says so and uses as many folds as
    # the smallest class has photos (same cached features; one C, the folds are what is tested)
    index = read_dataset(flipped["csv"])
    smallest = int(flipped["df"]["label"].value_counts().min())
    fewer = doctor.diagnose(index, image_size=192, folds=13, C=0.02, cache_dir=flipped["out"])
    assert fewer.folds == smallest and f"using {smallest} folds instead" in fewer.note
    assert "fewer labelled photos than the 13 folds" in capsys.readouterr().err
    assert fewer.summary()["note"] == fewer.note and result.note is None
    assert result.C in doctor.C_GRID and fewer.C == 0.02


def test_a_class_of_one_photo_is_named(flipped, tmp_path, capsys):
    df = flipped["df"].copy()
    df = pd.concat([df[df["label"] != "44"], df[df["label"] == "44"].head(1)])
    csv = tmp_path / "few.csv"
    df.to_csv(csv, index=False)
    assert doctor.main([str(csv), "--out", str(tmp_path / "d"), "--folds", "5"]) == 2
    err = capsys.readouterr().err
    assert "'44' (1)" in err and "fewer than 2 labelled photos" in err
    assert not (tmp_path / "d").exists()  # a refused run leaves no empty --out behind
