import dataclasses
import json

import pytest
import torch

from universality_lib import corpus, presets, zoo
from universality_lib.errors import UniversalityError
from universality_lib.presets import TrainConfig
from universality_lib.train import add_repeats, configure_optimizer, lr_at, read_log, train


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


def _tiny_run(tmp_path, name, steps, max_steps=None, model_name="T", preset="smoke", **changes):
    p = presets.get(preset)
    cfg = TrainConfig(**{**dict(tokens=steps * 4 * 32, batch_size=4, context=32, lr=3e-3, warmup_steps=2,
                                log_every=1, eval_every=2, checkpoint_every=3, repeat_frac=0.5, repeat_span=8),
                         **changes})
    tok = corpus.load_tokenizer(p)
    stream = corpus.token_stream(p, "eval", tok)
    model = zoo.build(p, model_name, tokenizer=tok)
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


@pytest.mark.parametrize("model_name, tied", [("T", False), ("M", False), ("M", True)])
def test_resume_is_exact(tmp_path, model_name, tied):
    # a tied Mamba (the tiny M's shape) writes no lm_head.weight: its checkpoint must still load, and stay tied
    p = presets.get("smoke")
    p = p.replace(mamba=dataclasses.replace(p.mamba, tie_embeddings=tied))
    run = dict(model_name=model_name, preset=p)
    straight, _ = _tiny_run(tmp_path, "straight", 6, **run)
    _, half = _tiny_run(tmp_path, "resumed", 6, max_steps=3, **run)
    assert half.step == 3
    resumed, state = _tiny_run(tmp_path, "resumed", 6, **run)
    assert state.step == 6
    for (n, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-6), n
    if model_name == "M":
        assert (resumed.lm_head.weight is resumed.embed.weight) == tied


def test_a_run_resumes_only_under_the_recipe_it_began_with(tmp_path):
    import shutil

    _tiny_run(tmp_path, "r", 6, max_steps=3)
    began = (tmp_path / "r" / "checkpoint" / "state.json").read_text()
    with pytest.raises(UniversalityError, match=r"another recipe \(differs in lr, repeat_frac\)"):
        _tiny_run(tmp_path, "r", 6, lr=1e-3, repeat_frac=0.25)
    assert (tmp_path / "r" / "checkpoint" / "state.json").read_text() == began  # refused before any step
    recipe = json.loads((tmp_path / "r" / "recipe.json").read_text())
    del recipe["train"]["tile_offset_max"]  # a run that began before a field existed began at its default
    (tmp_path / "r" / "recipe.json").write_text(json.dumps(recipe))
    assert _tiny_run(tmp_path, "r", 6)[1].step == 6
    shutil.rmtree(tmp_path / "r")
    assert _tiny_run(tmp_path, "r", 6, lr=1e-3)[1].step == 6  # a deleted run starts again under the new recipe


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


def test_mamba_lr_applies_to_the_mamba_only(tmp_path):
    # the peak learning rate each family trains with, read from the training logs
    for name, peak in (("M", 4e-3), ("T", 1e-3)):
        _tiny_run(tmp_path, name, 4, model_name=name, lr=1e-3, mamba_lr=4e-3)
        assert max(r["lr"] for r in read_log(tmp_path / name)) == pytest.approx(peak)
    _tiny_run(tmp_path, "M_shared", 4, model_name="M", lr=1e-3)  # no mamba_lr: the shared lr
    assert max(r["lr"] for r in read_log(tmp_path / "M_shared")) == pytest.approx(1e-3)


def test_a_mamba_trains_for_its_own_token_budget(tmp_path):
    # TrainConfig.mamba_tokens: the Mamba's steps, resolved by for_family as mamba_lr is; the Transformer keeps tokens
    budgets = dict(mamba_tokens=6 * 4 * 32)
    assert TrainConfig(tokens=100, **budgets).for_family("mamba").tokens == 6 * 4 * 32
    assert TrainConfig(tokens=100, **budgets).for_family("transformer").tokens == 100
    _, m = _tiny_run(tmp_path, "M", 4, model_name="M", **budgets)
    _, t = _tiny_run(tmp_path, "T", 4, model_name="T", **budgets)
    assert (m.step, t.step) == (6, 4)


def test_weight_decay_falls_on_the_weight_matrices_only():
    # as mamba_ssm's _no_weight_decay and nanoGPT's configure_optimizers: no decay on embeddings, biases, norms,
    # A_log and D; every parameter in exactly one group
    p = presets.get("smoke")
    tok = corpus.load_tokenizer(p)
    for name in ("T", "M"):
        model = zoo.build(p, name, tokenizer=tok)
        opt = configure_optimizer(model, TrainConfig(weight_decay=0.1), torch.device("cpu"))
        decay, no_decay = opt.param_groups
        assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)
        named = {id(t): n for n, t in model.named_parameters()}
        assert sorted(map(id, decay["params"] + no_decay["params"])) == sorted(named)
        assert all(t.dim() >= 2 and "embed" not in named[id(t)].lower() for t in decay["params"])
        skipped = [named[id(t)] for t in no_decay["params"]]
        assert any("embed" in n.lower() for n in skipped)
        if name == "M":
            assert any(n.endswith("A_log") for n in skipped) and any(n.endswith(".D") for n in skipped)


