"""The label doctor's review page and what training does with its decisions: ``decisions.csv``
(written atomically as each decision is made), ``data.exclude`` and ``data.relabel`` reading it,
and the page itself in a real headless Chromium (three decisions by button and keyboard, then the
server is killed and the CSV must hold all three)."""

from __future__ import annotations

import re
import subprocess
import sys
import threading

import pandas as pd
import pytest
from test_browser import _wait, browser  # noqa: F401  (browser: the headless Chromium fixture)

from carclf.data.exclude import apply_exclude, apply_relabel
from carclf.data.layouts import read_dataset
from carclf.errors import DataError
from carclf.inspect import review

CLASSES = ("0", "11", "17", "21")


@pytest.fixture(scope="module")
def data(stanford, tmp_path_factory):
    """A path,label CSV of 16 real photos (4 classes) and a label_issues.csv flagging 4 of them."""
    rows = [
        (str(p), c) for c in CLASSES for p in sorted((stanford / "train" / c).glob("*.jpg"))[:4]
    ]
    df = pd.DataFrame(rows, columns=["path", "label"])
    out = tmp_path_factory.mktemp("review")
    df.to_csv(out / "train.csv", index=False)
    index = read_dataset(out / "train.csv")
    flagged = df.iloc[[1, 5, 9, 13]].reset_index(drop=True)
    issues = pd.DataFrame(
        {
            "rank": range(1, 5),
            "path": flagged["path"],
            "id": flagged["path"],
            "given_label": flagged["label"],
            "given_name": flagged["label"],
            "suggested_label": ["11", "17", "21", "0"],
            "suggested_name": ["11", "17", "21", "0"],
            "score": [0.001, 0.002, 0.004, 0.008],
            "suggested_prob": [0.9, 0.8, 0.7, 0.6],
        }
    )
    issues.to_csv(out / "label_issues.csv", index=False)
    return {"out": out, "csv": out / "train.csv", "index": index, "issues": issues}


def _client(data, decisions):
    from fastapi.testclient import TestClient

    issues = review.read_issues(data["out"] / "label_issues.csv", data["index"])
    return TestClient(review.review_app(issues, data["index"], decisions))


def test_decisions_are_saved_as_made_and_read_by_training(data, tmp_path):
    decisions = tmp_path / "decisions.csv"
    client = _client(data, decisions)
    items = client.get("/api/items").json()["items"]
    assert [it["rank"] for it in items] == [1, 2, 3, 4]
    assert len(items[0]["given_examples"]) == 3 and len(items[0]["suggested_examples"]) == 3
    flagged = {it["name"] for it in items}  # the flagged photos are not shown as examples
    assert not flagged & {e["name"] for it in items for e in it["given_examples"]}
    assert client.get(items[0]["src"]).headers["content-type"] == "image/jpeg"
    assert client.get("/image/9999").status_code == 404

    p = [it["path"] for it in items]
    assert client.post("/api/decisions", json={"path": p[0], "decision": "exclude"}).is_success
    saved = pd.read_csv(decisions, dtype=str)  # on disk after one decision
    assert list(saved["decision"]) == ["exclude"]
    r = client.post("/api/decisions", json={"path": p[1], "decision": "relabel", "label": "17"})
    assert r.json()["decision"]["name"] == "17"
    client.post("/api/decisions", json={"path": p[2], "decision": "keep"})
    client.post("/api/decisions", json={"path": p[2], "decision": "relabel", "label": "0"})
    assert (
        client.post("/api/decisions", json={"path": "/etc/passwd", "decision": "keep"}).status_code
        == 404
    )
    assert (
        client.post("/api/decisions", json={"path": p[3], "decision": "maybe"}).status_code == 422
    )
    bad = client.post("/api/decisions", json={"path": p[3], "decision": "relabel", "label": "9"})
    assert bad.status_code == 422 and "not a class" in bad.json()["detail"]

    saved = pd.read_csv(decisions, dtype=str)
    assert list(saved["decision"]) == ["exclude", "relabel", "relabel"]  # one row per photo
    assert list(saved["label"]) == [data["issues"]["given_label"][0], "17", "0"]
    assert not list(tmp_path.glob(".decisions.csv.*"))  # no temporary left behind
    # a new page on the same file starts from the decisions made
    again = _client(data, decisions).get("/api/items").json()["items"]
    assert [it["decision"]["decision"] if it["decision"] else None for it in again] == [
        "exclude", "relabel", "relabel", None,
    ]  # fmt: skip

    index = data["index"]
    relabelled = apply_relabel(index, decisions)
    by_path = dict(zip(relabelled.train["path"], relabelled.train["label"], strict=True))
    values = [str(v) for v in index.label_values]
    assert values[by_path[p[1]]] == "17" and values[by_path[p[2]]] == "0"
    changed = (relabelled.train["label"] != index.train["label"]).sum()
    assert changed == 2 and len(relabelled.train) == len(index.train)
    kept = apply_exclude(relabelled, decisions)
    assert set(relabelled.train["path"]) - set(kept.train["path"]) == {p[0]}


