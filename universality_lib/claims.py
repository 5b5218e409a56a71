"""The paper's claims, one :class:`Claim` each: its id, chapter, criterion, the paper's number and source, and its
check as code.

A chapter notebook hands a claim the numbers it measured; the claim decides, and records value, criterion and
verdict through :func:`universality_lib.results.record` (under the result names the report reads)::

    gap = claims.check("C1", main=[mean, ci_low, ci_high], random=[mean, ci_low, ci_high])

A claim decided in several steps has one :class:`Check` per verdict name (``claims.check("C6.logits", ...)``);
``claims.check("P3", ...)`` runs every check of a claim at once. The inputs are stored with the verdict (the
record's ``inputs`` field), so a verdict can be recomputed from the results file alone (``tests/test_claims.py``).

Claims C1-C10 and the paper's numbers are those of the paper digest (``shared/paper-digest.md``, sections 4 and 7),
with its provenance tags ([CODE] = the authors' released result tensors, [3RD] = unverified third-party notes,
[REV] = the reviewers' summary, ...). P1-P3 are prerequisites: the models are comparable, do induction, and their
SAEs are good.

Glossary: ``T`` / ``T2`` the Transformer and its second-seed twin, ``M`` the Mamba, ``M0`` the untrained Mamba
(random baseline); MPPC = max pairwise Pearson correlation of a feature's activations with any feature of the
other model; an interval is ``[mean, 95% low, 95% high]``; ``A`` / ``B`` the induction prompt's tokens
(``... A B ... A`` -> predict ``B``); ``B+1`` the position after ``B``; Δ = change of the B logit when a component
is patched, SE its standard error.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from . import results
from .circuits.effects import dominant
from .errors import UniversalityError
from .stats import above_zero, below_zero

__all__ = ["Check", "Claim", "CLAIMS", "CHECKS", "RATIO", "Z", "get", "check", "recheck"]

RATIO, Z = 1.5, 3.0  # "one component dominates": >= RATIO x the runner-up's |Δ|; "significant": > Z SE from zero


@dataclass(frozen=True)
class Check:
    """One verdict: the rule that turns a chapter's numbers into (value, passed), recorded as ``name``."""

    id: str  # "C1", or "C6.logits" when a claim has several checks
    name: str  # the result name it records (str.format fields filled from the inputs, e.g. "{kind}_{model}")
    claim: str  # the claim text recorded with it (format fields as for name)
    criterion: str  # the criterion recorded with it
    rule: Callable[..., tuple[Any, bool]]  # (inputs) -> (value, passed)
    names: tuple[str, ...] = ()  # for a templated name: the names the report reads as verdicts (default: name)
    unit: str | None = None  # the unit recorded with the value ("logit"); None for a count, ratio or flag

    @property
    def inputs(self) -> tuple[str, ...]:
        return tuple(inspect.signature(self.rule).parameters)

    def __call__(self, **inputs) -> tuple[Any, bool]:
        """(value, passed) for these inputs, without recording anything."""
        missing = [k for k in self.inputs if k not in inputs]
        if missing:
            raise UniversalityError(f"claims.check({self.id!r}): missing input(s) {', '.join(missing)}; "
                                    f"it takes {', '.join(self.inputs)}.")
        value, passed = self.rule(**{k: inputs[k] for k in self.inputs})
        return value, bool(passed)


@dataclass(frozen=True)
class Claim:
    """One row of the report: a claim of the paper (or a prerequisite), and the checks that decide it here."""

    id: str  # "C1" ... "C10"; "P1" ... for prerequisites
    title: str  # the claim in one line
    chapter: str | None  # the chapter's number prefix ("03"); None: no chapter can test it here
    checks: tuple[Check, ...]  # every one must pass for "held"
    shown: tuple[str, ...]  # result names shown beside the verdicts
    criterion: str  # the digest's operational test (the chapter's recorded criterion replaces it in the report)
    paper: str  # the paper's number, or what is known of it
    source: str  # provenance tags (paper digest)
    numbers: dict = field(default_factory=dict)  # the paper's numbers, for the chapter's comparison tables

    @property
    def verdict(self) -> tuple[str, ...]:
        """The result names whose ``passed`` decide the claim."""
        return tuple(n for c in self.checks for n in (c.names or (c.name,)))


