"""The architecture, as a test: carclf's layers, and the import rule between them.

``LAYERS`` below is the one definition of the shape of ``src/carclf`` (README's "Architecture"
section explains it). Each top-level module or sub-package sits in one layer; an import may go
to a lower layer, or stay inside its own package, never up. Apps (layer 4) never import each
other: what two apps share moves down a layer. The imports are read from the source (``ast``),
so a lazy import inside a function counts as much as one at the top of a module.

Sizes are part of the shape too: no module over 400 lines, no function over 80.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "carclf"

LAYERS: dict[str, int] = {
    # 0: foundations, no torch: one error family, atomic writes, the CLI wrapper, HTML pages
    "errors": 0,
    "io": 0,
    "cli": 0,
    "html": 0,
    "phases": 0,  # progress of long phases and the time budget's clock
    "conf": 0,  # the YAML configs (a package only so that Hydra finds them: pkg://carclf.conf)
    # 1: the input pipeline: readers and layouts, decode, check, presets, TTA, DataModule
    "data": 1,
    # 2: networks: timm factory + offline weights, head, CarNet, LightningModule, bundle
    "models": 2,
    # 3: running a trained model: Classifier, backends, held-out logits, temperature
    "inference": 3,
    # 4: the apps, each on layers 0-3 only
    "train": 4,
    "evaluate": 4,
    "inspect": 4,
    "export": 4,
    "serve": 4,
    "batch": 4,
    "tune": 4,
    "ensemble": 4,
    "pseudo": 4,
    # 5: composition roots, imported by no package: the package facade, train.py's schema and
    # the `carclf` command (which composes the others)
    "__init__": 5,
    "config": 5,
    "commands": 5,
    "hydra_apps": 5,
    "__main__": 5,
}
APP = 4
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 80


def unit_of(path: Path, src: Path) -> str:
    """The top-level module or sub-package a source file belongs to."""
    rel = path.relative_to(src)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imported(node) -> list[str]:
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        return [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    return []


def imports(src: Path = None) -> list[tuple[str, str, str, int]]:
    """(importing unit, imported unit, file, line) for every carclf import between units."""
    src = src or SRC
    found = []
    for f in sorted(src.rglob("*.py")):
        me = unit_of(f, src)
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            targets = set()
            for name in _imported(node):
                parts = name.split(".")
                if parts[0] == "carclf" and len(parts) > 1 and parts[1] != me:
                    if (src / parts[1]).is_dir() or (src / f"{parts[1]}.py").is_file():
                        targets.add(parts[1])
            for them in sorted(targets):
                found.append((me, them, f.relative_to(src).as_posix(), node.lineno))
    return found


def violations(src: Path = None, layers: dict[str, int] = LAYERS) -> list[str]:
    src = src or SRC
    units = {unit_of(f, src) for f in src.rglob("*.py")}
    bad = [f"{u}: not in LAYERS (give it a layer)" for u in sorted(units - set(layers))]
    for me, them, where, line in imports(src):
        if me not in layers or them not in layers:
            continue
        a, b = layers[me], layers[them]
        if b > a:
            bad.append(f"{where}:{line}: {me} (layer {a}) imports {them} (layer {b}): up a layer")
        elif a == b == APP:
            bad.append(f"{where}:{line}: app {me} imports app {them}")
    return bad


def oversized(src: Path = None) -> list[str]:
    src = src or SRC
    bad = []
    for f in sorted(src.rglob("*.py")):
        text = f.read_text(encoding="utf-8")
        rel = f.relative_to(src).as_posix()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            bad.append(f"{rel}: {len(text.splitlines())} lines (over {MAX_MODULE_LINES})")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    bad.append(f"{rel}:{node.lineno} {node.name}: {n} lines")
    return bad


def test_no_import_goes_up_a_layer_or_between_apps():
    bad = violations()
    assert not bad, "imports that break the layers:\n" + "\n".join(bad)


def test_modules_and_functions_stay_small():
    bad = oversized()
    assert not bad, "too large:\n" + "\n".join(bad)


def test_the_rules_catch_planted_violations(tmp_path, monkeypatch):
    """The checkers find what they are for (a test that cannot fail proves nothing)."""
    for pkg in ("data", "train", "serve"):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "errors.py").write_text("")
    (tmp_path / "data" / "m.py").write_text("def f():\n    from carclf.train.run import x\n")
    (tmp_path / "serve" / "m.py").write_text("from carclf import train\nimport carclf.errors\n")
    (tmp_path / "newpkg.py").write_text("")
    body = "\n".join(f"    x = {i}" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "train" / "big.py").write_text(f"def f():\n{body}\n")
    bad = violations(tmp_path)
    assert any("data (layer 1) imports train (layer 4)" in b for b in bad), bad
    assert any("app serve imports app train" in b for b in bad), bad
    assert any("newpkg: not in LAYERS" in b for b in bad), bad
    assert not any("errors" in b for b in bad), bad  # serve -> errors goes down: allowed
    assert oversized(tmp_path) == [f"train/big.py:1 f: {MAX_FUNCTION_LINES + 1} lines"]


def test_composition_roots_are_imported_by_no_package():
    roots = {u for u, layer in LAYERS.items() if layer == 5}
    users = [(me, them, w) for me, them, w, _ in imports() if them in roots and me not in roots]
    assert not users, users


def test_carclf_classifier_is_the_inference_one():
    import carclf
    from carclf.inference.classifier import Classifier

    assert carclf.Classifier is Classifier


if __name__ == "__main__":  # python tests/test_package_deps.py: print what breaks the shape
    print("\n".join(violations() + oversized()) or "ok")
    sys.exit(0)
