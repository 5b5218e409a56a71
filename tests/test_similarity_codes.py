"""Each layer's units computed once (issue 15, ``similarity/codes.py``): the MPPC of passes fed from kept units (in
memory, on disk) is bit for bit the MPPC of passes that rerun the models and SAE encodes, with far fewer model and
encode calls; a disk entry of the cache is reused by a later run, checked against the rows' hash, and rebuilt when
corrupt."""
import numpy as np
import pytest
import torch

from universality_lib import cache
from universality_lib import similarity as sim
from universality_lib.errors import StreamMismatchError, UniversalityError
from universality_lib.similarity import codes

from test_similarity import _saes, mamba0, rows, tok, transformer  # noqa: F401  (fixtures)

SPLIT = 2e-5  # GB: about one layer pair per pass


def _pairs(transformer, mamba0, rows, keyed=False):  # noqa: F811
    """Two SAE conditions sharing T's SAEs (as main / random do) and one neuron condition."""
    kw = (lambda name: {"key": f"test-{name}", "layer_keys": {k: f"sae-{name}-{k}" for k in range(4)}}) if keyed \
        else (lambda name: {})
    st = sim.Source("T", transformer, rows, "sae", _saes(transformer, 48, 0), **kw("T"))
    return {"sae": (st, sim.Source("M0", mamba0, rows, "sae", _saes(mamba0, 64, 10), **kw("M0"))),
            "sae2": (st, sim.Source("M0b", mamba0, rows, "sae", _saes(mamba0, 40, 20), **kw("M0b"))),
            "neurons": (sim.Source("T", transformer, rows, "neurons", **kw("Tn")),
                        sim.Source("M0", mamba0, rows, "neurons", **kw("M0n")))}


def _same(x: sim.MPPCResult, y: sim.MPPCResult) -> None:
    """Bit-identical results: every pair maximum and index, frequency and live mask."""
    assert set(x.pair) == set(y.pair) and set(x.freq) == set(y.freq)
    for key, d in x.pair.items():
        for name, v in d.items():
            np.testing.assert_array_equal(v, y.pair[key][name], err_msg=f"{key} {name}")
    for key in x.freq:
        np.testing.assert_array_equal(x.freq[key], y.freq[key])
        np.testing.assert_array_equal(x.live[key], y.live[key])
    assert x.meta["n_tokens"] == y.meta["n_tokens"] and x.meta["error_bound"] == y.meta["error_bound"]


