"""The zoo v2 recipe: natural-text repeat rows, the 1:2 depth ratio, models trained side by side."""
import dataclasses

import pytest
import torch

from universality_lib import presets, zoo
from universality_lib.errors import UniversalityError
from universality_lib.train import add_repeats


def _cfg(**kw):
    base = dict(repeat_frac=0.5, repeat_span=16, repeat_mode="sequence", repeat_min_period=4, data_seed=3)
    return dataclasses.replace(presets.TrainConfig(), **{**base, **kw})


def _period(row: torch.Tensor) -> int:
    """The smallest p with row[i] == row[i - p] for every i >= p."""
    return next(p for p in range(1, len(row) + 1) if torch.equal(row[p:], row[:-p]))


def test_natural_rows_tile_their_own_text_and_random_rows_draw_from_vocab():
    g = torch.Generator().manual_seed(0)
    batch = torch.randint(1000, 2000, (8, 65), generator=g)  # "natural text": ids outside the random vocab
    vocab = torch.arange(10, 20)
    out = add_repeats(batch, _cfg(repeat_natural_frac=0.5), vocab, step=5)
    n = 4  # repeat_frac 0.5 of 8 rows; the first half of those copy their own text
    for r in range(2):
        p = _period(out[r, 1:])
        assert 4 <= p <= 16 and torch.equal(out[r, 1:1 + p], batch[r, 1:1 + p])
    for r in range(2, n):
        assert torch.isin(out[r, 1:], vocab).all() and _period(out[r, 1:]) <= 16
    assert torch.equal(out[n:], batch[n:])  # the other rows stay natural text, untouched
    assert torch.equal(out[:, 0], batch[:, 0])


def test_natural_frac_zero_is_the_v1_curriculum():
    batch = torch.randint(1000, 2000, (8, 65), generator=torch.Generator().manual_seed(1))
    vocab = torch.arange(10, 20)
    old = add_repeats(batch, _cfg(), vocab, step=7)
    assert torch.isin(old[:4, 1:], vocab).all()
    assert torch.equal(add_repeats(batch, _cfg(repeat_natural_frac=0.0), vocab, step=7), old)


def test_v2_zoo_keeps_the_paper_depth_ratio_and_close_parameter_counts():
    p = presets.get("tiny")
    assert p.mamba.n_layers == 2 * p.transformer.n_layers and p.transformer.n_layers >= 4
    from universality_lib.corpus import load_tokenizer

    tok = load_tokenizer("tiny")
    q = p.replace(corpus=dataclasses.replace(p.corpus, vocab_size=len(tok)))
    n = {name: sum(t.numel() for t in zoo.build(q, name, tokenizer=tok).parameters()) for name in ("T", "M")}
    assert abs(n["M"] / n["T"] - 1) <= 0.15


@pytest.mark.parametrize("jobs", [0, -1, 1.5, True])
def test_train_models_refuses_bad_jobs(jobs):
    with pytest.raises(UniversalityError, match="jobs must be"):
        zoo.train_models("smoke", ["T", "M"], jobs=jobs)


def test_train_models_refuses_unknown_model_first():
    with pytest.raises(UniversalityError, match="unknown model"):
        zoo.train_models("smoke", ["T", "Q"])


def test_train_models_starts_the_longest_runs_first():
    # the Mamba's steps take twice a Transformer's: on a 2-core CPU, M on one core, T then T2 on the other
    assert zoo.longest_first("tiny", ["T", "T2", "M"]) == ["M", "T", "T2"]
    assert zoo.longest_first("tiny", ["T2", "T"]) == ["T2", "T"]


def test_train_models_records_the_whole_command_once_every_model_is_installed(tmp_path, monkeypatch):
    installed, finished = {}, {"T": True, "M": False}

    def fake_train_model(p, name, device=None, work_dir=None, max_steps=None, progress=True, dest=None):
        installed[name] = work_dir
        return tmp_path / name if finished[name] else None

    monkeypatch.setattr(zoo, "train_model", fake_train_model)
    record = zoo.model_dir("smoke", "T").parent / zoo.RUN_RECORD
    record.unlink(missing_ok=True)
    (tmp_path / "w" / "M" / "checkpoint").mkdir(parents=True)  # M continues from a checkpoint
    done = zoo.train_models("smoke", ["T", "M"], work_dir=tmp_path / "w", jobs=1)
    assert done == {"T": tmp_path / "T", "M": None} and not record.exists()  # M not finished: nothing recorded
    assert installed["M"] == tmp_path / "w" / "M"
    finished["M"] = True
    zoo.train_models("smoke", ["T", "M"], work_dir=tmp_path / "w", jobs=1)
    run = zoo.run_record("smoke")
    assert run["models"] == ["T", "M"] and run["order"] == ["M", "T"] and run["jobs"] == 1
    assert run["resumed"] == ["M"] and run["wall_seconds"] >= 0 and run["threads"] >= 1
    assert run["machine"] and run["started"] <= run["finished"] and run["recipe"] == zoo.recipe_key("smoke")
    # a damaged record: one clear error that says how to mend it
    record.write_text("{ not json")
    with pytest.raises(UniversalityError, match="not a record of a `train` command.*git checkout"):
        zoo.run_record("smoke")
    record.write_text('{"models": ["T"]}')
    with pytest.raises(UniversalityError, match="fields missing"):
        zoo.run_record("smoke")
    record.unlink()
    # with dest, the models and the record go there; the zoo's own folder gets no record
    zoo.train_models("smoke", ["T", "M"], work_dir=tmp_path / "w", jobs=1, dest=tmp_path / "elsewhere")
    assert installed and not record.exists() and zoo.run_record("smoke", tmp_path / "elsewhere")["models"] == ["T", "M"]


def test_the_shipped_run_record_is_of_the_recipe_tiny_trains_today():
    # chapter 1's budget verdict needs the shipped record's key to be today's tiny recipe key: a field added to a
    # config that enters zoo.recipe_key (a new TrainConfig field, even at its default) would silently leave the
    # shipped 1.73 h without a verdict
    run = zoo.run_record("tiny")
    assert run["recipe"] == zoo.recipe_key("tiny")
    # an unset Mamba-only field stays out of the key (zoo._key), so a field added later leaves today's keys as they
    # are; once set, it is part of the recipe
    tiny = presets.get("tiny")

    @dataclasses.dataclass(frozen=True)
    class Later(presets.TrainConfig):
        mamba_later_field: int | None = None

    later = Later(**{f.name: getattr(tiny.train, f.name) for f in dataclasses.fields(tiny.train)})
    assert zoo.recipe_key(tiny.replace(train=later)) == zoo.recipe_key(tiny)
    assert zoo.recipe_key(tiny.replace(train=dataclasses.replace(later, mamba_later_field=1))) != zoo.recipe_key(tiny)
    assert zoo.recipe_key(tiny.replace(train=dataclasses.replace(tiny.train, mamba_tokens=22_000_000))) != \
        zoo.recipe_key(tiny)
    assert sorted(run["models"]) == sorted(zoo.names("tiny")) and run["resumed"] == []
