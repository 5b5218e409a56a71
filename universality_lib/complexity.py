"""Feature complexity measured from data: transparent proxies for the paper's LLM-judged complexity.

The paper asked a language model to rate how complex each feature is from its top-activating contexts and
found that the most shared features (high MPPC) are the simpler ones. No language model is available offline,
so this module measures four properties of a feature directly from its activations. They are **proxies**: each
captures one aspect of what a rater would call "simple", none is the paper's score (``llm_judge.py`` is the
paper's route, for users with an endpoint).

For feature ``i`` with activation ``a_t`` on the ordinary tokens ``t`` of a sample (``FeatureSample``):

* ``token_r2`` (a): how much of the activation the current token's identity alone explains: the adjusted
  R^2 (epsilon^2 of a one-way ANOVA) of ``a`` on the token id,
  ``1 - [SS_within / (n - g)] / [SS_total / (n - 1)]`` with ``g`` distinct token ids in the sample. 1 when the
  activation is a function of the token; about 0 when the token says nothing (the adjustment removes the
  ``(g - 1) / (n - 1)`` that a plain R^2 gains from fitting one mean per token id).
  ``non_token_variance = 1 - token_r2`` is its complexity-oriented form (the headline proxy of chapter 4).
* ``context_dependence`` (b): how much the activation depends on earlier tokens: at the feature's top ``k``
  activations, the preceding tokens (all but BOS) are replaced by those of another row at the same positions,
  the current token is kept, and ``sum |a - a'| / sum a`` is taken over the ``k`` contexts (``a'`` the
  activation after the replacement). 0 when the current token alone sets the activation; about 1 when the
  feature vanishes without its context.
* ``density`` (c): the fraction of the sample's tokens on which the feature is non-zero.
* ``top_token_entropy`` (d): the Shannon entropy (bits) of the token ids at the feature's ``k`` largest
  activations: 0 when it peaks on one token, ``log2 k`` when every peak is on a different token.

Each is then compared with MPPC by Spearman's rho (bootstrap interval over features) and by binned means
(:func:`correlations`, :func:`binned_means`). Only features with at least ``min_active`` active tokens in the
sample are scored: the entropy of ``k`` peaks needs ``k`` of them, and a feature seen two or three times has no
meaningful R^2 either.

Glossary: ``n`` (or ``n_tok``) tokens in the sample, ``F`` features of a layer, ``g`` distinct token ids,
``k`` top activations per feature, rho Spearman's rank correlation.
"""
from __future__ import annotations


import numpy as np
import scipy.sparse as sp
import torch

from .errors import UniversalityError
from .feature_sample import FeatureSample
from .runtime import model_device
from .stats import bootstrap_mean, spearman_ci

__all__ = ["MEASURES", "token_r2", "density", "top_positions", "top_token_entropy", "context_dependence",
           "model_encoder", "select_features", "measure", "spearman_ci", "correlations", "binned_means"]

# name -> (what it is, direction: +1 if a larger value means a more complex feature, 0 if it is not a complexity)
MEASURES = {
    "non_token_variance": ("1 - adjusted R² of the activation on the current token id (a)", +1),
    "context_dependence": ("relative activation change at the top contexts when the preceding tokens are "
                           "replaced (b)", +1),
    "density": ("fraction of tokens on which the feature fires (c)", 0),
    "top_token_entropy": ("entropy (bits) of the token ids at the top activations (d)", +1),
}


