"""The zoo: train-on-demand (smoke), verified loading, and one clear error per bad input."""
import shutil

import pytest
import torch

from universality_lib import cache, corpus, presets, zoo
from universality_lib.errors import IntegrityError, OfflineError, UniversalityError


@pytest.fixture(scope="module")
def smoke_T():
    return zoo.load("smoke", "T", device="cpu")


def test_smoke_model_is_trained_once_and_verified(smoke_T):
    folder = zoo.model_dir("smoke", "T")
    assert (folder / cache.MANIFEST).exists()
    cache.verify_manifest(folder)
    meta = zoo.train_meta("smoke", "T")
    assert meta["seed"] == 0 and meta["tokenizer_sha"] == corpus.tokenizer_hash(corpus.load_tokenizer("smoke"))
    assert meta["steps"] > 0 and meta["wall_seconds"] > 0
    assert not smoke_T.training
    again = zoo.load("smoke", "T", device="cpu")  # loads, does not retrain
    x = torch.randint(0, 512, (1, 8))
    assert torch.equal(again(x), smoke_T(x))


def test_corrupt_checkpoint_is_refused(smoke_T, tmp_path):
    copy = tmp_path / "T"
    shutil.copytree(zoo.model_dir("smoke", "T"), copy)
    with open(copy / "model.safetensors", "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\x00\x01\x02\x03\x04\x05\x06\x07")
    with pytest.raises(IntegrityError, match="does not match its recorded sha256"):
        zoo.load_folder(copy, corpus.load_tokenizer("smoke"))


def test_mismatched_tokenizer_is_refused(smoke_T, tmp_path):
    other = corpus.train_tokenizer(["def f(x): return x\n" * 50], 300, tmp_path / "tok")
    with pytest.raises(UniversalityError, match="tokenizer does not match"):
        zoo.load_folder(zoo.model_dir("smoke", "T"), other)


def test_unknown_model_name():
    with pytest.raises(UniversalityError, match="unknown model 'X'.*T, T2, M, M0"):
        zoo.load("smoke", "X")


def test_missing_shipped_checkpoint_says_how_to_make_it(monkeypatch, tmp_path):
    monkeypatch.setattr(zoo, "shipped_dir", lambda preset: tmp_path / presets.get(preset).name)
    monkeypatch.setattr(corpus, "load_tokenizer", lambda preset: corpus.load_tokenizer_folder(
        corpus.tokenizer_folder("smoke")))
    with pytest.raises(UniversalityError, match="python -m universality_lib train --preset tiny"):
        zoo.load("tiny", "T")


def test_paper_offline_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OfflineError, match="needs internet"):
        zoo.load("paper", "T")
    with pytest.raises(UniversalityError, match="nothing to train"):
        zoo.train_model("paper", "T")
