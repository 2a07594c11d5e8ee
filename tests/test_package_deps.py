"""The dependency rule: no two carclf sub-packages import each other.

Read from the source (``ast``), not from ``sys.modules``, so a lazy import inside a function
counts as much as one at the top of a module.
"""

from __future__ import annotations

import ast
import itertools
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "carclf"


def package_imports() -> dict[str, dict[str, str]]:
    """sub-package -> {sub-package it imports: the first file that does}."""
    packages = sorted(p.name for p in SRC.iterdir() if (p / "__init__.py").is_file())
    uses: dict[str, dict[str, str]] = {p: {} for p in packages}
    for pkg in packages:
        for f in sorted((SRC / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                else:
                    continue
                for name in names:
                    parts = name.split(".")
                    if parts[0] == "carclf" and len(parts) > 1 and parts[1] in uses:
                        if parts[1] != pkg:
                            uses[pkg].setdefault(parts[1], f.relative_to(SRC).as_posix())
    return uses


def test_no_two_subpackages_import_each_other():
    uses = package_imports()
    pairs = [
        f"{a} <-> {b} ({uses[a][b]}, {uses[b][a]})"
        for a, b in itertools.combinations(sorted(uses), 2)
        if b in uses[a] and a in uses[b]
    ]
    assert not pairs, "sub-packages that import each other: " + "; ".join(pairs)


def test_inference_is_a_leaf_of_its_consumers():
    """evaluate, export, serve and train get models from ``inference``; it imports none of them."""
    uses = package_imports()
    assert "inference" in uses
    assert not {"evaluate", "export", "serve", "train", "batch"} & set(uses["inference"])
    for consumer in ("evaluate", "export", "serve", "train"):
        assert "inference" in uses[consumer], consumer


def test_the_rule_catches_a_cycle(tmp_path, monkeypatch):
    """The checker itself finds a planted pair (a test that cannot fail proves nothing)."""
    for pkg, other in (("a", "b"), ("b", "a")):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
        (tmp_path / pkg / "m.py").write_text(f"def f():\n    from carclf.{other} import x\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", tmp_path)
    uses = package_imports()
    assert uses == {"a": {"b": "a/m.py"}, "b": {"a": "b/m.py"}}


def test_carclf_classifier_is_the_inference_one():
    import carclf
    from carclf.inference.classifier import Classifier

    assert carclf.Classifier is Classifier
