"""Matplotlib figures of the book, one module per chapter that draws (each function returns the Figure; the
notebook shows it):

* :mod:`.zoo`           chapter 1: loss by position, training and induction curves
* :mod:`.saes`          chapter 2: SAE quality against depth, feature density, one SAE's training curves
* :mod:`.similarity`    chapter 3: MPPC distributions, means with intervals, layer-pair matrix, paired MPPC
* :mod:`.universality`  chapter 4: depth panels, complexity against MPPC
* :mod:`.circuits`      chapter 5 (and 6): patching effects as bars and heat-maps, circuit diagrams
* :mod:`.off_by_one`    chapter 6: the Off-by-One diagram, offset profiles, lag shares

Every figure is re-exported here: ``from universality_lib.plots import effect_bars`` works for all of them.
"""
from .circuits import circuit_diagrams, effect_bars, effect_heatmap
from .off_by_one import lag_shares, off_by_one_diagram, offset_profiles
from .saes import feature_density, sae_quality, sae_training_curve
from .similarity import layer_matrix, mppc_distributions, mppc_means, paired_mppc
from .universality import complexity_panels, depth_panels
from .zoo import induction_curves, loss_by_position, prob_by_prefix, ratio_by_prefix, training_curves

__all__ = ["circuit_diagrams", "complexity_panels", "depth_panels", "effect_bars", "effect_heatmap",
           "feature_density", "induction_curves", "lag_shares", "layer_matrix", "loss_by_position", "mppc_distributions",
           "mppc_means", "off_by_one_diagram", "offset_profiles", "paired_mppc", "prob_by_prefix", "ratio_by_prefix",
           "sae_quality", "sae_training_curve", "training_curves"]
