"""The zoo's own check (zoo_check): planted answers for the induction rows, and the loss ratio as computed."""
from types import SimpleNamespace

import pytest
import torch

from universality_lib import corpus, zoo_check
from universality_lib.induction import per_position_loss


class _Planted(torch.nn.Module):
    """Predicts token i+1 as the token ``S - 1`` positions back once there is one: a perfect copier of rows
    [BOS] x_1..x_S x_1..x_S when ``S`` is the copy length; ``S`` larger than the row: uniform everywhere."""

    def __init__(self, tokenizer, S: int, n_ctx: int = 64):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.tokenizer, self.S, self.cfg = tokenizer, S, SimpleNamespace(n_ctx=n_ctx)
        self.vocab = len(tokenizer)

    def forward(self, x, return_type="logits"):
        logits = torch.zeros(*x.shape, self.vocab)
        for i in range(self.S, x.shape[1]):
            logits[torch.arange(len(x)), i, x[:, i - self.S + 1]] = 30.0
        return logits


def test_a_copier_passes_the_induction_rows_and_a_guesser_fails_them():
    tok = corpus.load_tokenizer("smoke")
    S = (64 - 1) // 2  # the copy length criteria() uses for a 64-token context
    rows = zoo_check.criteria("smoke", {"T": _Planted(tok, S), "X": _Planted(tok, 10_000)}, n_snippets=8)
    got = {(r.criterion, r.model): r for r in rows}
    for crit in ("natural_induction_code", "random_induction"):
        assert got[(crit, "T")].passed and got[(crit, "T")].value < 0.01
        assert not got[(crit, "X")].passed and got[(crit, "X")].value == pytest.approx(1.0)
    assert ("heldout_loss_ratio", "M/T") not in got and ("clean_prob_B", "M") not in got  # no M given
    assert {r.split for r in rows if r.criterion.startswith("natural")} == {"eval"}  # smoke has no heldout split


def test_loss_ratio_is_the_ratio_of_mean_losses_and_its_verdict_follows_the_tolerance():
    from universality_lib import zoo

    T, M = zoo.load("smoke", "T"), zoo.load("smoke", "M")
    rows = {r.criterion: r for r in zoo_check.criteria("smoke", {"T": T, "M": M}, n_snippets=4, n_loss_rows=8)}
    stream = corpus.token_stream("smoke", "eval", T.tokenizer)
    eval_rows = stream.rows(64, n_rows=8)
    want = per_position_loss(M, eval_rows).mean() / per_position_loss(T, eval_rows).mean()
    r = rows["heldout_loss_ratio"]
    assert r.value == pytest.approx(float(want), rel=1e-6) and r.n == 8
    assert r.passed == (abs(r.value - 1) <= zoo_check.LOSS_TOLERANCE)
    p = rows["clean_prob_B"]
    assert 0 <= p.value <= 1 and p.passed == (p.value >= zoo_check.CLEAN_PROB_B_MIN)


def test_record_puts_every_criterion_with_its_verdict_in_the_results(tmp_path, monkeypatch):
    from universality_lib import claims, results

    monkeypatch.setenv("UNIVERSALITY_RESULTS_DIR", str(tmp_path))
    rows = [zoo_check.Criterion("heldout_loss_ratio", "M/T", 1.01, "within 3% of 1", True, "heldout", 256),
            zoo_check.Criterion("clean_prob_B", "M", 0.01, ">= 0.3", False, "chapter 5 prompts", 512)]
    assert claims.record_zoo_check(rows) is rows
    got = {r["name"]: r for r in results.load_chapter()}
    assert got["zoo_heldout_loss_ratio_M_over_T"]["passed"] is True
    assert got["zoo_clean_prob_B_M"]["passed"] is False and got["zoo_clean_prob_B_M"]["value"] == 0.01


def test_induction_curves_draw_one_panel_per_probe_the_logs_have():
    from universality_lib.plots import induction_curves
    from universality_lib.plots.zoo import INDUCTION_PANELS

    code_only = {"T": [{"tokens": 1, "repeat_first": 7.0, "repeat_second": 3.5}, {"tokens": 2, "loss": 3.0}]}
    assert len(induction_curves(code_only).axes) == 1
    mix = {"T": [{"tokens": 1, "repeat_first": 7.0, "repeat_second": 3.5, "natural_text_ratio": 0.9,
                  "natural_code_ratio": 0.8}]}
    fig = induction_curves(mix)
    assert [a.get_title() for a in fig.axes] == list(INDUCTION_PANELS)
    assert fig.axes[0].lines[0].get_ydata()[0] == 0.5  # the ratio, not the loss