# ----------------------------------------------------------------------------- the rules
def _interval(x: Sequence[float]) -> tuple[float, float, float]:
    mean, lo, hi = (float(v) for v in x)
    return mean, lo, hi


def _param_ratio(ratio):
    return float(ratio), 0.8 <= ratio <= 1.25


def _induction(model, kind, ratio):
    return ratio, ratio <= 0.5  # induction.induction_check's default threshold


def _at_least(x, lo):
    return x, x >= lo


def _fve(fve_min):
    return _at_least(fve_min, 0.8)


def _l0(l0_range):
    lo, hi = l0_range
    return [lo, hi], lo >= 0.05 and hi <= 0.10


def _dead(dead_max):
    return dead_max, dead_max <= 0.10


def _ce(ce_min):
    return _at_least(ce_min, 0.8)


def _gap_main_random(main, random):
    (m, m_lo, _), (r, _, r_hi) = _interval(main), _interval(random)
    return m - r, m - r >= 0.1 and m_lo > r_hi


def _gap_sae_neurons(main, neurons_main):
    (m, m_lo, _), (n, _, n_hi) = _interval(main), _interval(neurons_main)
    return m - n, m_lo > n_hi


def _order(random, main, model_seed, sae_seed):
    (_, _, r_hi), (m, m_lo, _) = _interval(random), _interval(main)
    order = bool(r_hi < m_lo and m <= _interval(model_seed)[0] <= _interval(sae_seed)[0])
    return order, order


def _rho_above_zero(rho, ci):  # depth.DepthAlignment.holds
    return rho, above_zero(rho, ci[0])


def _rho_below_zero(rho, ci):
    return rho, below_zero(rho, ci[1])


def _dominates(delta, delta_se, ratio):  # circuits.effects.Effects.dominates("logit_B", "down", RATIO, Z)
    return ratio, dominant(delta, delta_se, ratio, "down", RATIO, Z)


def _toward_fake(delta, delta_se):
    return delta, delta > Z * delta_se


def _conv_lag(lag, delta):
    return int(lag), lag >= 1 and delta < 0


def _peak(deltas, ses):  # circuits.off_by_one.peak: the offset with the largest |Δ|
    i = max(range(len(deltas)), key=lambda j: (abs(deltas[j]), -j))
    return i, deltas[i], ses[i]


def _peak_at(deltas, ses, at):
    i, d, se = _peak(deltas, ses)
    return i, i == at and d < -Z * se


def _peak_at_b1(deltas, ses):
    return _peak_at(deltas, ses, 1)


def _peak_at_b(deltas, ses):
    return _peak_at(deltas, ses, 0)


def _dominance(id: str, key: str, what: str, claim: str) -> Check:
    return Check(id, f"{key}_ratio", claim, f"the top {what} lowers the B logit by > {Z:g} SE and by >= {RATIO:g}x "
                 "the runner-up's |Δ|", _dominates)



# ----------------------------------------------------------------------------- the claims
_PAPER_05 = {  # the authors' saved results (paper digest 2.6): Pythia-160M and Mamba-130M; Δ = change of the B logit
    # (runner_up: the runner-up's Δ; runner_up_top: which component that is)
    "T: head -> logits": dict(top="L5H0", delta=-2.3453, runner_up=-1.2604, runner_up_top="L9H4", clean_p=0.0170,
                              patched_p=0.0025),
    "T: head @B -> induction head -> logits": dict(top="L3H2", delta=-1.9993, runner_up=-0.5982, runner_up_top="L3H0",
                                                   clean_p=0.0165, patched_p=0.0039),
    "M: SSM state -> logits": dict(top="layer 17", delta=-7.8661, runner_up=-2.3524, runner_up_top="layer 12",
                                   clean_p=0.0486, patched_p=0.0003),
}
for _v in _PAPER_05.values():
    _v["ratio"] = abs(_v["delta"]) / abs(_v["runner_up"])

