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