def test_pair_rows_copy_one_short_span_per_window_in_the_last_random_rows():
    from dataclasses import replace

    from universality_lib.presets import get
    from universality_lib.train import add_pair_rows

    vocab = torch.arange(100, 1100)
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        row = add_pair_rows(127, 64, vocab, g)
        assert row.shape == (127,) and bool(((row >= 100) & (row < 1100)).all())
        for start, w in ((0, 64), (64, 63)):  # each window: a pair of tokens recurs at least 2 tokens later
            win = row[start:start + w].tolist()
            assert any(win[i:i + 2] == win[j:j + 2] for i in range(w - 1) for j in range(i + 2, w - 1))
    cfg = get("tiny").train
    batch = torch.randint(0, 5000, (64, 128))
    plain = add_repeats(batch, cfg, vocab, step=900, total=1000)
    assert torch.equal(plain, add_repeats(batch, replace(cfg, repeat_pair_frac=0.0, pair_max_span=20), vocab, 900,
                                          1000))  # no pair rows: the span setting changes nothing
    paired = add_repeats(batch, replace(cfg, repeat_pair_frac=0.5), vocab, step=900, total=1000)
    n = round(cfg.repeat_frac * 64)
    n_random = n - round(cfg.repeat_natural_frac * n)
    changed = (paired != plain).any(1).nonzero().flatten().tolist()
    assert changed == list(range(n - n_random // 2, n))  # the last half of the random tiles, nothing else
    with pytest.raises(UniversalityError, match="pair_max_span"):
        add_repeats(batch, replace(cfg, repeat_pair_frac=0.5, pair_max_span=40), vocab, step=0, total=1000)


def test_tile_offsets_move_the_first_copy_away_from_bos():
    from dataclasses import replace

    from universality_lib.presets import get

    vocab = torch.arange(100, 1100)
    cfg = replace(get("tiny").train, repeat_pair_frac=0.0)
    batch = torch.randint(2000, 5000, (64, 128))  # natural text drawn apart from the random tokens' vocabulary
    n = round(cfg.repeat_frac * 64)
    n_natural = round(cfg.repeat_natural_frac * n)

    def first_periodic(row):  # the first position from which the row repeats with a period <= 64
        return next(o for o in range(len(row))
                    if any(torch.equal(row[o + k:], row[o:-k]) for k in range(1, min(65, len(row) - o))))

    plain = add_repeats(batch, cfg, vocab, step=900, total=1000)
    assert {first_periodic(r[1:]) for r in plain[n_natural:n]} == {0}  # 0: every copy starts right after BOS
    moved = add_repeats(batch, replace(cfg, tile_offset_max=32), vocab, step=900, total=1000)
    offs = [first_periodic(r[1:]) for r in moved[:n]]
    assert max(offs) <= 32 and len(set(offs)) > 5  # random starts in [0, 32], not one shortcut position
    for r, o in zip(range(n_natural, n), offs[n_natural:]):  # random rows: a random prefix, then the tiles
        assert bool(((moved[r, 1:] >= 100) & (moved[r, 1:] < 1100)).all())
    for r, o in zip(range(n_natural), offs[:n_natural]):  # natural rows: the row's own text, then its tiles
        assert torch.equal(moved[r, :1 + o], batch[r, :1 + o])
    assert torch.equal(moved[n:], batch[n:])  # the natural-text rows are untouched
    with pytest.raises(UniversalityError, match="tile_offset_max"):
        add_repeats(batch, replace(cfg, tile_offset_max=-1), vocab, step=0, total=1000)


def test_a_mamba_trains_with_its_own_curriculum_fields():
    cfg = TrainConfig(lr=1e-3, mamba_lr=4e-3, tile_offset_max=0, mamba_tile_offset_max=32,
                      mamba_repeat_pair_frac=0.5)
    m, t = cfg.for_family("mamba"), cfg.for_family("transformer")
    assert (m.lr, m.tile_offset_max, m.repeat_pair_frac) == (4e-3, 32, 0.5)
    assert (t.lr, t.tile_offset_max, t.repeat_pair_frac) == (1e-3, 0, 0.0)
    assert m.mamba_lr is m.mamba_tile_offset_max is t.mamba_tile_offset_max is None  # resolved: no overrides left
    assert t == TrainConfig(lr=1e-3).for_family("transformer")  # the Mamba's fields do not touch the Transformer
    assert TrainConfig(lr=1e-3).for_family("mamba") == TrainConfig(lr=1e-3)  # nothing set: the shared fields
    with pytest.raises(UniversalityError, match="family"):
        cfg.for_family("rwkv")


def test_the_curriculum_sentence_names_the_mambas_own_fields():
    from universality_lib.presets import get
    from universality_lib.train import describe_curriculum

    cfg = TrainConfig(repeat_frac=0.5, repeat_span=32, repeat_mode="sequence", repeat_natural_frac=0.25)
    plain = describe_curriculum(cfg)
    assert "**50%**" in plain and "[1, 32]" in plain and "25%" in plain and "Mamba" not in plain
    mamba = describe_curriculum(TrainConfig(**{**cfg.__dict__, "mamba_tile_offset_max": 16,
                                               "mamba_repeat_pair_frac": 0.5}))
    assert mamba.startswith(plain) and "for the Mamba only" in mamba and "0 to 16" in mamba and "pair rows" in mamba
    assert "no curriculum" in describe_curriculum(TrainConfig())
    assert describe_curriculum(get("smoke").train)  # every preset's recipe has a sentence
