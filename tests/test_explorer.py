"""The feature explorer: the pair table and page data from a synthetic MPPC result and feature samples, a
self-contained page (no network, no external file), and the page itself in headless Chromium: it loads the
data, sorts, filters and shows the contexts of a pair with tokens shaded by activation (``?selftest=1`` drives
the page's own controls and writes what the table shows into the DOM, read back with ``--dump-dom``)."""
import html
import json
import re
import subprocess

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from universality_lib import explorer
from universality_lib.errors import UniversalityError
from universality_lib.feature_sample import FeatureSample
from universality_lib.similarity import MPPCResult


class Tok:
    def decode(self, ids):
        return "".join("</script><b>x" if i == 7 else f"w{i}\n" if i == 5 else f"w{i} " for i in ids)


def _setup(f=12, n=40, L=16, seed=0):
    """Side a: layers 0, 1; side b: layers 0..3. a-feature u of layer l matches b-layer (2l + u % 2), feature
    u + 1 with MPPC 0.05 + 0.9 * u / f. Activations: feature u fires on token u (+ noise) on random positions."""
    rng = np.random.default_rng(seed)
    la, lb = [0, 1], [0, 1, 2, 3]
    pair = {}
    for ka in la:
        for kb in lb:
            a_val = rng.uniform(0, 0.04, f)
            a_idx = rng.integers(0, f, f)
            hit = (2 * ka + np.arange(f) % 2) == kb
            a_val[hit] = 0.05 + 0.9 * np.arange(f)[hit] / f
            a_idx[hit] = np.arange(f)[hit] + 1
            pair[(ka, kb)] = {"a_val": a_val, "a_idx": a_idx, "b_val": rng.uniform(0, 0.9, f + 2),
                              "b_idx": rng.integers(0, f, f + 2)}
    freq = {("a", k): rng.uniform(0.001, 0.2, f) for k in la}
    freq.update({("b", k): rng.uniform(0.001, 0.2, f + 2) for k in lb})
    live = {(s, k): np.ones(f if s == "a" else f + 2, bool) for s, ks in (("a", la), ("b", lb)) for k in ks}
    res = MPPCResult("T", "M", la, lb, freq, live, pair)
    rows = torch.from_numpy(rng.integers(1, 20, (n, L)))
    rows[:, 0] = 0
    mask = rows != 0
    index = torch.nonzero(mask).numpy()
    tokens = rows[mask].numpy()

    def sample(name, layers, width):
        acts = {}
        for k in layers:
            dense = np.zeros((len(tokens), width), np.float32)
            for u in range(width):
                on = (tokens == u % 20) & (rng.random(len(tokens)) < 0.7)
                dense[on, u] = rng.uniform(0.5, 3.0, on.sum())
            acts[k] = sp.csr_matrix(dense)
        return FeatureSample(name, rows, index, tokens, {k: np.arange(width) for k in layers}, acts)

    return res, sample("T", la, f), sample("M", lb, f + 2)


def test_pair_table_and_data():
    res, sa, sb = _setup()
    tab = explorer.pair_table(res)
    assert len(tab) == 24
    r = tab[(tab.layer == 1) & (tab.unit == 5)].iloc[0]
    assert (r.best_layer, r.best_index) == (3, 6) and r.mppc == pytest.approx(0.05 + 0.9 * 5 / 12)
    assert r.freq_match == pytest.approx(res.freq[("b", 3)][6])
    assert r.mppc_back == pytest.approx(res.best("b")[3][0][6])
    tab["score"] = np.arange(len(tab)) / 10
    data = explorer.pairs_data(tab, sa, sb, Tok(), extra_columns={"score": "a score"}, progress=False)
    p = data["pairs"][tab.index[(tab.layer == 1) & (tab.unit == 5)][0]]
    assert (p["la"], p["ua"], p["lb"], p["ub"]) == (1, 5, 3, 6) and "score" in p
    top = sa.top_contexts(1, 5, k=4)
    assert p["ctx_a"][0]["tok"] == top[0]["tokens"] and p["ctx_a"][0]["act"] == pytest.approx(top[0]["act"], abs=1e-4)
    assert all(t % 20 == 5 for c in p["ctx_a"] for t, v in zip(c["tok"], c["val"]) if v)  # fires on its token
    assert data["vocab"]["5"] == "w5⏎"
    with pytest.raises(UniversalityError, match="extra column"):
        explorer.pairs_data(tab, sa, sb, Tok(), extra_columns={"nope": "x"}, progress=False)


