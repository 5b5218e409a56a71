"""The MPPC engine refuses bad input before it changes any state (issue 18, MPPC section): a refused chunk leaves
the sums as they were, non-finite activations are named by layer, unit and token, float64 input keeps its
precision (and the stated bound holds), empty input is refused and empty chunks skipped, 16-bit products are
refused, and every malformed argument gets one library error that says what was expected."""
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from universality_lib.errors import UniversalityError
from universality_lib.similarity import BACKENDS, MPPCResult, PairStats, pearson_reference

from test_similarity import _data, _feed


def _same_state(st, ref):
    """Every per-unit sum, shift and cross sum of two PairStats is bit-identical."""
    assert (st.n, st.n_chunks, st.max_chunk) == (ref.n, ref.n_chunks, ref.max_chunk)
    for side in ("a", "b"):
        for k, u in getattr(st, side).items():
            v = getattr(ref, side)[k]
            for name in ("s1", "s2", "nnz", "K"):
                np.testing.assert_array_equal(getattr(u, name), getattr(v, name))
    for key, S in st.S.items():
        np.testing.assert_array_equal(np.asarray(S), np.asarray(ref.S[key]))


def _nan_at(x, t, u, value=np.nan):
    x = x.copy()
    x[t, u] = value
    return x


# each case: (a, b) of one refused update built from good chunks x [100, F_a], y [100, F_b]; the error it must raise
BAD_UPDATES = {
    "token counts 100 vs 99": (lambda x, y: ({0: x}, {0: y[:99]}), "same tokens"),
    "NaN": (lambda x, y: ({0: _nan_at(x, 7, 3)}, {0: y}),
            r"layer 0 of side a: activation nan at token 7 of this chunk \(token 1007 of the stream\), unit 3"),
    "+inf in b": (lambda x, y: ({0: x}, {0: torch.from_numpy(_nan_at(y, 99, 44, np.inf))}),
                  r"layer 0 of side b: activation inf at token 99 .*unit 44"),
    "-inf in a CSR chunk": (lambda x, y: ({0: sp.csr_matrix(_nan_at(x, 5, 59, -np.inf))}, {0: y}),
                            r"activation -inf at token 5 .*unit 59"),
    "1-D chunk": (lambda x, y: ({0: x[0]}, {0: y}), r"expected a 2-D \[tokens, 60\].*got shape \(60,\)"),
    "3-D chunk": (lambda x, y: ({0: x[None]}, {0: y}), r"2-D.*flatten.*got shape \(1, 100, 60\)"),
    "a list": (lambda x, y: ({0: x.tolist()}, {0: y}), "got list"),
    "wrong layer key": (lambda x, y: ({1: x}, {0: y}), r"layers \[0\], got layers \[1\].*unknown \[1\]"),
    "missing layer": (lambda x, y: ({0: x}, {}), r"missing \[0\]"),
    "not a dict": (lambda x, y: (x, {0: y}), "expected a {layer: chunk"),
    "integer dtype": (lambda x, y: ({0: x.astype(np.int64)}, {0: y}), "dtype int64"),
    "wrong width": (lambda x, y: ({0: x[:, :59]}, {0: y}), "60 units"),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(BAD_UPDATES))
def test_a_refused_chunk_changes_nothing(backend, case):
    x, y = _data(n=1300)
    make, message = BAD_UPDATES[case]
    st = PairStats({0: x.shape[1]}, {0: y.shape[1]}, backend=backend)
    ref = PairStats({0: x.shape[1]}, {0: y.shape[1]}, backend=backend)
    for s in (st, ref):
        s.update({0: x[:1000]}, {0: y[:1000]})
    with pytest.raises(UniversalityError, match=message):
        st.update(*make(x[1000:1100], y[1000:1100]))
    _same_state(st, ref)
    for s in (st, ref):  # a caller that catches the error and goes on gets the right answer
        s.update({0: x[1000:]}, {0: y[1000:]})
    _same_state(st, ref)
    assert np.nanmax(np.abs(st.pearson(0, 0) - pearson_reference(x, y))) <= 1e-9


