"""The Pythia-style Transformer: config, and the `paper` loader tested offline on a local GPT-NeoX."""
import pytest
import torch

from universality_lib import corpus, presets
from universality_lib.errors import OfflineError, UniversalityError
from universality_lib.models import transformer as tr

from standins import save_gpt_neox


@pytest.fixture(scope="module")
def neox_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pythia-tiny")
    # the same format as EleutherAI/pythia-160m on the hub
    hf = save_gpt_neox(folder, 512, tokenizer=corpus.load_tokenizer("smoke"))
    return folder, hf


def test_make_transformer_is_pythia_style_and_seeded():
    size = presets.get("smoke").transformer
    a = tr.make_transformer(size, 512, seed=0)
    b = tr.make_transformer(size, 512, seed=0)
    c = tr.make_transformer(size, 512, seed=1)
    assert a.cfg.parallel_attn_mlp and a.cfg.positional_embedding_type == "rotary"
    assert a.cfg.normalization_type == "LN" and a.cfg.rotary_dim == int(0.25 * a.cfg.d_head) // 2 * 2
    assert a.W_U.data_ptr() != a.W_E.data_ptr()  # untied unembedding
    x = torch.randint(0, 512, (2, 12))
    assert torch.equal(a(x), b(x)) and not torch.equal(a(x), c(x))


def test_load_gpt_neox_matches_hf_logits(neox_folder):
    folder, hf = neox_folder
    model = tr.load_gpt_neox(folder)
    x = torch.randint(0, 512, (2, 16))
    ours = model(x)
    ref = hf(x).logits
    # center_unembed shifts every logit of a position by the same constant: compare centred logits
    centred = lambda t: t - t.mean(-1, keepdim=True)  # noqa: E731
    assert (centred(ours) - centred(ref)).abs().max().item() <= 1e-4
    assert model.to_tokens("x = 1")[0, 0].item() == model.tokenizer.bos_token_id


def test_load_gpt_neox_refuses_other_architectures(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64, n_positions=16)).save_pretrained(tmp_path)
    with pytest.raises(UniversalityError, match="not a GPT-NeoX"):
        tr.load_gpt_neox(tmp_path)


def test_hub_name_offline_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OfflineError, match="paper' preset needs internet"):
        tr.load_gpt_neox("EleutherAI/pythia-160m")


def test_save_load_roundtrip(tmp_path):
    m = tr.make_transformer(presets.get("smoke").transformer, 512, seed=3)
    tr.save_transformer(m, tmp_path)
    m2 = tr.load_transformer(tmp_path)
    x = torch.randint(0, 512, (2, 10))
    assert torch.equal(m(x), m2(x))