@pytest.mark.parametrize("backend", sim.BACKENDS)
def test_kept_units_give_bit_identical_results_with_fewer_calls(backend, transformer, mamba0, rows, tmp_path,  # noqa: F811
                                                                monkeypatch):
    monkeypatch.setenv("UNIVERSALITY_CACHE", str(tmp_path / "cache"))
    pairs = _pairs(transformer, mamba0, rows)
    kw = dict(backend=backend, chunk_tokens=200, max_gb=SPLIT, progress=False)
    before = sim.compute(pairs, keep="none", **kw)  # every pass reruns its models and encodes (the old path)
    n_passes = before["sae"].meta["passes"]
    assert n_passes > 4
    for mode in ("memory", "disk", "auto"):
        after = sim.compute(pairs, keep=mode, **kw)
        for name in pairs:
            _same(after[name], before[name])
        m, b = after["sae"].meta, before["sae"].meta
        assert m["passes"] == n_passes
        assert m["unit_calls"] < b["unit_calls"] / 2 and m["model_calls"] < b["model_calls"] / 2
        if mode != "auto":
            assert m["kept_unit_sets"][mode] > 0 and m["kept_unit_sets"]["not_kept"] == 0
    n_chunks = -(-len(rows) // max(1, 200 // rows.shape[1]))
    n_units = sum(len(s.layers) for s in {id(s): s for pr in pairs.values() for s in pr}.values())  # T shared
    assert after["sae"].meta["unit_calls"] == n_units * n_chunks  # each (model, layer, SAE) once per chunk
    assert not list((tmp_path / "cache" / codes.KIND).glob("scratch-*"))  # scratch folders are removed


def test_one_pass_keeps_nothing_and_matches(transformer, mamba0, rows):  # noqa: F811
    pairs = _pairs(transformer, mamba0, rows)
    a = sim.compute(pairs, backend="sparse", chunk_tokens=200, progress=False)
    b = sim.compute(pairs, backend="sparse", chunk_tokens=200, progress=False, keep="none")
    assert a["sae"].meta["passes"] == 1 and a["sae"].meta["kept_unit_sets"] == {"memory": 0, "disk": 0,
                                                                                "not_kept": 0}
    for name in pairs:
        _same(a[name], b[name])
    assert a["sae"].meta["model_calls"] == b["sae"].meta["model_calls"]


def test_a_disk_entry_is_reused_checked_and_rebuilt_when_corrupt(transformer, mamba0, rows, tmp_path,  # noqa: F811
                                                                 monkeypatch, capsys):
    monkeypatch.setenv("UNIVERSALITY_CACHE", str(tmp_path / "cache"))
    pairs = _pairs(transformer, mamba0, rows, keyed=True)
    kw = dict(backend="sparse", chunk_tokens=200, max_gb=SPLIT, progress=False, keep="disk")
    ref = sim.compute(pairs, keep="none", **{k: v for k, v in kw.items() if k != "keep"})
    first = sim.compute(pairs, **kw)
    (entry,) = [p for p in (tmp_path / "cache" / codes.KIND).iterdir() if p.is_dir()]
    cache.verify_manifest(entry)
    again = sim.compute(pairs, **kw)  # reused: the first pass computes only its own units
    assert again["sae"].meta["unit_calls"] < first["sae"].meta["unit_calls"]
    chunk = sorted(entry.glob("chunk*.npz"))[0]
    with open(chunk, "r+b") as f:  # flip the last bytes
        f.seek(-4, 2)
        f.write(b"\xff\xff\xff\xff")
    capsys.readouterr()
    healed = sim.compute(pairs, **kw)
    assert "failed verification" in capsys.readouterr().out
    assert healed["sae"].meta["unit_calls"] == first["sae"].meta["unit_calls"]  # rebuilt in this run
    cache.verify_manifest(entry)
    for res in (first, again, healed):
        for name in pairs:
            _same(res[name], ref[name])


def test_kept_units_of_other_rows_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("UNIVERSALITY_CACHE", str(tmp_path / "cache"))
    key = ("m", "sae", 0, 1)
    x = codes.host_form(torch.tensor([[0.0, 1.5], [2.0, 0.0]]), "sae")
    with codes.CodeStore({key: "disk"}, {key: "unit"}, "aaaa", 2, 1) as store:
        store.put(0, {key: x})
        store.finish()
        got = store.chunk(0, 2, [key])[key]
        assert (got != x).nnz == 0 and got.dtype == np.float32
        with pytest.raises(UniversalityError, match="2 tokens, the chunk has 3"):
            store.chunk(0, 3, [key])
        folder = store.folder
    info = (folder / "codes.json").read_text().replace('"aaaa"', '"bbbb"')
    (folder / "codes.json").write_text(info)
    cache.write_manifest(folder)  # a consistent entry, but of other rows
    with pytest.raises(StreamMismatchError, match="different token streams"):
        codes.CodeStore({key: "disk"}, {key: "unit"}, "aaaa", 2, 1)


def test_host_form_widens_16_bit_exactly_and_keeps_precision():
    x = torch.tensor([[0.0, 1.0 / 3.0], [0.5, 0.0]], dtype=torch.float64)
    assert codes.host_form(x, "sae").dtype == np.float64
    h = codes.host_form(x.to(torch.bfloat16), "neurons")
    assert h.dtype == np.float32 and np.array_equal(h, x.to(torch.bfloat16).float().numpy())
    with pytest.raises(UniversalityError, match="keep must be one of"):
        sim.compute({"x": (None, None)}, keep="gpu")