class _Inductor(_Planted):
    """At every position, predicts the token after the previous occurrence of the current token (``start_only``:
    only when that occurrence is the first token after BOS, the shortcut a model trained on tiled rows can learn)."""

    def __init__(self, tokenizer, start_only: bool = False):
        super().__init__(tokenizer, S=0)
        self.start_only = start_only

    def forward(self, x, return_type="logits"):
        logits = torch.zeros(*x.shape, self.vocab)
        for r in range(len(x)):
            for i in range(x.shape[1]):
                earlier = (x[r, :i] == x[r, i]).nonzero().flatten()
                if len(earlier) and (not self.start_only or int(earlier[-1]) == 1):
                    logits[r, i, x[r, int(earlier[-1]) + 1]] = 30.0
        return logits


def test_prob_B_by_prefix_tells_induction_from_copying_the_row_start():
    from universality_lib.circuits.task import insert_prefix, make_prompts, task_config, task_vocab
    from universality_lib.errors import UniversalityError

    tok = corpus.load_tokenizer("smoke")
    table = zoo_check.prob_B_by_prefix({"ind": _Inductor(tok), "start": _Inductor(tok, start_only=True)}, "smoke",
                                       n_prompts=16)
    assert table.index[0] == 0 and len(table) >= 3
    assert (table["ind"] > 0.99).all()  # whatever comes before A
    assert table["start"].iloc[0] > 0.99 and (table["start"].iloc[1:] < 0.01).all()  # only when A opens the row
    # without BOS: the same tokens one position earlier; induction does not care, the planted shortcut (an earlier
    # copy at position 1, right after BOS) now fires for k = 1 instead of k = 0
    no_bos = zoo_check.prob_B_by_prefix({"ind": _Inductor(tok), "start": _Inductor(tok, start_only=True)}, "smoke",
                                        n_prompts=16, bos=False)
    assert (no_bos["ind"] > 0.99).all() and list(no_bos.index) == list(table.index)
    assert no_bos["start"].loc[0] < 0.01 and no_bos["start"].loc[1] > 0.99
    with pytest.raises(UniversalityError, match="n_ctx"):
        zoo_check.prob_B_by_prefix({"ind": _Inductor(tok)}, "smoke", prefixes=(0, 60), gap=32)
    for bad in ("32", 2, True):  # refused as a gap, before it chooses the prefixes
        with pytest.raises(UniversalityError, match="gap"):
            zoo_check.prob_B_by_prefix({"ind": _Inductor(tok)}, "smoke", gap=bad)
    base = make_prompts(task_vocab("smoke", tok), task_config("smoke", n_prompts=8), bos_id=tok.bos_token_id)
    moved = insert_prefix(base, 5)
    assert torch.equal(moved.tokens[:, 6:], base.tokens[:, 1:]) and torch.equal(moved.pos_a, base.pos_a + 5)
    assert not (moved.tokens[:, 1:6] == base.a[:, None]).any() and bool((moved.tokens[:, 0] == tok.bos_token_id).all())


def test_prob_B_by_start_splits_chapter_5s_prompts_by_where_A_sits():
    from universality_lib.circuits import make_prompts, prob_B_by_start, task_config, task_vocab
    from universality_lib.circuits.task import prob_B
    from universality_lib.errors import UniversalityError

    tok = corpus.load_tokenizer("smoke")
    for bos in (True, False):
        prompts = make_prompts(task_vocab("smoke", tok), task_config("smoke", n_prompts=64, seed=3, prepend_bos=bos),
                               bos_id=tok.bos_token_id if bos else None)
        ind = prob_B_by_start(prob_B(_Inductor(tok), prompts), prompts)
        start = prob_B_by_start(prob_B(_Inductor(tok, start_only=True), prompts).numpy(), prompts)  # a sweep's array
        opens = int((prompts.pos_a == int(bos)).sum())
        assert ind["n_first"] == start["n_first"] == opens and ind["n_first"] + ind["n_later"] == 64
        assert ind["A_later"] > 0.99 and (ind["A_first"] is None or ind["A_first"] > 0.99)
        if bos:  # the planted shortcut copies from position 1, which opens the body only after a BOS
            assert opens > 0 and start["A_first"] > 0.99 and start["A_later"] < 0.01
    # the first n prompts only, as a sweep that stopped early measured them
    half = prob_B_by_start(prob_B(_Inductor(tok), prompts)[:32], prompts)
    assert half["n_first"] + half["n_later"] == 32 and half["n_first"] == int((prompts.pos_a[:32] == 0).sum())
    with pytest.raises(UniversalityError, match="first n of the 64"):
        prob_B_by_start(torch.ones(65), prompts)


