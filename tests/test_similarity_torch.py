"""The ``torch_sparse`` MPPC back end (co-activations of the non-zero units with torch; a GPU in practice, the CPU
here): agreement with the numba sparse back end and the float64 two-pass reference to <= 1e-9, shifted (dense)
units on either side, every input form, bounded pair spans, the default back end per device, and the stage price
from memory traffic."""
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from universality_lib import similarity as sim
from universality_lib.similarity import MPPCResult, PairStats, pearson_reference
from universality_lib.similarity import torch_sparse as tsp

from test_similarity import _data, _feed, _sparse_features

TOL = 1e-9


def _both(x, y, **kw):
    """(numba sparse, torch_sparse) PairStats fed the same chunks."""
    return tuple(_feed(PairStats({0: x.shape[1]}, {0: y.shape[1]}, backend=be, **kw), x, y)
                 for be in ("sparse", "torch_sparse"))


def test_agrees_with_the_cpu_sparse_back_end_and_the_reference():
    x, y = _data(seed=11)  # dense units with a 1e3 offset on both sides, a dead and a constant unit
    cpu, gpu = _both(x, y)
    ref = pearson_reference(x, y)
    r = gpu.pearson(0, 0)
    assert np.array_equal(np.isnan(r), np.isnan(ref)) and np.array_equal(np.isnan(r), np.isnan(cpu.pearson(0, 0)))
    assert np.nanmax(np.abs(r - ref)) <= TOL
    assert np.nanmax(np.abs(r - cpu.pearson(0, 0))) <= TOL
    for side in ("a", "b"):  # the same per-unit statistics: shifts, counts, sums, dead / constant units
        for u, v in zip(getattr(gpu, side).values(), getattr(cpu, side).values()):
            np.testing.assert_array_equal(u.K, v.K)
            np.testing.assert_array_equal(u.nnz, v.nnz)
            np.testing.assert_allclose(u.s2, v.s2, rtol=1e-13)
            np.testing.assert_array_equal(u.live(), v.live())
    assert gpu.error_bound() <= TOL
    rg, rc = MPPCResult.from_stats([gpu], "X", "Y"), MPPCResult.from_stats([cpu], "X", "Y")
    assert rg.counts("a") == rc.counts("a") and rg.counts("b") == rc.counts("b")
    for key in ("a_val", "b_val"):
        assert np.nanmax(np.abs(rg.pair[(0, 0)][key] - rc.pair[(0, 0)][key])) <= TOL
    for key in ("a_idx", "b_idx"):
        np.testing.assert_array_equal(rg.pair[(0, 0)][key], rc.pair[(0, 0)][key])


def test_all_dense_units_and_several_layer_pairs():
    """Neurons (every unit shifted) on one side, sparse features on the other, two layers each."""
    rng = np.random.default_rng(12)
    n = 2500
    xs = {k: rng.normal(3.0 * k, 1.0, (n, 12)).astype(np.float32) for k in (0, 1)}
    ys = {k: _sparse_features(rng, n, 16, 0.08) for k in (0, 1)}
    ys[1][:, 4] += np.maximum(xs[0][:, 2], 0)
    stats = {}
    for be in ("sparse", "torch_sparse"):
        st = PairStats({0: 12, 1: 12}, {0: 16, 1: 16}, backend=be)
        for i in range(0, n, 600):
            st.update({k: v[i:i + 600] for k, v in xs.items()}, {k: torch.from_numpy(v[i:i + 600]) for k, v in ys.items()})
        stats[be] = st
    assert stats["torch_sparse"].a[0].dense.all() and not stats["torch_sparse"].b[0].dense.any()
    for ka in (0, 1):
        for kb in (0, 1):
            r = stats["torch_sparse"].pearson(ka, kb)
            assert np.nanmax(np.abs(r - pearson_reference(xs[ka], ys[kb]))) <= TOL
            assert np.nanmax(np.abs(r - stats["sparse"].pearson(ka, kb))) <= TOL


def test_small_pair_spans_give_the_same_sums():
    x, y = _data(seed=13, n=1500)
    whole = _feed(PairStats({0: x.shape[1]}, {0: y.shape[1]}, backend="torch_sparse"), x, y)
    spans = _feed(PairStats({0: x.shape[1]}, {0: y.shape[1]}, backend="torch_sparse", max_pairs=50), x, y)
    assert np.max(np.abs(whole.S[(0, 0)] - spans.S[(0, 0)]).numpy()) <= 1e-12 * np.abs(whole.S[(0, 0)]).max().item()


@pytest.mark.parametrize("form", ["numpy", "tensor", "csr", "float64", "bfloat16"])
def test_every_input_form_gives_the_cpu_back_end_s_numbers(form):
    x, y = _data(seed=14, n=1200)
    conv = {"numpy": lambda a: a, "tensor": torch.from_numpy, "csr": sp.csr_matrix,
            "float64": lambda a: a.astype(np.float64), "bfloat16": lambda a: torch.from_numpy(a).to(torch.bfloat16)}[form]
    out = []
    for be in ("sparse", "torch_sparse"):
        st = PairStats({0: x.shape[1]}, {0: y.shape[1]}, backend=be)
        for i in range(0, len(x), 500):
            st.update({0: conv(x[i:i + 500])}, {0: conv(y[i:i + 500])})
        out.append(st.pearson(0, 0))
    assert np.array_equal(np.isnan(out[0]), np.isnan(out[1])) and np.nanmax(np.abs(out[0] - out[1])) <= TOL


def test_the_default_back_end_follows_the_device():
    assert sim.default_backend("cpu") == "sparse"
    assert sim.default_backend("cuda:0") == sim.default_backend(torch.device("cuda")) == "torch_sparse"
    assert "torch_sparse" in sim.BACKENDS


def test_the_stage_price_follows_the_memory_traffic():
    a100 = tsp.stage_seconds_estimate("A100 (40 GB)")
    t = tsp.stage_traffic(40.0)
    assert a100["bytes"] == t["total"] == pytest.approx(sum(a100["parts"].values()) * 1555e9 * 0.5)
    assert a100["label"].startswith("ESTIMATE")
    assert t["co_active_pairs"] == 864 * 1_000_000 * 50 ** 2
    assert t["pairs_per_pass"] == 4 and t["passes"] == 216  # 4.8 GB of sums per pair, 20 GB per pass
    assert t["pair_streams"] == t["co_active_pairs"] * sum(tsp.PAIR_STREAMS.values())
    doubled = tsp.stage_traffic(40.0, l0=100.0)  # co-activations grow as L0², the rest does not
    assert doubled["pair_streams"] == 4 * t["pair_streams"] and doubled["sums"] == t["sums"]
    h100, t4 = tsp.stage_seconds_estimate("H100 (80 GB, SXM)"), tsp.stage_seconds_estimate("Colab T4")
    assert h100["seconds"] < a100["seconds"] < t4["seconds"] and t4["passes"] == 864