@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_input_keeps_its_precision_and_the_bound_holds(backend):
    """Units with a 1e4 offset (dense) and float64 sparse codes that float32 would round: the error stays within
    the stated bound (the sparse back end used to round float64 to float32: 1.2e-6 against a bound of 5e-12)."""
    rng = np.random.default_rng(7)
    n = 4000
    x = (rng.random((n, 20)) < 0.1) * rng.exponential(1.0, (n, 20))  # float64 values, not float32-representable
    x[:, :3] = rng.normal(1e4, 1.0, (n, 3))
    y = (rng.random((n, 15)) < 0.1) * rng.exponential(1.0, (n, 15))
    y[:, :5] += 0.7 * x[:, 5:10]
    y[:, 10:12] = 1e4 + rng.normal(0, 1.0, (n, 2)) + 0.5 * (x[:, 0:2] - 1e4)
    st = _feed(PairStats({0: 20}, {0: 15}, backend=backend), x, y)
    err = np.nanmax(np.abs(st.pearson(0, 0) - pearson_reference(x, y)))
    assert err <= st.error_bound() <= 1e-10


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_input_is_refused_and_empty_chunks_are_skipped(backend):
    x, y = _data(seed=8)
    st = PairStats({0: x.shape[1]}, {0: y.shape[1]}, backend=backend)
    with pytest.raises(UniversalityError, match="no tokens were fed"):
        st.pair_max(0, 0)
    st.update({0: x[:0]}, {0: torch.from_numpy(y[:0])})  # a 0-token chunk: checked, skipped
    assert (st.n, st.n_chunks) == (0, 0)
    for read in (lambda: st.pearson(0, 0), st.error_bound, lambda: MPPCResult.from_stats([st], "X", "Y")):
        with pytest.raises(UniversalityError, match="no tokens were fed"):
            read()
    # a 0-token first chunk no longer fixes the shifts (to 0): the same state as without it
    _feed(st, x, y)
    _same_state(st, _feed(PairStats({0: x.shape[1]}, {0: y.shape[1]}, backend=backend), x, y))
    with pytest.raises(UniversalityError, match="2-D"):  # an empty chunk is still checked
        st.update({0: np.zeros(0, np.float32)}, {0: y[:0]})


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16_bit_products_are_refused(dtype):
    with pytest.raises(UniversalityError, match="float64 \\(exact\\) or float32"):
        PairStats({0: 4}, {0: 4}, backend="dense", dtype=dtype)


@pytest.mark.parametrize("backend", ["sparse", "torch_sparse"])
def test_a_float64_only_back_end_refuses_another_dtype(backend):
    with pytest.raises(UniversalityError, match="always accumulates in float64"):
        PairStats({0: 4}, {0: 4}, backend=backend, dtype=torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_half_precision_chunks_are_widened_exactly(backend, half):
    x, y = _data(seed=9, n=1500)
    xh, yh = torch.from_numpy(x).to(half), torch.from_numpy(y).to(half)  # the values a 16-bit model would give
    st = PairStats({0: x.shape[1]}, {0: y.shape[1]}, backend=backend)
    st.update({0: xh}, {0: yh})
    ref = PairStats({0: x.shape[1]}, {0: y.shape[1]}, backend=backend)
    ref.update({0: xh.float().numpy()}, {0: yh.float().numpy()})
    _same_state(st, ref)


BAD_ARGS = {
    "negative size": (({0: -3}, {0: 4}), {}, r"layer 0 of side a: expected a number of units >= 1.*got -3"),
    "zero size": (({0: 3}, {2: 0}), {}, "layer 2 of side b: expected a number of units >= 1"),
    "float size": (({0: 3.5}, {0: 4}), {}, "got 3.5"),
    "no layers": (({}, {0: 4}), {}, "sizes_a: expected a non-empty"),
    "sizes not a dict": (([3], {0: 4}), {}, "sizes_a: expected a non-empty"),
    "unknown pair": (({0: 3}, {0: 4}), {"pairs": [(0, 1)]}, r"pair \(0, 1\) names a layer without a size"),
    "no pairs": (({0: 3}, {0: 4}), {"pairs": []}, "pairs is empty"),
    "threshold": (({0: 3}, {0: 4}), {"dense_threshold": 1.5}, r"\[0, 1\]"),
    "back end": (({0: 3}, {0: 4}), {"backend": "bf16"}, "unknown back end"),
    "max_pairs": (({0: 3}, {0: 4}), {"backend": "torch_sparse", "max_pairs": 0}, "max_pairs is a number"),
    "sparse on a GPU": (({0: 3}, {0: 4}), {"device": "cuda"}, "torch_sparse"),
}


@pytest.mark.parametrize("case", list(BAD_ARGS))
def test_bad_arguments_are_refused(case):
    args, kwargs, message = BAD_ARGS[case]
    with pytest.raises(UniversalityError, match=message):
        PairStats(*args, **kwargs)