def test_the_training_probe_logs_clean_p_B_on_chapter_5s_prompts():
    """The probe's clean_pB is the mean p(B) of its 64 prompts: a model that puts all its mass on B gives 1."""
    from universality_lib import presets
    from universality_lib.circuits.induction import training_probe
    from universality_lib.circuits.task import make_prompts, task_config, task_vocab

    p = presets.get("smoke")
    tok = corpus.load_tokenizer(p)
    vocab = corpus.frequent_tokens(corpus.token_stream(p, "eval", tok), 100)
    prompts = make_prompts(task_vocab(p, tok), task_config(p, n_prompts=64, seed=99), bos_id=tok.bos_token_id)
    b_of = {tuple(t.tolist()): int(b) for t, b in zip(prompts.tokens, prompts.b)}

    class Oracle(_Planted):  # knows each probe prompt's B
        def forward(self, x, return_type="logits"):
            logits = super().forward(x)
            for i, row in enumerate(x):
                if tuple(row.tolist()) in b_of:
                    logits[i, -1] = -30.0
                    logits[i, -1, b_of[tuple(row.tolist())]] = 30.0
            return logits

    row = training_probe(p, tok, vocab)(Oracle(tok, 10_000))
    assert row["clean_pB"] == pytest.approx(1.0, abs=1e-6)
    assert training_probe(p, tok, vocab)(_Planted(tok, 10_000))["clean_pB"] < 0.01  # uniform: 1 / vocabulary


class _RowStartCopier(_Planted):
    """Copies only a span that opens its row: at position i, once the last tokens repeat the row's first tokens
    (x_j .. x_i equal x_1 .. x_{i-j+1}, j > 1 the latest such start), predicts x_{i-j+2}; elsewhere uniform. The
    shortcut a model trained on tiled rows can learn, which a repeat that opens its row cannot tell from induction."""

    def __init__(self, tokenizer):
        super().__init__(tokenizer, S=0)

    def forward(self, x, return_type="logits"):
        logits = torch.zeros(*x.shape, self.vocab)
        for r in range(len(x)):
            row = x[r].tolist()
            for i in range(2, len(row) - 1):
                for j in range(i, 1, -1):
                    if row[j:i + 1] == row[1:i - j + 2]:
                        logits[r, i, row[i - j + 2]] = 30.0
                        break
        return logits


def test_natural_ratio_by_prefix_tells_induction_from_copying_the_row_start():
    from universality_lib.errors import UniversalityError
    from universality_lib.plots import ratio_by_prefix

    tok = corpus.load_tokenizer("smoke")
    models = {"copy": _Planted(tok, 8, n_ctx=64), "start": _RowStartCopier(tok), "none": _Planted(tok, 10_000)}
    table = zoo_check.natural_ratio_by_prefix(models, "smoke", prefixes=(0, 4, 16), seq_len=8, n_snippets=6)
    assert list(table.index) == [0, 4, 16] and table.index.name == "tokens before the first copy"
    # a copy at the lag of the repeat (an induction model's answer on these rows) copies wherever the first copy is
    assert (table["copy"] < 0.01).all()
    # the row-start copier passes the criterion's shape (k = 0; a token repeated inside a snippet makes it err a
    # little there) and copies nothing once the first copy does not open the row
    assert table["start"].loc[0] < zoo_check.INDUCTION_MAX and (table["start"].loc[[4, 16]] > 0.99).all()
    assert table["none"].tolist() == pytest.approx([1.0, 1.0, 1.0])
    # k = 0 is the criterion's row shape: BOS, the snippet, the snippet again
    assert zoo_check.natural_ratio_by_prefix({"copy": _Planted(tok, 8, n_ctx=64)}, "smoke", seq_len=8,
                                             n_snippets=6).index[-1] == 32  # 1 + 48 + 16 > 64 cuts 48
    # one table per kind of text: smoke has only the standard library's code
    tables = zoo_check.natural_ratio_tables({"copy": _Planted(tok, 15, n_ctx=64)}, "smoke", n_snippets=6)
    assert list(tables) == ["code"] and (tables["code"]["copy"] < 0.01).all()  # seq_len 15 at n_ctx 64
    fig = ratio_by_prefix({"code": table})  # chapter 1's figure: a line per model, the criterion dotted
    assert [len(ax.lines) for ax in fig.axes] == [len(models) + 1] and fig.axes[0].get_title() == "code"
    with pytest.raises(UniversalityError, match="n_ctx"):
        zoo_check.natural_ratio_by_prefix(models, "smoke", prefixes=(0, 60), seq_len=8)
    for bad in (2, "8", True):
        with pytest.raises(UniversalityError, match="seq_len"):
            zoo_check.natural_ratio_by_prefix(models, "smoke", seq_len=bad)