# ----------------------------------------------------------------------------- (a) token identity
def token_r2(acts: sp.spmatrix, tokens: np.ndarray) -> np.ndarray:
    """float [F]: adjusted R² (epsilon²) of each column of ``acts`` [n, F] on the token ids ``tokens`` [n]
    (one-way ANOVA by token id); NaN for a constant column."""
    a = sp.csc_matrix(acts, dtype=np.float64)
    tokens = np.asarray(tokens)
    n, f = a.shape
    if len(tokens) != n:
        raise UniversalityError(f"tokens [{len(tokens)}] and activations [{n}, {f}] disagree on the token count")
    ids, inv, n_v = np.unique(tokens, return_inverse=True, return_counts=True)  # g groups
    g = len(ids)
    onehot = sp.csr_matrix((np.ones(n), (inv, np.arange(n))), shape=(g, n))  # [g, n]
    s_v = sp.csr_matrix(onehot @ a)  # [g, F] per-token sums
    total = np.asarray(a.sum(0)).ravel()  # [F]
    sq = np.asarray(a.multiply(a).sum(0)).ravel()  # [F]
    ss_total = sq - total**2 / n
    between = np.asarray(s_v.multiply(s_v).multiply(1.0 / n_v[:, None]).sum(0)).ravel() - total**2 / n
    ss_within = np.maximum(ss_total - between, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        if n > g:
            r2 = 1.0 - (ss_within / (n - g)) / (ss_total / (n - 1))
        else:  # as many groups as tokens: no within-group degrees of freedom
            r2 = np.full(f, np.nan)
    scale = np.maximum(sq, 1e-300)
    return np.where(ss_total > 1e-12 * scale, r2, np.nan)


# ----------------------------------------------------------------------------- (c) density
def density(acts: sp.spmatrix) -> np.ndarray:
    """float [F]: fraction of rows of ``acts`` [n, F] on which each column is non-zero."""
    a = sp.csc_matrix(acts)
    a.eliminate_zeros()
    return np.diff(a.indptr) / max(a.shape[0], 1)


# ----------------------------------------------------------------------------- (d) entropy of the top tokens
def top_positions(acts: sp.spmatrix, k: int) -> list[np.ndarray]:
    """For each column of ``acts`` [n, F], the row indices of its ``k`` largest non-zero values (fewer if it
    has fewer), largest first."""
    a = sp.csc_matrix(acts)
    out = []
    for j in range(a.shape[1]):
        lo, hi = a.indptr[j], a.indptr[j + 1]
        vals, idx = a.data[lo:hi], a.indices[lo:hi]
        keep = vals > 0
        vals, idx = vals[keep], idx[keep]
        order = np.argsort(-vals, kind="stable")[:k]
        out.append(idx[order])
    return out


def _entropy_bits(x: np.ndarray) -> float:
    if len(x) == 0:
        return float("nan")
    _, c = np.unique(x, return_counts=True)
    p = c / c.sum()
    return float(-(p * np.log2(p)).sum()) + 0.0  # + 0.0: no -0.0


def top_token_entropy(acts: sp.spmatrix, tokens: np.ndarray, k: int = 16) -> np.ndarray:
    """float [F]: entropy in bits of the token ids at each column's ``k`` largest activations (NaN if it
    never fires)."""
    tokens = np.asarray(tokens)
    return np.array([_entropy_bits(tokens[p]) for p in top_positions(acts, k)])


# ----------------------------------------------------------------------------- (b) earlier context
@torch.no_grad()
def context_dependence(encode, rows: torch.Tensor, probes: dict, clean: dict, *, seed: int = 0,
                       batch_size: int = 32, pad_id: int = 0, progress: bool = True) -> dict:
    """Relative activation change when the tokens before a position are replaced by another row's.

    ``encode(batch [b, L']) -> {layer: FloatTensor [b, L', F_l]}``: the feature activations of a causal model.
    ``probes[layer]``: int array [P, 3] of (row, pos, column) triples: feature ``column`` of that layer, measured
    at ``rows[row, pos]``; ``clean[layer]``: float [P], its activation there in the unchanged row.
    For each distinct (row, pos) a donor row ``!= row`` is drawn (``seed``); the corrupted sequence is the donor's
    tokens ``1 .. pos - 1`` between the row's own BOS (position 0) and its own token at ``pos``.
    Returns ``{layer: float [P]}``, the activation ``a'`` of each probe after the replacement.
    """
    from tqdm.auto import tqdm

    rows = torch.as_tensor(rows)
    n = len(rows)
    if n < 2:
        raise UniversalityError("context_dependence needs at least two rows (one donates the replaced context)")
    sites = {}  # (row, pos) -> site number
    for layer, pr in probes.items():
        pr = np.asarray(pr, np.int64).reshape(-1, 3)
        if len(pr) and (pr[:, 1] < 1).any():
            raise UniversalityError("a probe at position 0 (BOS) has no preceding context to replace")
        for r, p in pr[:, :2]:
            sites.setdefault((int(r), int(p)), len(sites))
    site_rc = np.array(list(sites), np.int64).reshape(-1, 2)  # [S, 2]
    rng = np.random.default_rng(seed)
    donor = (site_rc[:, 0] + rng.integers(1, n, size=len(site_rc))) % n  # never the row itself
    out = {layer: np.full(len(np.asarray(pr).reshape(-1, 3)), np.nan, np.float32) for layer, pr in probes.items()}
    # probe -> site for each layer
    site_of = {layer: np.array([sites[(int(r), int(p))] for r, p in np.asarray(pr, np.int64).reshape(-1, 3)[:, :2]],
                               np.int64) for layer, pr in probes.items()}
    order = np.argsort(site_rc[:, 1], kind="stable")  # similar lengths together
    for b0 in tqdm(range(0, len(order), batch_size), desc="context replacement", disable=not progress):
        sel = order[b0:b0 + batch_size]
        length = int(site_rc[sel, 1].max()) + 1
        batch = torch.full((len(sel), length), pad_id, dtype=rows.dtype)
        for i, s in enumerate(sel):
            r, p = site_rc[s]
            batch[i, :p + 1] = rows[donor[s], :p + 1]
            batch[i, 0] = rows[r, 0]
            batch[i, p] = rows[r, p]
        acts = encode(batch)  # {layer: [b, length, F]}
        pos_in_batch = {int(s): i for i, s in enumerate(sel)}
        for layer, pr in probes.items():
            pr = np.asarray(pr, np.int64).reshape(-1, 3)
            hit = np.flatnonzero(np.isin(site_of[layer], sel))
            if len(hit) == 0:
                continue
            bi = np.array([pos_in_batch[int(s)] for s in site_of[layer][hit]])
            a = acts[layer].detach().float().cpu().numpy()  # [b, length, F]
            out[layer][hit] = a[bi, site_rc[site_of[layer][hit], 1], pr[hit, 2]]
    return out


def model_encoder(model, saes: dict, units: dict):
    """``encode`` for :func:`context_dependence`: the SAE features ``units[layer]`` of ``model`` on a batch
    (``{layer: FloatTensor [b, L, F_l]}``)."""
    from .activations import resid_post_hook

    hooks = {k: resid_post_hook(k) for k in units}
    stop = max(units) + 1
    dev = model_device(model)

    def encode(batch):
        _, cache_ = model.run_with_cache(batch.to(dev), names_filter=sorted(hooks.values()), stop_at_layer=stop)
        out = {}
        for k, h in hooks.items():
            sae = saes[k]
            f = sae.encode(cache_[h].float().to(sae.W_dec.device))  # [b, L, F]
            out[k] = f[..., torch.as_tensor(units[k], device=f.device)]
        return out

    return encode


# ----------------------------------------------------------------------------- the whole table
def select_features(table, n_tokens: int, min_active: int = 16, max_features: int | None = 2000, seed: int = 0):
    """The rows of an ``MPPCResult.table`` worth scoring: live, with a finite MPPC and at least ``min_active``
    active tokens (``freq * n_tokens``); at most ``max_features`` of them, drawn uniformly at random."""
    t = table[table.live & np.isfinite(table.mppc) & (table.freq * n_tokens >= min_active)]
    if max_features is not None and len(t) > max_features:
        t = t.sample(n=max_features, random_state=seed)
    return t.sort_values(["layer", "unit"]).reset_index(drop=True)


def measure(sample: FeatureSample, features, *, encode=None, k: int = 16, k_context: int = 8,
            min_active: int = 16, seed: int = 0, progress: bool = True):
    """The four measures for ``features`` (a DataFrame with ``layer`` and ``unit`` columns, e.g. from
    :func:`select_features`; other columns are kept) on ``sample``. ``encode``: as for
    :func:`context_dependence` (e.g. :func:`model_encoder`), or None to skip (b).
    Returns the DataFrame with ``token_r2``, ``non_token_variance``, ``context_dependence``, ``density``,
    ``top_token_entropy``, ``n_active``; features with fewer than ``min_active`` active tokens get NaN."""
    df = features.copy().reset_index(drop=True)
    for c in ("token_r2", "context_dependence", "density", "top_token_entropy", "n_active"):
        df[c] = np.nan
    probes, clean, rows_of = {}, {}, {}
    for layer, idx in df.groupby("layer").groups.items():
        layer = int(layer)
        cols = np.array([sample._col(layer, int(u)) for u in df.loc[idx, "unit"]])
        a = sample.acts[layer][:, cols]  # [n, F_sel]
        dens = density(a)
        n_active = np.rint(dens * sample.n_tokens)
        ok = n_active >= min_active
        df.loc[idx, "n_active"] = n_active
        df.loc[idx, "density"] = dens
        df.loc[idx, "token_r2"] = np.where(ok, token_r2(a, sample.tokens), np.nan)
        df.loc[idx, "top_token_entropy"] = np.where(ok, top_token_entropy(a, sample.tokens, k), np.nan)
        if encode is not None:
            tops = top_positions(a, k_context)
            pr, cl, owner = [], [], []
            csc = sp.csc_matrix(a)
            for j, (i_row, tp) in enumerate(zip(idx, tops)):
                if not ok[j]:
                    continue
                r, p = sample.index[tp, 0], sample.index[tp, 1]
                keep = p >= 1
                col = int(sample._col(layer, int(df.loc[i_row, "unit"])))
                pr += [(int(rr), int(pp), col) for rr, pp in zip(r[keep], p[keep])]
                cl += list(csc[tp[keep], j].toarray().ravel())
                owner += [i_row] * int(keep.sum())
            probes[layer] = np.array(pr, np.int64).reshape(-1, 3)
            clean[layer] = np.array(cl, np.float64)
            rows_of[layer] = np.array(owner, np.int64)
    if encode is not None and probes:
        after = context_dependence(encode, sample.rows, probes, clean, seed=seed, progress=progress)
        for layer in probes:
            if len(rows_of[layer]) == 0:
                continue
            diff = np.abs(clean[layer] - after[layer])
            num = np.bincount(rows_of[layer], weights=diff, minlength=len(df))
            den = np.bincount(rows_of[layer], weights=clean[layer], minlength=len(df))
            has = np.bincount(rows_of[layer], minlength=len(df)) > 0
            df.loc[has, "context_dependence"] = num[has] / np.maximum(den[has], 1e-12)
    df["non_token_variance"] = 1.0 - df["token_r2"]
    return df


# ----------------------------------------------------------------------------- statistics (stats.py)
def correlations(df, by: str = "mppc", measures=None, n_boot: int = 1000, seed: int = 0):
    """pandas DataFrame, one row per measure: Spearman's rho with ``by`` and its bootstrap interval, n, what
    the measure is and whether a larger value means more complex."""
    import pandas as pd

    measures = list(measures or MEASURES)
    recs = []
    for m in measures:
        if m not in df or df[m].isna().all():
            continue
        what, direction = MEASURES.get(m, (m, 0))
        recs.append({"measure": m, **spearman_ci(df[by], df[m], n_boot=n_boot, seed=seed), "what": what,
                     "complexity_direction": direction})
    return pd.DataFrame(recs)


def binned_means(df, measure: str, by: str = "mppc", edges=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0), n_boot: int = 1000,
                 seed: int = 0):
    """pandas DataFrame, one row per ``by`` bin ``[lo, hi)`` (the last one closed): the features in it and the
    mean of ``measure`` with its bootstrap 95% interval."""
    import pandas as pd

    edges = np.asarray(edges, np.float64)
    x = df[by].to_numpy(np.float64)
    v = df[measure].to_numpy(np.float64)
    recs = []
    for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        inside = (x >= lo) & ((x < hi) if i < len(edges) - 2 else (x <= hi))
        vals = v[inside & np.isfinite(v)]
        mean, clo, chi = bootstrap_mean(vals, n_boot=n_boot, seed=seed)
        recs.append({"bin": f"[{lo:.1f}, {hi:.1f}{')' if i < len(edges) - 2 else ']'}", "lo": lo, "hi": hi,
                     "n": len(vals), "mean": mean, "ci_low": clo, "ci_high": chi})
    return pd.DataFrame(recs)
