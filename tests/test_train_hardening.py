"""Training, the zoo and the train command under bad input, Ctrl-C and kill -9: one clear error before any work,
a resume from the last checkpoint that ends bitwise equal, and a log with one row per step."""
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from universality_lib import cache, corpus, presets, zoo
from universality_lib.cli import main
from universality_lib.errors import IntegrityError, UniversalityError
from universality_lib.presets import TrainConfig
from universality_lib.train import resolve_device, train

STEPS = 6
CFG = TrainConfig(tokens=STEPS * 4 * 32, batch_size=4, context=32, lr=3e-3, warmup_steps=2, log_every=1,
                  eval_every=2, checkpoint_every=3, repeat_frac=0.5, repeat_span=8)


def _run(folder: Path, eval_fn=lambda m: {}, max_steps=None):
    p = presets.get("smoke")
    tok = corpus.load_tokenizer(p)
    stream = corpus.token_stream(p, "eval", tok)
    model = zoo.build(p, "T", tokenizer=tok)
    state = train(model, stream, CFG, folder, seed=0, save_model=zoo.save_model, load_weights=zoo.load_weights,
                  repeat_vocab=corpus.frequent_tokens(stream, 50), progress=False, eval_fn=eval_fn,
                  device=torch.device("cpu"), max_steps=max_steps)
    return model, state


def _assert_same_weights(a, b):
    for (n, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), n


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    model, _ = _run(tmp_path_factory.mktemp("straight") / "run")
    return model