CLAIMS: tuple[Claim, ...] = (
    Claim("P1", "The two models have comparable sizes", "01",
          (Check("P1", "param_ratio_M_over_T", "the two models have comparable sizes (paper: 130M vs 160M)",
                 "M/T parameter ratio within [0.8, 1.25]", _param_ratio),), (),
          "M/T parameter ratio within [0.8, 1.25]", "Mamba-130M vs Pythia-160M (ratio 0.81)", "[Q][CODE]"),
    Claim("P2", "Both models do induction (prerequisite of C6-C9)", "01",
          (Check("P2", "induction_ratio_{kind}_{model}", "{model} does induction ({kind_text})",
                 "repeat loss <= 0.5 x first-copy loss", _induction,
                 ("induction_ratio_random_T", "induction_ratio_random_M")),), ("induction_ratio_random_T2",),
          "repeat loss <= 0.5 x first-copy loss on repeated random tokens",
          "both do: clean p(B) 0.017 (Pythia), 0.049 (Mamba) on random-token induction prompts", "[CODE results]"),
    Claim("P3", "The SAEs are good enough to compare", "02",
          (Check("P3.fve", "sae_fve_min", "the SAEs reconstruct the residual stream",
                 "every SAE: fraction of variance explained >= 0.8", _fve),
           Check("P3.l0", "sae_l0_frac_range", "the SAEs are sparse, equally so in both families",
                 "every SAE: L0 between 5% and 10% of the dictionary size", _l0),
           Check("P3.dead", "sae_dead_frac_max", "few dead features",
                 "every SAE: at most 10% of its features never fire on the eval tokens", _dead),
           Check("P3.ce", "sae_ce_recovered_min", "splicing in an SAE keeps the model working",
                 "every SAE on a trained model (T, T2, M): CE loss recovered >= 0.8", _ce)), ("sae_count",),
          "every SAE: FVE >= 0.8, L0 5-10% of the dictionary, <= 10% dead, CE recovered >= 0.8",
          "not reported (SAE hyper-parameters and quality UNKNOWN)", "[digest 2.2]"),
    Claim("C1", "SAE features are largely shared across architectures", "03",
          (Check("C1", "mppc_gap_main_minus_random", "most features are similar across architectures (main >> random)",
                 "mean MPPC (T->M) - mean MPPC (T->M0) >= 0.1 and the 95% intervals do not overlap",
                 _gap_main_random),),
          ("mppc_mean_main_a", "mppc_mean_random_a", "mppc_frac_above_main_a", "mppc_mean_main_b"),
          "mean MPPC T->M well above the random baseline, close to the model-seed skyline",
          "mean MPPC ~0.74; >30% of features 'very highly' matched (both UNVERIFIED, threshold unknown)",
          "[3RD][ML-ja]"),
    Claim("C2", "SAEs are needed: neurons are far less universal", "03",
          (Check("C2", "mppc_gap_sae_minus_neurons", "SAE features are more universal than neurons",
                 "mean MPPC of SAE features (main) > mean MPPC of neurons (main), 95% intervals not overlapping",
                 _gap_sae_neurons),),
          ("mppc_mean_neurons_main_a", "mppc_mean_neurons_random_a", "mppc_gap_neurons_main_minus_random"),
          "neuron MPPC (main) much lower than SAE-feature MPPC (main), close to its own random baseline",
          "neurons show 'almost zero similarity' (UNVERIFIED); Fig. 3b", "[3RD][Q]"),
    Claim("C3", "Random < main <= model-seed skyline <= SAE-seed skyline", "03",
          (Check("C3", "mppc_order_holds", "random < main <= model-seed skyline <= SAE-seed skyline",
                 "random < main (intervals apart), then the means in this order", _order),),
          ("mppc_mean_model_seed_a", "mppc_mean_sae_seed_a", "mppc_gap_model_seed_minus_main",
           "mppc_gap_sae_seed_minus_main"),
          "ordering of the mean MPPCs, with a small main-to-skyline gap",
          "main 'falls only slightly short of skylines'; means UNKNOWN", "[REV][Q]"),
    Claim("C4", "Matched features sit at corresponding depths", "04",
          (Check("C4", "depth_spearman_rho", "matched features sit at corresponding depths (best-matching M layer "
                 "rises with the T layer)", "Spearman rho between the relative depths of each live T feature and "
                 "its best match in M > 0, 95% bootstrap interval above 0", _rho_above_zero),),
          ("depth_spearman_ci",),
          "Spearman rho between relative depths of matched features > 0 (interval above 0)",
          "roughly diagonal layer-pair map, Mamba layer ~ 2 x Pythia layer; values UNKNOWN", "[REV][SS][INF]"),
    Claim("C5", "The most shared features are the simpler ones", "04",
          (Check("C5", "complexity_spearman_rho", "the most shared features are the simpler ones",
                 "Spearman rho of MPPC (T->M) with non_token_variance (1 - adjusted R² of the activation on the "
                 "token id) < 0, 95% bootstrap interval below 0", _rho_below_zero),),
          ("complexity_proxy",), "negative Spearman rho between MPPC and a complexity proxy",
          "features with the most overlap are simpler and more monosemantic (LLM-scored); coefficient UNKNOWN",
          "[REV][ABS]"),
    Claim("C6", "Transformer induction: previous-token head -> induction head", "05",
          (_dominance("C6.logits", "T_head_to_logits", "head", "C6: one head dominates the direct effect on the B logit "
                      "at the last position (the induction head)"),
           _dominance("C6.heads", "T_head_to_head", "sender head", "C6: one earlier head at position B carries most "
                      "of the effect through the induction head (the previous-token head)")),
          ("T_head_to_logits_top", "T_head_to_logits_delta", "T_head_to_logits_share", "T_head_to_head_top",
           "T_head_to_head_delta"),
          "one head dominates the direct effect on the B logit; one earlier head at B carries most of the effect "
          "through it",
          "L5H0: B logit 9.31 -> 6.96 (delta -2.35), p 0.0170 -> 0.0025; L3H2 via L5H0: delta -2.00",
          "[CODE results]", {k: _PAPER_05[k] for k in list(_PAPER_05)[:2]}),
    Claim("C7", "Mamba induction sits in one layer's SSM state", "05",
          (_dominance("C7.state", "M_state_to_logits", "layer", "C7: one layer's SSM state dominates the "
                      "state-history sweep (Mamba's induction layer)"),
           Check("C7.fake", "M_state_fake_delta", "C7: patching the induction layer's state with the B->B' history "
                 "moves the prediction toward B'", f"Δ logit B' > {Z:g} SE in the top layer", _toward_fake,
                 unit="logit")),
          ("M_state_to_logits_top", "M_state_to_logits_delta", "M_state_to_logits_share"),
          "one layer's state dominates the state-history path-patching sweep; patching it moves the prediction "
          "toward B'",
          "layer 17 of 24: delta logit -7.87, p 0.0486 -> 0.0003; next layer 12 (-2.35); fake B' logit +3.43",
          "[CODE results]", {k: _PAPER_05[k] for k in list(_PAPER_05)[2:]}),
    Claim("C8", "The conv1d does the previous-token mixing", "05",
          (Check("C8", "M_conv_best_lag", "C8: the conv builds the state write from the tokens before it "
                 "(previous-token mixing)", "the strongest input sits before the output (lag >= 1)", _conv_lag),),
          ("M_conv_layer", "M_conv_best_output", "M_conv_best_input", "M_conv_best_delta",
           "M_conv_same_position_delta"),
          "conv-input patching has a large effect only from the preceding positions (A, B), not the current one",
          "L17 conv output at B+1: x_in@B -8.24, x_in@A -6.97, x_in@B+1 +0.08", "[CODE results]"),
    Claim("C9", "Off-by-One: a token's information enters the SSM state one position later", "06",
          (Check("C9.peak", "off_by_one_peak_offset", "C9: a token's information enters the SSM state one position "
                 "later (the state-write effect peaks at B+1)", "the offset with the largest |Δ logit B| is B+1 "
                 f"(offset 1), a decrease of more than {Z:g} SE", _peak_at_b1),
           Check("C9.control", "off_by_one_transformer_control", "C9 control: in the Transformer the effect sits at "
                 "B, not B+1", f"the previous-token head's largest |Δ logit B| over B..B+3 is at B (offset 0), a "
                 f"decrease of more than {Z:g} SE", _peak_at_b)),
          ("off_by_one_effect_by_offset",),
          "the state-write patching effect peaks at B+1, not B; in the Transformer the effect sits at B",
          "L17 state write: B -0.01, B+1 -9.13, B+2 +0.52, B+3 +0.16 (delta logit)", "[CODE notebook output]",
          {"B": -0.01, "B+1": -9.13, "B+2": 0.52, "B+3": 0.16}),  # Mamba-130M layer 17 (digest 2.6, item 4)
    Claim("C10", "The findings hold for the 2.8B models", None, (), (),
          "the same analyses on Pythia-2.8B / Mamba-2.8B", "Appendix D.5 (numbers UNKNOWN)", "[Q]"),
)
CHECKS: dict[str, Check] = {k.id: k for c in CLAIMS for k in c.checks}


