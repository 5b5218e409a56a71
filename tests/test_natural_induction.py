"""The natural-text induction check (zoo v2 criterion): snippets inside one held-out document, repeated."""
import pytest
import torch

from universality_lib import induction
from universality_lib.errors import UniversalityError


def test_snippets_lie_inside_documents_and_repeat():
    bos = 0
    stream = torch.tensor([bos] + list(range(1, 40)) + [bos] + list(range(50, 90)))  # two documents
    rows = induction.heldout_snippets(stream, n=6, seq_len=8, bos_id=bos, seed=1)
    assert rows.shape == (6, 17) and (rows[:, 0] == bos).all()
    assert torch.equal(rows[:, 1:9], rows[:, 9:]) and not (rows[:, 1:] == bos).any()
    assert len({tuple(r.tolist()) for r in rows}) == 6  # distinct windows
    assert torch.equal(rows, induction.heldout_snippets(stream, 6, 8, bos, seed=1))  # deterministic
    with pytest.raises(UniversalityError, match="fewer than the 20 asked for"):
        induction.heldout_snippets(stream, n=20, seq_len=8, bos_id=bos)


class _Copier(torch.nn.Module):
    """A planted answer: predicts token i+1 as the token S positions back once there is one (perfect
    induction on the repeat), uniform otherwise."""

    def __init__(self, vocab: int, S: int):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.vocab, self.S = vocab, S

    def forward(self, x, return_type="logits"):
        logits = torch.zeros(*x.shape, self.vocab)
        for i in range(self.S + 1, x.shape[1]):
            logits[torch.arange(len(x)), i, x[:, i - self.S + 1]] = 30.0
        return logits


def test_induction_check_tells_a_copier_from_a_guesser():
    bos = 0
    stream = torch.randint(1, 50, (2000,))
    rows = induction.heldout_snippets(stream, n=10, seq_len=16, bos_id=bos)
    copier = induction.induction_check(_Copier(50, 16), rows)
    assert copier.passed and copier.ratio < 0.01
    guesser = _Copier(50, 10_000)  # never has a copy to look back at: uniform everywhere
    g = induction.induction_check(guesser, rows)
    assert not g.passed and g.ratio == pytest.approx(1.0)
