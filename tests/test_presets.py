import pytest

from universality_lib import presets
from universality_lib.errors import UniversalityError


def test_names_and_default():
    assert presets.NAMES == ("smoke", "tiny", "paper", "paper_t4")
    assert presets.get().name == presets.DEFAULT == "tiny"
    for n in presets.NAMES:
        assert presets.get(n).name == n
        assert presets.get(presets.get(n)) is presets.get(n)


@pytest.mark.parametrize("bad", ["Tiny", "", "large", None, 3])
def test_unknown_preset_is_one_clear_error(bad):
    with pytest.raises(UniversalityError, match="unknown preset .*smoke, tiny, paper"):
        presets.get(bad)


@pytest.mark.parametrize("name", ["tiny", "paper"])
def test_mamba_has_twice_the_layers_and_same_width(name):
    p = presets.get(name)
    assert p.mamba.n_layers == 2 * p.transformer.n_layers
    assert p.mamba.d_model == p.transformer.d_model


def test_paper_preset_names_the_published_models():
    p = presets.get("paper")
    assert p.needs_internet and not p.shipped
    assert presets.PAPER_HUB_NAMES == {"T": "EleutherAI/pythia-160m", "T2": "EleutherAI/pythia-160m-seed1",
                                       "M": "state-spaces/mamba-130m"}
    assert p.transformer.hub_name == "EleutherAI/pythia-160m" and p.mamba.hub_name == "state-spaces/mamba-130m"


def test_table_has_a_row_per_preset():
    assert [r["preset"] for r in presets.table()] == list(presets.NAMES)