def get(id: str) -> Claim | Check:
    """The claim ``"C1"`` or the check ``"C6.logits"``."""
    for c in CLAIMS:
        if c.id == id:
            return c
    if id in CHECKS:
        return CHECKS[id]
    raise UniversalityError(f"no claim or check {id!r}: claims {', '.join(c.id for c in CLAIMS)}; "
                            f"checks {', '.join(CHECKS)}.")


def _plain(v: Any) -> Any:
    """An input as JSON (numpy / torch values to Python; a non-finite float as its word, which float() reads)."""
    v = results._to_plain(v)
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def recheck(k: Check, inputs: dict) -> tuple[Any, bool]:
    """(value, passed) of check ``k`` from inputs as stored in a results file (the record's ``inputs`` field)."""
    def back(v):
        if isinstance(v, list):
            return [back(x) for x in v]
        return float(v) if v in ("nan", "inf", "-inf") else v

    return k(**{n: back(v) for n, v in inputs.items()})


def check(id: str, *, chapter: str | None = None, **inputs) -> Any:
    """Decide claim (or check) ``id`` from ``inputs``, record each verdict (value, claim, criterion, passed and the
    inputs) with :func:`universality_lib.results.record`, and return the recorded value (a ``{name: value}`` dict
    when the claim has several checks)."""
    target = get(id)
    todo = target.checks if isinstance(target, Claim) else (target,)
    if not todo:
        raise UniversalityError(f"claims.check({id!r}): {target.title!r} is not testable here.")
    out = {}
    for k in todo:
        value, passed = k(**inputs)
        plain = {n: _plain(inputs[n]) for n in k.inputs}
        fill = {**plain, "kind_text": "random tokens" if plain.get("kind") == "random" else "natural text"}
        name = k.name.format(**fill)
        out[name] = results.record(name, value, claim=k.claim.format(**fill), criterion=k.criterion,
                                   passed=passed, unit=k.unit, chapter=chapter, inputs=plain)
    return next(iter(out.values())) if len(out) == 1 else out