def _page(tmp_path):
    res, sa, sb = _setup()
    tab = explorer.pair_table(res)
    data = explorer.pairs_data(tab, sa, sb, Tok(), title="test </script> page", progress=False)
    return data, explorer.write_page(data, tmp_path / "explorer" / explorer.PAGE_NAME)


def test_page_is_self_contained(tmp_path):
    data, path = _page(tmp_path)
    page = path.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page), "the page must not load anything"
    assert "<link" not in page and "@import" not in page
    blob = re.search(r'<script type="application/json" id="explorer-data">(.*?)</script>', page, re.S).group(1)
    assert json.loads(blob) == data  # "</" is escaped as "<\/", which JSON reads back
    assert "explorer.html" in explorer.PAGE_NAME and explorer.pair_html(data["pairs"][0], data).count("<span") > 0


def test_page_in_headless_chromium(tmp_path, chromium):
    data, path = _page(tmp_path)
    url = path.resolve().as_uri() + "?selftest=1&mppc_min=0.4&layer_a=1&freq_max=0.1"
    proc = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", url],
                          capture_output=True, text=True, timeout=120)
    m = re.search(r'<pre id="selftest">(.*?)</pre>', proc.stdout, re.S)
    assert m, f"no self-test output (exit {proc.returncode}): {proc.stderr[-500:]}"
    out = json.loads(html.unescape(m.group(1)))
    assert "error" not in out, out
    pairs = data["pairs"]
    mppc = np.array([p["mppc"] for p in pairs])
    fa = np.array([p["freq_a"] for p in pairs])
    la = np.array([p["la"] for p in pairs])
    assert out["n_pairs"] == len(pairs) == 24
    assert out["initial_mppc"] == sorted(mppc, reverse=True)  # loads sorted by MPPC, largest first
    assert out["mppc_after_one_click"] == sorted(mppc)  # a click on the header reverses
    assert out["freq_a_sorted"] == sorted(fa, reverse=True)
    assert sorted(out["filtered_mppc"]) == sorted(mppc[mppc >= 0.4])
    keep = (mppc >= 0.4) & (la == 1)
    assert out["filtered_la"] == [1] * keep.sum() and sorted(out["filtered_mppc2"]) == sorted(mppc[keep])
    keep &= fa <= 0.1
    assert sorted(out["filtered_freq"]) == sorted(fa[keep]) and out["count_text"] == f"{keep.sum()} of 24 pairs"
    assert out["after_reset"] == 24
    sel = pairs[out["selected_id"]]
    assert out["selected_id"] == int(np.argmax(fa))  # the first row after the reset (sorted by T freq)
    assert f"L{sel['la']} #{sel['ua']}" in out["detail_title"] and f"L{sel['lb']} #{sel['ub']}" in out["detail_title"]
    for s in ("a", "b"):
        ctx = sel[f"ctx_{s}"]
        toks = [t for c in ctx for t in c["tok"]]
        vals = np.array([v for c in ctx for v in c["val"]])
        assert out[f"spans_{s}"] == len(toks) > 0
        assert out[f"text_{s}"] == "".join(data["vocab"][str(t)] for t in toks)  # markup shown as text
        np.testing.assert_allclose(out[f"act_{s}"], vals)
        np.testing.assert_allclose(out[f"alpha_{s}"], np.round(vals / vals.max(), 2), atol=0.006)
