import json

import pytest
import torch

from universality_lib import corpus, presets, zoo
from universality_lib.presets import TrainConfig
from universality_lib.train import add_repeats, lr_at, read_log, train


def test_lr_schedule_warms_up_then_decays_to_floor():
    cfg = TrainConfig(lr=1.0, warmup_steps=10, min_lr_frac=0.1)
    lrs = [lr_at(s, 100, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lr_at(100, 100, cfg) == pytest.approx(0.1)


def test_add_repeats_places_the_same_span_twice():
    cfg = TrainConfig(repeat_frac=0.5, repeat_span=5, data_seed=1)
    batch = torch.zeros(4, 32, dtype=torch.long)
    vocab = torch.arange(100, 200)
    out = add_repeats(batch, cfg, vocab, step=7)
    assert torch.equal(out, add_repeats(batch, cfg, vocab, step=7))  # deterministic in the step
    assert (out[2:] == 0).all() and (out[:, 0] == 0).all()  # half the rows; BOS slot untouched
    for r in range(2):
        nz = out[r].nonzero().flatten()
        assert len(nz) == 10
        assert torch.equal(out[r, nz[:5]], out[r, nz[5:]])


def _tiny_run(tmp_path, name, steps, max_steps=None):
    p = presets.get("smoke")
    cfg = TrainConfig(tokens=steps * 4 * 32, batch_size=4, context=32, lr=3e-3, warmup_steps=2,
                      log_every=1, eval_every=2, checkpoint_every=3, repeat_frac=0.5, repeat_span=8)
    tok = corpus.load_tokenizer(p)
    stream = corpus.token_stream(p, "eval", tok)
    model = zoo.build(p, "T", tokenizer=tok)
    vocab = corpus.frequent_tokens(stream, 50)
    state = train(model, stream, cfg, tmp_path / name, seed=0, save_model=zoo.save_model,
                  load_weights=zoo.load_weights, repeat_vocab=vocab, progress=False, max_steps=max_steps,
                  eval_fn=lambda m: {"probe": 1.0}, device=torch.device("cpu"))
    return model, state


def test_training_lowers_loss_and_logs(tmp_path):
    model, state = _tiny_run(tmp_path, "a", 12)
    log = read_log(tmp_path / "a")
    assert [r["step"] for r in log] == list(range(1, 13))
    assert log[-1]["loss"] < log[0]["loss"]
    assert "probe" in log[1] and "probe" not in log[0]
    assert state.tokens == 12 * 4 * 32
    saved = json.loads((tmp_path / "a" / "checkpoint" / "state.json").read_text())
    assert saved["step"] == 12


def test_resume_is_exact(tmp_path):
    straight, _ = _tiny_run(tmp_path, "straight", 6)
    _, half = _tiny_run(tmp_path, "resumed", 6, max_steps=3)
    assert half.step == 3
    resumed, state = _tiny_run(tmp_path, "resumed", 6)
    assert state.step == 6
    for (n, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-6), n


def test_add_repeats_sequence_mode_tiles_the_row():
    cfg = TrainConfig(repeat_frac=0.25, repeat_span=7, repeat_mode="sequence", data_seed=2)
    batch = torch.zeros(8, 20, dtype=torch.long)
    out = add_repeats(batch, cfg, torch.arange(100, 200), step=3)
    assert (out[2:] == 0).all() and (out[:, 0] == 0).all()
    periods = set()
    for r in range(2):
        row = out[r, 1:]
        period = next(k for k in range(1, 8) if torch.equal(row[k:], row[:-k]))  # the row is tiled
        assert 7 // 4 <= period <= 7 and ((row >= 100) & (row < 200)).all()
        periods.add(period)
    many = add_repeats(torch.zeros(64, 20, dtype=torch.long), cfg, torch.arange(100, 200), step=4)
    found = {next(k for k in range(1, 8) if torch.equal(row[1 + k:], row[1:-k])) for row in many[:16]}
    assert len(found) > 1  # the period varies from row to row
    with pytest.raises(Exception, match="repeat_mode"):
        add_repeats(batch, TrainConfig(repeat_frac=0.5, repeat_span=4, repeat_mode="nope"), torch.arange(5), step=0)


def _period(row: torch.Tensor) -> int:
    return next(k for k in range(1, len(row)) if torch.equal(row[k:], row[:-k]))


def test_period_ramp_grows_from_two_to_the_span():
    from universality_lib.train import max_period

    cfg = TrainConfig(repeat_frac=1.0, repeat_span=16, repeat_mode="sequence", repeat_ramp_frac=0.5)
    assert [max_period(cfg, s, 100) for s in (0, 25, 50, 99)] == [2, 9, 16, 16]
    early = add_repeats(torch.zeros(32, 40, dtype=torch.long), cfg, torch.arange(100, 1100), step=0, total=100)
    late = add_repeats(torch.zeros(32, 40, dtype=torch.long), cfg, torch.arange(100, 1100), step=90, total=100)
    assert max(_period(r[1:]) for r in early) <= 2
    assert max(_period(r[1:]) for r in late) > 8
    lo = TrainConfig(repeat_frac=1.0, repeat_span=16, repeat_mode="sequence", repeat_min_period=12)
    assert min(_period(r[1:]) for r in add_repeats(torch.zeros(32, 40, dtype=torch.long), lo,
                                                     torch.arange(100, 1100), step=3)) >= 12


def test_mamba_lr_applies_to_the_mamba_only():
    from universality_lib.models.mamba import HookedMamba, MambaConfig
    from universality_lib.models.transformer import make_transformer
    from universality_lib.presets import get
    from universality_lib.train import lr_at, peak_lr

    cfg = TrainConfig(lr=1e-3, mamba_lr=4e-3, warmup_steps=0)
    m = HookedMamba(MambaConfig(d_model=16, n_layers=1, d_vocab=50))
    t = make_transformer(get("smoke").transformer, 50, seed=0)
    assert peak_lr(cfg, m) == 4e-3 and peak_lr(cfg, t) == 1e-3
    assert peak_lr(TrainConfig(lr=1e-3), m) == 1e-3
    assert lr_at(0, 10, cfg, 4e-3) == 4e-3


def test_pair_rows_copy_one_short_span_per_window_and_only_for_the_mamba():
    from dataclasses import replace

    from universality_lib.models.mamba import HookedMamba, MambaConfig
    from universality_lib.models.transformer import make_transformer
    from universality_lib.presets import get
    from universality_lib.train import add_pair_rows, add_repeats, pair_frac

    vocab = torch.arange(100, 1100)
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        row = add_pair_rows(127, 64, vocab, g)
        assert row.shape == (127,) and bool(((row >= 100) & (row < 1100)).all())
        for start, w in ((0, 64), (64, 63)):  # each window: a pair of tokens recurs at least 2 tokens later
            win = row[start:start + w].tolist()
            assert any(win[i:i + 2] == win[j:j + 2] for i in range(w - 1) for j in range(i + 2, w - 1))
    cfg = replace(get("tiny").train, mamba_pair_frac=0.5)
    batch = torch.randint(0, 5000, (64, 128))
    plain = add_repeats(batch, cfg, vocab, step=900, total=1000)
    paired = add_repeats(batch, cfg, vocab, step=900, total=1000, pair_frac=0.5)
    n = round(cfg.repeat_frac * 64)
    n_random = n - round(cfg.repeat_natural_frac * n)
    changed = (paired != plain).any(1).nonzero().flatten().tolist()
    assert changed == list(range(n - n_random // 2, n))  # the last half of the random tiles, nothing else
    m = HookedMamba(MambaConfig(d_model=16, n_layers=1, d_vocab=50))
    t = make_transformer(get("smoke").transformer, 50, seed=0)
    assert pair_frac(cfg, m) == 0.5 and pair_frac(cfg, t) == 0.0
