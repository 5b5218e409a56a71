"""Bad inputs to the SAE, activation and induction functions, refused up front with one clear error, and SAEs
refused on a model they were not trained on (same width, other class or other weights).

The models are built here (d_model 16, the shipped tiny tokenizer, no training); the one SAE is trained for 16
steps on random token rows."""
import copy

import pytest
import torch

from universality_lib import activations as acts
from universality_lib import corpus, induction, saes
from universality_lib.errors import UniversalityError
from universality_lib.models.mamba import HookedMamba, MambaConfig
from universality_lib.presets import SAEConfig, TransformerConfig

CFG = SAEConfig(expansion_factor=2, l1_coefficient=1.0, training_tokens=4096, batch_tokens=256, lr=3e-3, context=32,
                n_batches_in_buffer=8, store_batch_rows=8, dead_feature_window=50, eval_tokens=1024)


@pytest.fixture(scope="module")
def tok():
    return corpus.load_tokenizer("tiny")


def _transformer(tok, seed):
    from universality_lib.models.transformer import make_transformer

    cfg = TransformerConfig(n_layers=1, d_model=16, n_heads=2, d_mlp=32, n_ctx=64)
    return make_transformer(cfg, len(tok), seed=seed, tokenizer=tok, device="cpu").eval()


@pytest.fixture(scope="module")
def T(tok):
    return _transformer(tok, seed=0)


@pytest.fixture(scope="module")
def rows(tok):
    """[64, 32] random ordinary tokens, BOS first."""
    r = torch.randint(0, len(tok), (64, 32), generator=torch.Generator().manual_seed(0))
    r[r == tok.bos_token_id] = tok.bos_token_id + 1
    r[:, 0] = tok.bos_token_id
    return r


@pytest.fixture(scope="module")
def sae_of_T(T, rows):
    return saes.train(T, 0, CFG, rows, progress=False).sae


def _bad_rows(tok, rows):
    bos = tok.bos_token_id
    return {
        "no rows": rows[:0],
        "one dimension": rows[0],
        "float rows": rows.float(),
        "float rows of empty texts (all 0.0)": torch.zeros(4, 32),
        "token id = vocab size": torch.full((2, 32), len(tok)),
        "negative token id": torch.full((2, 32), -1),
        "every position BOS": torch.full((8, 32), bos),
    }


# ----------------------------------------------------------------------------- saes.train, feature_acts, evaluate
@pytest.mark.parametrize("case", ["no rows", "one dimension", "float rows", "float rows of empty texts (all 0.0)",
                                  "token id = vocab size", "negative token id", "every position BOS"])
def test_train_refuses_bad_rows_up_front(T, tok, rows, case):
    """Before: 0 rows and rows with no ordinary token hung (sae-lens' buffer never fills), float rows of 0.0 (a
    dataset of empty texts) were read as BOS and hung too, ids >= vocab raised IndexError inside the model."""
    bad = _bad_rows(tok, rows)[case]
    match = {"no rows": "n >= 1 rows", "one dimension": "n >= 1 rows", "float rows": "integer token ids",
             "float rows of empty texts (all 0.0)": "integer token ids", "token id = vocab size": "vocabulary has ids",
             "negative token id": "vocabulary has ids", "every position BOS": "no ordinary token"}[case]
    with pytest.raises(UniversalityError, match=match):
        saes.train(T, 0, CFG, bad, progress=False)


@pytest.mark.parametrize("case", ["no rows", "float rows", "token id = vocab size"])
def test_feature_acts_evaluate_and_resid_post_refuse_bad_rows(T, tok, rows, sae_of_T, case):
    bad = _bad_rows(tok, rows)[case]
    for call in (lambda: saes.feature_acts(sae_of_T, T, bad), lambda: saes.evaluate(sae_of_T, T, bad),
                 lambda: acts.resid_post(T, bad, [0])):
        with pytest.raises(UniversalityError, match=r"rows (must|hold)"):
            call()


def test_resid_post_needs_a_layer(T, rows):
    with pytest.raises(UniversalityError, match="layers is empty: name at least one block"):
        acts.resid_post(T, rows, [])  # before: ValueError from max() of an empty list
    assert acts.resid_post(T, rows[:2], [0])[0].shape == (2, 32, 16)


# ----------------------------------------------------------------------------- induction
def test_induction_check_refuses_what_has_no_loss(T, tok):
    vocab = torch.arange(1, 100)
    good = induction.repeated_random_tokens(vocab, 4, 8, bos_id=tok.bos_token_id)
    assert induction.induction_check(T, good).first_copy_loss > 0
    with pytest.raises(UniversalityError, match="n >= 1 rows"):
        induction.induction_check(T, good[:0])  # before: RuntimeError from torch.cat of nothing
    with pytest.raises(UniversalityError, match="vocabulary has ids"):
        induction.induction_check(T, good + len(tok))  # before: IndexError in the embedding
    for seq_len in (0, 1):  # before: ratio NaN (a mean over no positions), "passed" False
        with pytest.raises(UniversalityError, match="length 2S \\+ 1 with S >= 2"):
            induction.induction_check(T, induction.repeated_random_tokens(vocab, 4, seq_len, bos_id=0))
    with pytest.raises(UniversalityError, match="length 2S \\+ 1"):
        induction.induction_check(T, good[:, :-1])  # an even length is not two copies
    # an empty text is one BOS token: no next token to predict (before: a [n, 0] loss, whose mean is NaN)
    with pytest.raises(UniversalityError, match="L >= 2 token ids"):
        induction.per_position_loss(T, T.to_tokens(""))


# ----------------------------------------------------------------------------- the SAE's model
def test_an_sae_is_refused_on_another_model_of_the_same_width(T, tok, rows, sae_of_T):
    """Before: only the hook and the width were checked, so T's SAE read M (same d_model) and T2 silently."""
    assert saes.check_compatible(sae_of_T, T) == "blocks.0.hook_resid_post"
    saes.check_compatible(sae_of_T, copy.deepcopy(T))  # the same weights in another object: accepted
    assert sae_of_T.cfg.metadata.model_fingerprint == saes.model_fingerprint(T)
    M = HookedMamba(MambaConfig(d_model=16, n_layers=1, d_vocab=len(tok), seed=0), tokenizer=tok).eval()
    with pytest.raises(UniversalityError, match="trained on a HookedTransformer .* not on a HookedMamba"):
        saes.feature_acts(sae_of_T, M, rows[:2])
    T2 = _transformer(tok, seed=1)  # same architecture, another seed
    with pytest.raises(UniversalityError, match="whose weights are not this model's"):
        saes.evaluate(sae_of_T, T2, rows[:2])
    # an SAE that records no model (made by hand, or cached before the fingerprint was recorded) is not refused
    del sae_of_T.cfg.metadata.__dict__["model_fingerprint"]
    try:
        saes.check_compatible(sae_of_T, T2)
    finally:
        sae_of_T.cfg.metadata.model_fingerprint = saes.model_fingerprint(T)
