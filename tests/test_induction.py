import torch

from universality_lib import induction


class _Copier(torch.nn.Module):
    """A fake LM that predicts perfectly where the sequence repeats, uniformly elsewhere."""

    def __init__(self, V):
        super().__init__()
        self.V = V
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, tokens, return_type="logits"):
        B, L = tokens.shape
        S = (L - 1) // 2
        logits = torch.zeros(B, L, self.V)
        for i in range(S + 1, L - 1):  # inside the second copy the next token is known
            logits[torch.arange(B), i, tokens[:, i + 1]] = 30.0
        return logits


def test_repeated_tokens_layout():
    vocab = torch.arange(10, 20)
    x = induction.repeated_random_tokens(vocab, 3, 5, bos_id=0, seed=1)
    assert x.shape == (3, 11) and (x[:, 0] == 0).all()
    assert torch.equal(x[:, 1:6], x[:, 6:]) and ((x[:, 1:] >= 10) & (x[:, 1:] < 20)).all()
    assert torch.equal(x, induction.repeated_random_tokens(vocab, 3, 5, bos_id=0, seed=1))
    text = torch.arange(100)
    y = induction.repeated_text_tokens(text, 2, 4, bos_id=0)
    assert torch.equal(y[:, 1:5], y[:, 5:]) and (y[:, 2] - y[:, 1] == 1).all()  # a contiguous snippet


def test_induction_check_detects_copying_and_its_absence():
    V = 50
    x = induction.repeated_random_tokens(torch.arange(1, V), 8, 16, bos_id=0)
    good = induction.induction_check(_Copier(V), x)
    assert good.passed and good.repeat_loss < 1e-6 < good.first_copy_loss
    assert abs(good.first_copy_loss - torch.log(torch.tensor(float(V))).item()) < 1e-4  # chance level
    assert len(good.per_position) == x.shape[1] - 1

    class Uniform(_Copier):
        def forward(self, tokens, return_type="logits"):
            return torch.zeros(*tokens.shape, self.V)

    bad = induction.induction_check(Uniform(V), x)
    assert not bad.passed and abs(bad.ratio - 1) < 1e-6


def test_induction_check_with_a_prefix_reads_the_copies_after_it():
    """Rows [BOS] p_1..p_k x x: the ratio is taken over the two copies after the k prefix tokens (a copier that knows
    the copy length passes whatever k; the prefix's own losses do not enter)."""
    import pytest

    from universality_lib.errors import UniversalityError

    V, S, k = 50, 16, 5
    x = induction.repeated_random_tokens(torch.arange(1, V), 8, S, bos_id=0)
    rows = torch.cat([x[:, :1], torch.randint(1, V, (8, k)), x[:, 1:]], dim=1)

    class LagCopier(_Copier):  # predicts the token S back: perfect on the repeat, wherever it starts
        def forward(self, tokens, return_type="logits"):
            logits = torch.zeros(*tokens.shape, self.V)
            for i in range(S, tokens.shape[1]):
                logits[torch.arange(len(tokens)), i, tokens[:, i - S + 1]] = 30.0
            return logits

    moved = induction.induction_check(LagCopier(V), rows, prefix=k)
    assert moved.passed and moved.repeat_loss < 1e-6 < moved.first_copy_loss
    assert induction.induction_check(LagCopier(V), x).ratio == pytest.approx(moved.ratio, abs=1e-6)
    for bad in (-1, True, "5"):
        with pytest.raises(UniversalityError, match="prefix"):
            induction.induction_check(LagCopier(V), rows, prefix=bad)
    with pytest.raises(UniversalityError, match="after 4 prefix tokens"):  # the copies do not fit what is left
        induction.induction_check(LagCopier(V), rows, prefix=4)


def test_head_scores_find_a_hand_built_induction_pattern():
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=1, d_model=8, n_ctx=64, d_head=4, n_heads=2, d_vocab=20,
                                  act_fn="relu", attn_only=True)
    model = HookedTransformer(cfg)
    S = 6
    x = induction.repeated_random_tokens(torch.arange(1, 20), 2, S, bos_id=0)
    L = x.shape[1]

    def fake_pattern(pattern, hook):  # head 0: induction offsets; head 1: previous token
        p = torch.zeros_like(pattern)
        for q in range(L):
            k_ind = q - S + 1 if q > S else 0
            p[:, 0, q, k_ind] = 1
            p[:, 1, q, max(q - 1, 0)] = 1
        return p

    model.blocks[0].attn.hook_pattern.add_hook(fake_pattern)
    scores = induction.head_scores(model, x)
    assert scores["induction"].shape == (1, 2)
    assert scores["induction"][0, 0] == 1 and scores["induction"][0, 1] < 0.5
    assert scores["previous"][0, 1] == 1 and scores["previous"][0, 0] < 0.5
