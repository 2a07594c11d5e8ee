"""The evaluation numbers on a hand-made case, and the report files they end up in."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from carclf.evaluate.evaluation import score
from carclf.evaluate.report import write_report

NAMES = ["Priora", "Niva", "Kalina"]
LOCAL = ["Приора", "Нива", "Калина"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """6 images, 1 unreadable, 1 unlabelled; the 4 scored ones are worked out below."""
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for i in range(6):
        Image.new("RGB", (40, 30), (40 * i, 80, 120)).save(folder / f"{i}.jpg")
        paths.append(str(folder / f"{i}.jpg"))
    scaled = np.array(
        [
            [0.7, 0.2, 0.1],  # true 0, pred 0
            [0.1, 0.6, 0.3],  # true 1, pred 1
            [0.2, 0.7, 0.1],  # true 2, pred 1 (confident mistake), true class 3rd
            [0.5, 0.1, 0.4],  # true 2, pred 0 (mistake), true class 2nd
            [np.nan] * 3,  # unreadable
            [0.3, 0.3, 0.4],  # unlabelled
        ]
    )
    raw = np.array(
        [
            [0.9, 0.05, 0.05],
            [0.05, 0.9, 0.05],
            [0.05, 0.9, 0.05],
            [0.9, 0.05, 0.05],
            [np.nan] * 3,
            [0.3, 0.3, 0.4],
        ]
    )
    labels = np.array([0, 1, 2, 2, 0, -1])
    ok = np.array([True, True, True, True, False, True])
    ev = score(raw, scaled, labels, ok, paths, NAMES, LOCAL, temperature=1.7, n_bins=10)
    return ev, paths


def test_numbers_of_the_hand_made_case(case):
    ev, paths = case
    assert (ev.num_images, ev.num_scored, ev.num_unreadable, ev.num_unlabelled) == (6, 4, 1, 1)
    assert ev.accuracy == pytest.approx(2 / 4)
    assert ev.top3 == 1.0
    assert ev.confusion.tolist() == [[1, 0, 0], [0, 1, 0], [1, 1, 0]]
    np.testing.assert_allclose(ev.report.precision, [0.5, 0.5, 0.0])
    np.testing.assert_allclose(ev.report.recall, [1.0, 1.0, 0.0])
    np.testing.assert_allclose(ev.report.f1, [2 / 3, 2 / 3, 0.0])
    # raw: 4 images at confidence 0.9, 2 right -> |0.5 - 0.9| = 0.4
    assert ev.ece_raw == pytest.approx(0.4)
    # scaled, 10 bins (lo, hi]: confidences 0.7 right, 0.6 right, 0.7 wrong, 0.5 wrong
    # (0.4,0.5]: acc 0, conf 0.5 -> 0.5 * 1/4; (0.5,0.6]: acc 1, conf 0.6 -> 0.4 * 1/4
    # (0.6,0.7]: acc 1/2, conf 0.7 -> 0.2 * 2/4
    assert ev.ece_scaled == pytest.approx(0.5 / 4 + 0.4 / 4 + 0.2 / 2)
    assert ev.bins_scaled.count.tolist() == [0, 0, 0, 0, 1, 1, 1 + 1, 0, 0, 0]
    assert ev.nll_scaled == pytest.approx(-np.log([0.7, 0.6, 0.1, 0.4]).mean())
    # mistakes, most confident first, with display names
    assert [m.path for m in ev.mistakes] == [paths[2], paths[3]]
    assert (
        ev.mistakes[0].true_name == "Kalina (Калина)" and ev.mistakes[0].pred_name == "Niva (Нива)"
    )
    assert ev.mistakes[0].confidence == pytest.approx(0.7)
    assert ev.to_dict()["per_class"][1]["name_local"] == "Нива"


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.text = [], []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_data(self, data):
        self.text.append(data)


def test_report_files_are_valid_and_self_contained(case, tmp_path):
    import base64

    ev, _ = case
    page = write_report(
        ev,
        tmp_path / "report",
        context={"title": "test report", "model": "m"},
        errors={"4.jpg": "empty file (0 bytes)"},
    )
    folder = page.parent
    for name in ("confusion", "reliability", "mistakes"):
        data = (folder / f"{name}.png").read_bytes()
        assert data.startswith(PNG_MAGIC)
        Image.open(folder / f"{name}.png").verify()
    html = page.read_text(encoding="utf-8")
    assert html.lstrip().startswith("<!doctype html>") and html.rstrip().endswith("</html>")
    parser = _Collect()
    parser.feed(html)
    assert len(parser.images) == 3
    for src in parser.images:  # embedded, not linked
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_MAGIC)
    text = " ".join(parser.text)
    for name in NAMES + LOCAL:
        assert name in text
    assert "0.400" in text and "4.jpg" in text and "empty file" in text
    assert "T = 1.70" in text
    assert (folder / "metrics.json").is_file()


def test_a_perfect_model_gets_an_empty_gallery(tmp_path):
    probs = np.eye(3)
    ev = score(probs, probs, np.arange(3), np.ones(3, bool), ["a", "b", "c"], NAMES)
    assert ev.accuracy == 1.0 and ev.mistakes == [] and ev.class_names_local is None
    page = write_report(ev, tmp_path)
    assert Path(page).is_file() and "Most confident mistakes (0)" in page.read_text()


def test_nothing_to_score_is_an_error():
    with pytest.raises(ValueError, match="nothing to score"):
        score(np.eye(2), np.eye(2), np.array([-1, -1]), np.ones(2, bool), ["a", "b"], NAMES[:2])