def _log_steps(folder: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (folder / "log.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------- Ctrl-C and kill -9
def test_ctrl_c_keeps_the_last_checkpoint_and_the_same_call_resumes(tmp_path, straight, capsys):
    calls = []

    def interrupt_at_step_4(model):  # eval_fn runs at steps 2, 4, 6
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return {}

    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "run", eval_fn=interrupt_at_step_4)
    out = capsys.readouterr().out
    assert "interrupted at step 4/6; the last checkpoint (step 3)" in out and "run the same command again" in out
    resumed, state = _run(tmp_path / "run")
    assert "resuming from step 3/6" in capsys.readouterr().out and state.step == STEPS
    _assert_same_weights(straight, resumed)
    assert _log_steps(tmp_path / "run") == list(range(1, STEPS + 1))  # no step logged twice


KILL_IN_CHECKPOINT_SWAP = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    import test_train_hardening as t

    run = Path(sys.argv[1]).absolute()
    real, saves = os.replace, []

    def replace(src, dst):  # kill -9 while the step-6 checkpoint replaces the step-3 one
        if Path(dst).absolute() == run / "checkpoint":
            saves.append(dst)
            if len(saves) == 2:
                os._exit(9)
        real(src, dst)

    os.replace = replace
    t._run(run)
""")


def test_kill_while_replacing_the_checkpoint_resumes_bitwise_equal(tmp_path, straight, capsys):
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", KILL_IN_CHECKPOINT_SWAP, str(run), str(Path(__file__).parent)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 9, proc.stderr[-2000:]
    assert not (run / "checkpoint").exists()  # killed between "old aside" and "new in"
    resumed, state = _run(run)
    assert "resuming from step 3/6" in capsys.readouterr().out and state.step == STEPS
    _assert_same_weights(straight, resumed)
    assert _log_steps(run) == list(range(1, STEPS + 1))


TRAIN_ONCE = textwrap.dedent("""
    import sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    import test_train_hardening as t

    model, state = t._run(Path(sys.argv[1]))
    print("final step", state.step)
""")


def test_two_runs_in_one_folder_train_once(tmp_path, straight):
    """The test holds the folder's lock until both runs are waiting on it (so they surely overlap), then lets go:
    one trains, the other waits for it and resumes at the last step, training nothing."""
    from universality_lib import cache

    run = tmp_path / "run"
    waiting = f"another process is writing {run}; waiting for it"
    with cache.locked(run):
        procs = [subprocess.Popen([sys.executable, "-c", TRAIN_ONCE, str(run), str(Path(__file__).parent)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        heads = []
        for p in procs:  # read each run's output up to its "waiting" line
            lines = []
            while not lines or waiting not in lines[-1]:
                line = p.stdout.readline()
                assert line, f"the run ended before waiting on the lock: {''.join(lines)}{p.stderr.read()}"
                lines.append(line)
            heads.append("".join(lines))
    outs = [h + p.communicate(timeout=300)[0] for h, p in zip(heads, procs)]
    assert [p.returncode for p in procs] == [0, 0]
    assert all("final step 6" in o for o in outs)
    assert sum("resuming from step 6/6" in o for o in outs) == 1  # the second one trained nothing
    assert _log_steps(run) == list(range(1, STEPS + 1))


# ----------------------------------------------------------------------------- bad input, before any work
@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if the train command gets as far as loading the tokenizer."""
    def reached(*a, **k):
        raise AssertionError("the bad input was not refused before the work started")

    monkeypatch.setattr(corpus, "load_tokenizer", reached)


BAD_DEVICES = ["bogus", "cuda:7", "meta"] + ([] if torch.cuda.is_available() else ["cuda"])


@pytest.mark.parametrize("device", BAD_DEVICES)
def test_a_bad_device_is_one_clear_error(device, capsys, no_work):
    with pytest.raises(UniversalityError, match="device"):
        resolve_device(device)
    assert main(["train", "--preset", "smoke", "--models", "T", "--device", device]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and repr(device) in err


@pytest.mark.parametrize("steps", ["-1", "0"])
def test_max_steps_below_one_is_refused(steps, capsys, no_work):
    assert main(["train", "--preset", "smoke", "--models", "T", "--max-steps", steps]) == 2
    assert f"max_steps must be a whole number >= 1 (the steps to train in this sitting) or None (train to the end), " \
           f"got {steps}" in capsys.readouterr().err


def test_train_refuses_max_steps_before_touching_the_folder(tmp_path):
    with pytest.raises(UniversalityError, match="max_steps"):
        train(None, None, CFG, tmp_path / "run", seed=0, save_model=None, load_weights=None, max_steps=-1)
    assert not (tmp_path / "run").exists()


def test_an_unwritable_work_dir_is_one_clear_error(tmp_path, capsys, no_work):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert main(["train", "--preset", "smoke", "--models", "T", "--work-dir", str(blocker / "runs")]) == 2
    assert "error: cannot create the training folder" in capsys.readouterr().err


def test_an_unwritable_cache_is_one_clear_error(tmp_path, monkeypatch, capsys, no_work):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.setenv("UNIVERSALITY_CACHE", str(blocker / "cache"))
    assert main(["train", "--preset", "smoke", "--models", "T"]) == 2
    err = capsys.readouterr().err
    assert "error: cannot create the cache folder" in err and "UNIVERSALITY_CACHE" in err


def test_ctrl_c_in_the_train_command_says_how_to_resume(monkeypatch, capsys):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(zoo, "train_model", interrupted)
    assert main(["train", "--preset", "smoke", "--models", "T"]) == 130
    err = capsys.readouterr().err
    assert "interrupted; resume with the same command" in err and "Traceback" not in err


# ----------------------------------------------------------------------------- shipped checkpoints
@pytest.fixture
def shipped_copy(tmp_path, monkeypatch):
    """A copy of the shipped tiny zoo (T and the tokenizer) that the library treats as the shipped one."""
    root = tmp_path / "zoo"
    for name in ("T", "tokenizer"):
        shutil.copytree(zoo.shipped_dir("tiny") / name, root / "tiny" / name)
    monkeypatch.setattr(zoo, "shipped_dir", lambda preset: root / presets.get(preset).name)
    monkeypatch.setattr(cache, "_PACKAGE", root)
    return root / "tiny" / "T"


def test_a_shipped_checkpoint_without_its_manifest_says_git_checkout(shipped_copy):
    (shipped_copy / cache.MANIFEST).unlink()
    with pytest.raises(IntegrityError, match="no MANIFEST.sha256.*git checkout") as e:
        zoo.load("tiny", "T")
    assert "train --preset" not in str(e.value)


@pytest.mark.parametrize("manifest", ["", "one line", "garbage", b"\xff\xfe\x00"])
def test_a_damaged_shipped_manifest_with_flipped_weights_is_refused(shipped_copy, manifest):
    path = shipped_copy / cache.MANIFEST
    text = {"": "", "one line": path.read_text().splitlines()[0] + "\n", "garbage": "no manifest here\n"}
    path.write_bytes(manifest if isinstance(manifest, bytes) else text[manifest].encode())
    weights = bytearray((shipped_copy / "model.safetensors").read_bytes())
    weights[-1] ^= 0xFF
    (shipped_copy / "model.safetensors").write_bytes(bytes(weights))
    with pytest.raises(IntegrityError, match="git checkout"):
        zoo.load("tiny", "T")


def test_training_works_with_gradients_switched_off_by_the_caller(tmp_path):
    """Chapters 5 and 6 call torch.set_grad_enabled(False) before zoo.load, which may train the smoke zoo."""
    import torch

    from universality_lib import zoo

    torch.set_grad_enabled(False)
    try:
        zoo.train_model("smoke", "T", work_dir=tmp_path / "w", max_steps=2, progress=False)
    finally:
        torch.set_grad_enabled(True)
    from universality_lib.train import read_log

    logs = [read_log(f.parent) for f in (tmp_path / "w").rglob("log.jsonl")]
    assert logs and max(r["step"] for r in logs[0]) == 2  # it trained, where it raised "does not require grad"
