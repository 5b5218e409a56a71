import subprocess
import sys

from universality_lib.cli import main


def test_bad_preset_is_one_clear_error(capsys):
    assert main(["train", "--preset", "huge"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown preset 'huge'") and err.count("\n") == 1


def test_unknown_model_is_refused_before_training(capsys):
    assert main(["train", "--preset", "smoke", "--models", "T", "Q"]) == 2
    assert "unknown model 'Q'" in capsys.readouterr().err


def test_module_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "universality_lib", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "train" in out.stdout and "book" in out.stdout


def test_book_module_is_an_alias_of_the_book_command():
    """One CLI: ``python -m universality_lib.book`` takes the flags and gives the exit codes of ``... book``."""
    run = [sys.executable, "-m", "universality_lib.book"]
    out = subprocess.run([*run, "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--chapters" in out.stdout and "--rerun" in out.stdout
    out = subprocess.run([*run, "--preset", "huge"], capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.startswith("error: unknown preset 'huge'")


def test_the_sphinx_extension_named_in_config_imports():
    import importlib

    import yaml

    from universality_lib import book

    config = yaml.safe_load((book.ROOT / "_config.yml").read_text())
    for name in config["sphinx"]["extra_extensions"]:
        assert callable(importlib.import_module(name).setup), name


def test_check_prints_and_writes_every_criterion_with_its_verdict(tmp_path, capsys):
    import json

    rc = main(["check", "--preset", "smoke", "--json", str(tmp_path / "out" / "check.json")])
    out = json.loads((tmp_path / "out" / "check.json").read_text())
    assert rc == (0 if out["passed"] else 1) and out["preset"] == "smoke"
    crits = {(r["criterion"], r["model"]): r for r in out["criteria"]}
    assert {"heldout_loss_ratio", "natural_induction_code", "random_induction", "clean_prob_B"} == {c for c, _ in crits}
    assert out["passed"] == all(r["passed"] for r in crits.values())
    assert set(out["prob_B_by_prefix"]) == {"T", "T2", "M"} and "0" in out["prob_B_by_prefix"]["M"]
    assert set(out["natural_ratio_by_prefix"]) == {"code"}  # smoke has no English text
    assert set(out["natural_ratio_by_prefix"]["code"]) == {"T", "T2", "M"} and "0" in out["natural_ratio_by_prefix"]["code"]["M"]
    printed = capsys.readouterr().out
    assert "clean_prob_B" in printed and "[check]" in printed


def test_check_refuses_the_paper_preset_before_loading_anything(capsys):
    assert main(["check", "--preset", "paper"]) == 2
    assert "published checkpoints" in capsys.readouterr().err


def test_check_zoo_reads_the_models_of_another_folder(tmp_path, capsys):
    """``check --zoo DIR`` (the folder of a ``train --dest``) measures the models there: copies of the zoo's own
    give the zoo's own rows; a folder without every model is one clear error before anything is measured."""
    import json
    import shutil

    from universality_lib import zoo

    main(["check", "--preset", "smoke", "--json", str(tmp_path / "own.json")])
    for name in zoo.names("smoke"):
        shutil.copytree(zoo.model_dir("smoke", name), tmp_path / "other" / name)
    main(["check", "--preset", "smoke", "--zoo", str(tmp_path / "other"), "--json", str(tmp_path / "other.json")])
    own, other = (json.loads((tmp_path / f).read_text()) for f in ("own.json", "other.json"))
    assert other == own
    shutil.rmtree(tmp_path / "other" / "M")
    capsys.readouterr()
    assert main(["check", "--preset", "smoke", "--zoo", str(tmp_path / "other")]) == 2
    assert "no model folder for M" in capsys.readouterr().err


def test_train_dest_that_is_not_a_folder_is_refused_before_training(tmp_path, capsys):
    (tmp_path / "a_file").write_text("")
    assert main(["train", "--preset", "smoke", "--models", "T", "--dest", str(tmp_path / "a_file")]) == 2
    assert "the folder for the trained models" in capsys.readouterr().err
    assert not (tmp_path / "a_file").is_dir()
