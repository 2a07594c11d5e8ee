"""The `carclf` command: one entry point, help that helps, keys checked, the same exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT

from carclf.commands import COMMANDS, main

JOBS = ["train", "predict", "check", "report", "doctor", "export", "serve", "batch", "ensemble"]


def test_one_command_lists_every_job(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in [*JOBS, "pseudo", "search", "synthetic"]:
        assert name in COMMANDS and f"  {name} " in out, name
    assert "exit codes: 0 done, 2 bad input" in out
    assert main(["trian"]) == 2
    assert "did you mean train?" in capsys.readouterr().err
    assert main([]) == 2  # no command: the overview, as a usage error


def test_python_dash_m_carclf_is_the_command():
    r = subprocess.run(
        [sys.executable, "-m", "carclf", "--version"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0 and r.stdout.startswith("carclf ")


def test_serve_help_imports_no_torch_and_describes_every_limit():
    code = (
        "import sys, contextlib, io\n"
        "from carclf.commands import main\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n"
        "    rc = main(['serve', '--help'])\n"
        "print(rc, 'torch' in sys.modules, 'fastapi' in sys.modules)\n"
        "print(buf.getvalue())\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    first, _, text = r.stdout.partition("\n")
    assert first == "0 False False", r.stdout + r.stderr
    flags = ["--max-upload-mb", "--max-pixels", "--max-batch", "--max-wait-ms", "--max-pending"]
    options = text.split("\nlimits", 1)[1]  # the limits' own section, after the usage line
    for flag in [*flags, "--timeout"]:
        help_of = options.split(f"  {flag}", 1)[1].split("\n  --", 1)[0]
        assert "default" in help_of, f"{flag} has no default in its help: {help_of!r}"
    assert "examples:" in text and "carclf serve outputs/runs/<run>" in text


def test_train_help_says_what_is_required_with_examples(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "data.path=<path>" in out and "required:" in out and "examples:" in out
    assert "experiment: cpu_best, distill, quick, sfdl_b6" in out  # the groups, with options
    assert "augment:" not in out  # not the 150-line config dump
    assert len(out.splitlines()) < 70
    assert main(["predict", "--help"]) == 0
    out = capsys.readouterr().out
    assert "model=<path>" in out and "output=<csv>" in out and "examples:" in out
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("form", ["data.img_size=128", "+data.img_size=128", "++data.img_size=1"])
def test_a_misspelt_key_stops_at_once_with_a_suggestion(
    form, synthetic, tmp_path, monkeypatch, capsys
):
    """Hydra's own hint, `+data.img_size=128`, used to be accepted and ignored (224 px)."""
    monkeypatch.chdir(tmp_path)
    assert main(["train", f"data.path={synthetic}", form]) == 2
    err = capsys.readouterr().err
    assert "did you mean data.image_size?" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())  # refused before Hydra made a run dir


def test_keys_under_free_form_nodes_and_stages_are_checked_right(tmp_path, monkeypatch, capsys):
    import carclf.config
    from carclf.hydra_apps import key_problem

    schema = carclf.config.TrainConfig
    assert key_problem(["stages", "full", "epochs"], schema) is None  # a stage appended by name
    assert "did you mean stages.top.epochs" in key_problem(["stages", "top", "epoch"], schema)
    assert key_problem(["logger", "mlflow", "tracking_uri"], schema) is None  # free-form
    assert key_problem(["model", "head", "dropout"], schema) is None
    assert "did you mean model.head.dropout" in key_problem(["model", "head", "drop"], schema)
    monkeypatch.chdir(tmp_path)
    assert main(["predict", "topk=3", "model=m", "input=i", "output=o.csv"]) == 2
    assert "did you mean top_k?" in capsys.readouterr().err


def test_a_key_added_inside_a_config_is_caught_after_composition():
    """`+key` from a config file (or anything else open_dict lets in) is caught after compose."""
    from hydra import compose, initialize_config_dir

    import carclf.config  # noqa: F401  (registers the schema)
    from carclf.hydra_apps import unknown_keys

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["data.path=x", "+data.img_size=128"])
    assert unknown_keys(cfg) == [
        "data.img_size: not a key of the schema (did you mean data.image_size?)"
    ]
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        assert unknown_keys(compose("train", overrides=["data.path=x"])) == []


def _fake_bundle(path):
    path.mkdir(parents=True)
    (path / "meta.json").write_text(json.dumps({"backbone": "x"}))
    (path / "model.safetensors").write_bytes(b"")
    return path


def test_exit_code_table_every_command_refuses_bad_input_with_2(tmp_path, monkeypatch, capsys):
    """README's table: 2 for bad input in every command, one line, no traceback, nothing left."""
    monkeypatch.chdir(tmp_path)
    nope = str(tmp_path / "nope")
    run = _fake_bundle(tmp_path / "runs" / "a" / "bundle").parent
    bad = {
        "train": [f"data.path={nope}"],
        "predict": [f"model={nope}", f"input={nope}", "output=sub.csv"],
        "check": [nope],
        "report": [nope, "--out", "report-out"],
        "doctor": [nope, "--out", "doctor-out"],
        "export": [nope],
        "serve": [nope],
        "batch": [nope, nope, "batch-out"],
        "ensemble": [str(run), str(run / "bundle"), "--out", "ens"],  # the same run twice
        "pseudo": [nope, nope, "--out", "p.csv"],
        "synthetic": ["out", "--train-per-class", "x"],  # argparse: a number is needed
    }
    for name, args in bad.items():
        code = main([name, *args])
        err = capsys.readouterr().err
        assert code == 2, f"carclf {name}: exit {code}\n{err}"
        assert "Traceback" not in err, name
        assert "error:" in err, name
    # evaluate=true is a key of predict's schema, not a config group (a package of carclf's)
    code = main(["predict", *bad["predict"], "evaluate=true", f"labels={nope}"])
    err = capsys.readouterr().err
    assert code == 2 and "no such model" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"], "a refused command left files"


def test_ensemble_refuses_the_same_run_twice(tmp_path, capsys):
    run = _fake_bundle(tmp_path / "run" / "bundle").parent
    assert main(["ensemble", str(run), str(run / "bundle"), "--out", str(tmp_path / "e")]) == 2
    assert "given twice" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()