def test_relabel_from_label_issues_and_bad_lists(data, tmp_path, capsys):
    index = data["index"]
    issues = data["out"] / "label_issues.csv"
    relabelled = apply_relabel(index, issues)  # no label column: the suggestions
    values = [str(v) for v in index.label_values]
    got = dict(zip(relabelled.train["path"], relabelled.train["label"], strict=True))
    assert [values[got[p]] for p in data["issues"]["path"]] == ["11", "17", "21", "0"]

    gone = tmp_path / "gone.csv"  # a decision about a photo that no longer exists is reported
    pd.DataFrame(
        {
            "path": [data["issues"]["path"][0], str(tmp_path / "deleted.jpg")],
            "decision": ["relabel", "relabel"],
            "label": ["21", "21"],
        }
    ).to_csv(gone, index=False)
    assert (apply_relabel(index, gone).train["label"] != index.train["label"]).sum() == 1
    out = capsys.readouterr().out
    assert "1 of 2 listed photos are not in the dataset" in out and "deleted.jpg" in out
    unknown = tmp_path / "unknown.csv"
    pd.DataFrame({"path": [data["issues"]["path"][0]], "label": ["Batmobile"]}).to_csv(
        unknown, index=False
    )
    with pytest.raises(DataError, match=r"unknown\.csv: label\(s\) \['Batmobile'\]"):
        apply_relabel(index, unknown)
    typo = tmp_path / "typo.csv"
    pd.DataFrame({"path": [data["issues"]["path"][0]], "decision": ["exclud"]}).to_csv(typo)
    with pytest.raises(DataError, match=r"typo\.csv: unknown decision\(s\) \['exclud'\]"):
        apply_exclude(index, typo)
    nolabel = tmp_path / "nolabel.csv"
    pd.DataFrame({"path": [data["issues"]["path"][0]]}).to_csv(nolabel, index=False)
    with pytest.raises(DataError, match=r"nolabel\.csv: needs a 'label'"):
        apply_relabel(index, nolabel)


def test_review_refuses_a_list_of_other_photos(data, tmp_path):
    other = data["issues"].assign(path=[str(tmp_path / f"{i}.jpg") for i in range(4)])
    other.to_csv(tmp_path / "label_issues.csv", index=False)
    with pytest.raises(DataError, match=r"4 of its 4 photos are not labelled photos"):
        review.read_issues(tmp_path / "label_issues.csv", data["index"])


# -- the page in a real browser ---------------------------------------------------------------


class ReviewProcess:
    """``python -m carclf.inspect.doctor CSV --review --port 0`` in a subprocess."""

    def __init__(self, data, out, timeout: float = 90.0):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "carclf.inspect.doctor", str(data["csv"]), "--out", str(out),
             "--review", "--port", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self.url = None
        found = threading.Event()

        def read():
            for line in self.proc.stdout:
                self.lines.append(line)
                m = re.search(r"review: (http://[\d.]+:\d+)/", line)
                if m:
                    self.url = m.group(1)
                    found.set()
            found.set()

        threading.Thread(target=read, daemon=True).start()
        if not found.wait(timeout) or self.url is None:
            self.proc.kill()
            raise RuntimeError("review page did not start:\n" + "".join(self.lines[-30:]))

    def kill(self):
        self.proc.kill()  # SIGKILL: no chance to flush anything
        self.proc.wait(10)


@pytest.mark.slow
def test_review_page_in_a_browser_saves_three_decisions(data, browser, tmp_path):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    (tmp_path / "label_issues.csv").write_bytes((data["out"] / "label_issues.csv").read_bytes())
    server = ReviewProcess(data, tmp_path)
    try:
        browser.get(server.url + "/")
        WebDriverWait(browser, 30).until(lambda d: d.find_element(By.TAG_NAME, "body")
                                         .get_attribute("data-ready") == "true")  # fmt: skip
        cards = browser.find_elements(By.CSS_SELECTOR, "[data-testid=issue]")
        assert len(cards) == 4
        assert "given: " in cards[0].text and "suggested: 11" in cards[0].text
        imgs = cards[0].find_elements(By.TAG_NAME, "img")
        assert len(imgs) == 7  # the photo, 3 of its given class, 3 of the suggested one
        cards[0].find_element(By.CSS_SELECTOR, "[data-testid=exclude]").click()
        _status(browser, cards[0], "saved: exclude")
        # the second card is now the current one: relabel it to another class by keyboard
        Select(cards[1].find_element(By.CSS_SELECTOR, "[data-testid=relabel-to]")).select_by_value(
            "21"
        )
        browser.find_element(By.TAG_NAME, "body").send_keys("r")
        _status(browser, cards[1], "saved: relabel to 21")
        browser.find_element(By.TAG_NAME, "body").send_keys("k")  # third card: keep
        _status(browser, cards[2], "saved: keep")
        assert "3 of 4 reviewed" in _wait(browser, "[data-testid=progress]").text
        assert "current" in cards[3].get_attribute("class")
    finally:
        server.kill()  # killed, not stopped: the decisions must already be on disk
    saved = pd.read_csv(tmp_path / review.DECISIONS_FILE, dtype=str)
    flagged = list(data["issues"]["path"])
    assert list(saved["path"]) == flagged[:3]
    assert list(saved["decision"]) == ["exclude", "relabel", "keep"]
    assert list(saved["label"]) == [data["issues"]["given_label"][0], "21",
                                    data["issues"]["given_label"][2]]  # fmt: skip
    relabelled = apply_relabel(data["index"], tmp_path / review.DECISIONS_FILE)
    assert (relabelled.train["label"] != data["index"].train["label"]).sum() == 1


def _status(driver, card, text: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 20).until(
        lambda d: card.find_element(By.CSS_SELECTOR, "[data-testid=status]").text == text
    )
