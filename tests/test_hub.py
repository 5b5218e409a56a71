"""universality_lib.hub: a missing or empty local folder is told apart from a hub id that needs the network
(issue 18: offline, every model or dataset error said "needs internet")."""

import pytest

from universality_lib import corpus, hub
from universality_lib.errors import OfflineError, UniversalityError
from universality_lib.models.mamba import HookedMamba
from universality_lib.models.transformer import load_gpt_neox

MODEL_FILES = ["*.json", "*.safetensors"]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _not_offline(info):
    assert not isinstance(info.value, OfflineError), info.value
    assert "needs internet" not in str(info.value)


@pytest.mark.parametrize("name", ["./models/mamba-13Om", "../no/such/place", "/no/such/abs/folder",
                                  "~/no-such-dir/x/y"])
def test_a_path_that_names_no_folder_says_no_such_folder(name):
    with pytest.raises(UniversalityError, match="no such folder") as info:
        hub.snapshot(name, MODEL_FILES, what="model")
    _not_offline(info)


def test_an_empty_folder_says_it_has_no_files(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "README.md").write_text("not a model")
    (tmp_path / "notes" / ".hidden.json").write_text("{}")
    for folder in ("empty", "notes"):
        with pytest.raises(UniversalityError, match=r"has no Mamba model files \(expected \*\.json, \*\.safetensors\)"
                           ) as info:
            hub.snapshot(str(tmp_path / folder), MODEL_FILES, what="Mamba model")
        _not_offline(info)
    with pytest.raises(UniversalityError, match="is a file, not a folder"):
        hub.snapshot(str(tmp_path / "notes" / "README.md"), MODEL_FILES)
    (tmp_path / "notes" / "sub").mkdir()
    (tmp_path / "notes" / "sub" / "config.json").write_text("{}")
    assert hub.snapshot(str(tmp_path / "notes"), MODEL_FILES) == tmp_path / "notes"


def test_a_hub_id_offline_still_needs_internet():
    for name in ("state-spaces/mamba-130m", "gpt2"):
        assert hub.is_repo_id(name)
        with pytest.raises(OfflineError, match="needs internet") as info:
            hub.snapshot(name, MODEL_FILES, what="model")
        assert "no local folder of that name" in str(info.value)
    assert not hub.is_repo_id("./models/mamba") and not hub.is_repo_id("/a/b/c")


def test_offline_errors_of_a_dataset_name_the_folder(tmp_path):
    """corpus.hub_documents turns any offline failure into hub.offline_error: a local folder gets its own message."""
    (tmp_path / "empty").mkdir()
    with pytest.raises(UniversalityError, match="has no dataset files") as info:
        corpus.hub_documents(str(tmp_path / "empty"), max_docs=1)
    _not_offline(info)
    with pytest.raises(UniversalityError, match="no such folder") as info:
        corpus.hub_documents(str(tmp_path / "texts" / "missing"), max_docs=1)
    _not_offline(info)
    assert isinstance(hub.offline_error("NeelNanda/pile-10k", "dataset"), OfflineError)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "train.jsonl").write_text("{not json\n")
    err = hub.offline_error(str(tmp_path / "bad"), "dataset", ValueError("bad row"))
    assert not isinstance(err, OfflineError) and "cannot read the local dataset folder" in str(err)


def test_model_loaders_say_no_such_folder(tmp_path):
    for load in (HookedMamba.from_pretrained, load_gpt_neox):
        with pytest.raises(UniversalityError, match="no such folder") as info:
            load(str(tmp_path / "no" / "such" / "model"))
        _not_offline(info)
        with pytest.raises(UniversalityError, match="has no .*model files") as info:
            load(str(tmp_path))
        _not_offline(info)
