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