def record_zoo_check(rows: list) -> list:
    """Record every criterion of the zoo's own check (``zoo_check.criteria`` rows) in the chapter's results, as
    ``zoo_<criterion>_<model>`` with its threshold and ``passed``, so the results file holds each; returns ``rows``.
    (Here, on the book floor, because ``zoo_check`` sits below ``results``.)"""
    for r in rows:
        results.record(f"zoo_{r.criterion}_{r.model.replace('/', '_over_')}", r.value, claim="the zoo's own check",
                       criterion=r.threshold, passed=r.passed, note=f"{r.split}, n = {r.n}")
    return rows


def record_train_budget(preset) -> dict:
    """Record the last whole ``train`` command of a shipped preset (``zoo.run_record``) against the zoo's budget,
    ``zoo_train_hours`` with ``passed`` (a run that resumed a model from a checkpoint is recorded without a verdict:
    its earlier sittings are not in the time; nor is a run of another recipe than the preset's today, e.g. a record
    left from before a model's size changed). Returns the run record ({} and nothing recorded when no whole command
    finished, or the preset ships no trained zoo)."""
    from . import zoo
    from .presets import get

    p = get(preset)
    run = zoo.run_record(p) if p.shipped else {}
    if run:
        hours = run["wall_seconds"] / 3600
        same = run.get("recipe") == zoo.recipe_key(p)
        whole = set(run["models"]) >= set(zoo.names(p)) and not run["resumed"] and same
        results.record("zoo_train_hours", hours, unit="h", claim="the zoo trains from scratch on a 2-core CPU",
                       criterion=f"<= {zoo.TRAIN_BUDGET_HOURS:g} h for `python -m universality_lib train --preset "
                       f"{p.name}` (all models, from scratch)",
                       passed=(hours <= zoo.TRAIN_BUDGET_HOURS) if whole else None,
                       note=f"{run['machine']}, {run['cpu_count']} cores; {run['jobs']} processes x {run['threads']} "
                       f"thread(s), in the order {', '.join(run['order'])}; {run['started']} to {run['finished']}"
                       + (f"; resumed {', '.join(run['resumed'])}" if run["resumed"] else "")
                       + ("" if same else "; a run of another recipe than today's (not the shipped models' time)"))
    return run
