"""Presets: every size, budget and model name of the book in one place.

A preset is data, not a code path: chapters read sizes, budgets and names from it, so ``smoke``,
``tiny`` and ``paper`` run the same cells.

==========  ==============================================================================
``smoke``   CI: every notebook end to end in minutes on 2 CPU cores. Trains minute-sized models
            on a slice of the corpus; its numbers mean nothing scientifically.
``tiny``    The default: the real reproduction on CPU with the small Transformers and Mamba this
            project trains on English text plus the Python standard library and ships in the repository.
``paper``   Pythia-160M + Mamba-130M from the Hugging Face hub (GPU and internet, e.g. Colab).
==========  ==============================================================================

Glossary: ``L`` layers, ``D`` d_model, ``E`` d_inner (= expand * D), ``N`` d_state, ``V`` vocab.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UniversalityError

NAMES = ("smoke", "tiny", "paper")
DEFAULT = "tiny"


@dataclass(frozen=True)
class CorpusConfig:
    """Where text comes from and how it is split and tokenized."""

    source: str = "stdlib"  # "stdlib" (offline) or a `datasets` name such as "NeelNanda/pile-10k"
    max_files: int | None = None  # cap on source files (smoke); None = all
    include_tests: bool = True  # stdlib `test/` folders are part of the corpus
    vocab_size: int = 4096  # BPE vocabulary, incl. the single special token
    tokenizer: str | None = None  # hub tokenizer name (paper); None = train our own BPE
    # fractions of documents (by a stable hash of the path) in each split
    splits: tuple[tuple[str, float], ...] = (("lm_train", 0.8), ("sae_train", 0.1), ("eval", 0.1))
    dataset_split: str = "train"  # for hub datasets
    text_column: str = "text"
    sae_source: str | None = None  # hub dataset for SAEs (paper: a Pile subset)
    mppc_source: str | None = None  # hub dataset for MPPC (paper: OpenWebText sample)
    split_source_max_docs: int = 5_000  # documents read from sae_source / mppc_source when they differ from source
    # English text mixed into the stdlib code (names in universality_lib.sources.SOURCES; each has its weight)
    text_sources: tuple[str, ...] = ()
    code_weight: float = 1.0  # reads of each code document per pass in the training splits


@dataclass(frozen=True)
class TransformerConfig:
    """Pythia-style GPT-NeoX block: parallel attention + MLP, rotary, LayerNorm, untied unembedding."""

    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    n_ctx: int = 256
    rotary_pct: float = 0.25  # Pythia rotates a quarter of each head's dims
    hub_name: str | None = None  # paper: "EleutherAI/pythia-160m"


@dataclass(frozen=True)
class MambaSize:
    """Mamba-1 sizes (see models/mamba.py for the block)."""

    n_layers: int = 8
    d_model: int = 128
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    tie_embeddings: bool = False
    hub_name: str | None = None  # paper: "state-spaces/mamba-130m"


@dataclass(frozen=True)
class TrainConfig:
    """One loop for both families (train.py)."""

    tokens: int = 20_000_000
    batch_size: int = 32
    context: int = 256
    lr: float = 2e-3
    mamba_lr: float | None = None  # the Mamba's peak learning rate when it differs from the Transformer's
    mamba_tokens: int | None = None  # the Mamba's token budget when it differs (an unequal budget: disclose it)
    min_lr_frac: float = 0.1
    warmup_steps: int = 200
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    log_every: int = 50
    eval_every: int = 500
    checkpoint_every: int = 500
    # disclosed curriculum: ``repeat_frac`` of the rows carry random tokens that repeat.
    # "sequence": the whole row is a random span of ``repeat_span`` tokens, tiled (BOS + span + span ...);
    # "span": a random span is placed twice at random offsets inside a natural-text row.
    repeat_frac: float = 0.0
    repeat_span: int = 32
    repeat_mode: str = "span"
    # "sequence" mode draws each row's period uniformly from [repeat_min_period, P_max]; P_max grows
    # linearly from 2 to ``repeat_span`` over the first ``repeat_ramp_frac`` of the steps (0: no ramp)
    repeat_min_period: int = 1
    repeat_ramp_frac: float = 0.0
    # "sequence" mode: this fraction of the repeated rows tiles the row's own first tokens (natural text) instead of
    # random tokens, so that a model learns to copy real text, not only random sequences (zoo v2)
    repeat_natural_frac: float = 0.0
    # "sequence" mode: this fraction of the *random* repeated rows becomes "pair rows" instead: random tokens in windows
    # of ``repeat_span``, each window holding one random span of 2 to ``pair_max_span`` tokens (so often a lone A B
    # pair) at a random offset and its copy a random gap later: chapter 5's prompt shape, where the first occurrence
    # is not at the row's start, as it always is in a tiled row (train.add_pair_rows; trials: recipe_trials.json)
    repeat_pair_frac: float = 0.0
    pair_max_span: int = 8
    # "sequence" mode: a tiled row's first copy starts after a random number of tokens in [0, tile_offset_max] (the
    # row's own text, or random tokens in a random row) instead of right after BOS, so that copying from the row's
    # start does not pay (train.add_repeats); 0: every first copy starts at position 1, the batches of earlier recipes
    tile_offset_max: int = 0
    data_seed: int = 1234
    # a Mamba's own curriculum where it differs from the Transformer's (None: the shared value above; mamba_lr, above,
    # is the same kind of field); resolved by :meth:`for_family`
    mamba_tile_offset_max: int | None = None
    mamba_repeat_pair_frac: float | None = None

    @property
    def steps(self) -> int:
        """The optimizer steps of a run of this config: ``tokens`` in batches of ``batch_size`` rows of ``context``
        (resolve a family's own budget with :meth:`for_family` first)."""
        return max(1, self.tokens // (self.batch_size * self.context))

    def for_family(self, family: str) -> "TrainConfig":
        """The config one family trains with, resolved: for a ``"mamba"`` every ``mamba_<field>`` that is set
        replaces ``<field>``; a ``"transformer"`` trains with the shared fields. Either way the ``mamba_*`` fields
        of the result are None, so two recipes that train a family alike resolve to equal configs."""
        if family not in ("transformer", "mamba"):
            raise UniversalityError(f"family {family!r}: choose 'transformer' or 'mamba'")
        own = [f.name for f in dataclasses.fields(self) if f.name.startswith("mamba_")]
        over = {n[len("mamba_"):]: getattr(self, n) for n in own if getattr(self, n) is not None}
        return dataclasses.replace(self, **(over if family == "mamba" else {}), **{n: None for n in own})


@dataclass(frozen=True)
class SAEConfig:
    """Sparse autoencoders (saes.py, trained with sae-lens): one config for both families of a preset.

    The paper does not give its SAE hyper-parameters (paper digest, section 2.2); these are the book's
    choices. Dictionary size = ``expansion_factor * d_model``, the same factor for T and M. Activations are
    rescaled per token to norm sqrt(d_model) before the SAE (sae-lens ``constant_norm_rescale``; the
    reconstruction loss is taken in that normalised space). BOS / separator positions are left out.

    Sparsity: with ``l0_target`` set (standard SAEs), every SAE of the preset aims at the same L0, that fraction
    of its dictionary: the L1 weight starts at ``l1_coefficient`` and, between the end of its warm-up and the
    start of the learning-rate decay, is multiplied after every step by ``(L0_batch / L0_target) ** l0_gain``
    (then held for the rest of training). A single fixed λ gives very different L0s across layers and families
    (measured at tiny: 2.2% to 9.1% of the dictionary at λ = 1), so the shared target is the fairer "same
    sparsity" for comparing features. ``l0_target=None`` keeps λ fixed.
    """

    architecture: str = "standard"  # "standard" (ReLU + L1, the paper's) or "topk"
    expansion_factor: int = 16
    l1_coefficient: float = 5.0  # standard: weight of sum_i f_i(x) ||W_dec[:, i]|| (sae-lens' L1 term)
    l1_warm_up_frac: float = 0.05  # fraction of the steps over which the L1 weight ramps up from 0
    l0_target: float | None = None  # standard: the L0 (fraction of d_sae) λ is steered to; None: λ fixed
    l0_gain: float = 0.01  # per-step exponent of the λ update (see above)
    k: int = 64  # topk: active features per token
    training_tokens: int = 5_000_000
    batch_tokens: int = 4096
    lr: float = 4e-4
    lr_warm_up_frac: float = 0.01
    lr_decay_frac: float = 0.2  # linear decay to 0 over the last fraction of the steps
    context: int = 128  # row length of the sae_train rows fed to the model
    n_batches_in_buffer: int = 16  # sae-lens mixing buffer, in model batches
    store_batch_rows: int = 16  # rows per model forward pass while collecting activations
    dead_feature_window: int = 1000  # steps (sae-lens' dead-feature statistic during training)
    eval_tokens: int = 50_000  # eval tokens for the quality metrics (dead = never fired on these)
    seeds: tuple[int, ...] = (0, 1)  # SAE seed 0 on every model and layer; the others only on seed_skyline
    seed_skyline: str = "T"  # the model that gets the extra SAE seeds (the SAE-seed skyline)
    workers: int = 1  # processes training SAEs side by side on a CPU (saes.train_all)
    # at most this many SAEs of a model share one forward pass (saes.train_all; None: all of them). Each group runs
    # the model again, so a cap trades forwards for memory; it changes no SAE (each equals the one trained alone)
    shared_max: int | None = None
    # SAE training steps in bfloat16 mixed precision (sae-lens' runner option ``autocast``; CUDA only, ignored on
    # a CPU). The model's forward pass that feeds the SAE stays float32.
    autocast: bool = False


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    mamba: MambaSize = field(default_factory=MambaSize)
    train: TrainConfig = field(default_factory=TrainConfig)
    # the model zoo: name -> (family, seed); T2 is the model-seed skyline, M0 the untrained baseline
    zoo: tuple[tuple[str, str, int], ...] = (
        ("T", "transformer", 0),
        ("T2", "transformer", 1),
        ("M", "mamba", 0),
    )
    shipped: bool = False  # checkpoints live in the repository (tiny) rather than a cache or the hub
    needs_internet: bool = False
    eval_tokens: int = 100_000  # tokens of `eval` used for quick evaluations
    sae: SAEConfig = field(default_factory=SAEConfig)
    # zoo name -> hub repo id or local folder, for presets that load published checkpoints (paper);
    # see :func:`with_hub` to point them elsewhere (e.g. offline stand-ins)
    hub_models: tuple[tuple[str, str], ...] = ()
    # tokens of the `eval` split (BOS / separators left out) in the MPPC sample of chapter 3 (paper: 1M)
    mppc_tokens: int = 200_000

    def replace(self, **changes) -> "Preset":
        """A copy with top-level fields replaced (nested configs: pass whole objects)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_SMOKE = Preset(
    name="smoke",
    description="CI: minute-sized models on a slice of the standard library, every chapter in minutes.",
    corpus=CorpusConfig(max_files=120, vocab_size=512),
    transformer=TransformerConfig(n_layers=2, d_model=32, n_heads=2, d_mlp=128, n_ctx=64),
    mamba=MambaSize(n_layers=4, d_model=32),
    train=TrainConfig(tokens=60_000, batch_size=8, context=64, lr=3e-3, warmup_steps=10,
                      log_every=10, eval_every=50, checkpoint_every=50, repeat_frac=0.5, repeat_span=16),
    eval_tokens=5_000,
    # about a second per SAE: 78 steps of 512 tokens (the numbers mean nothing, the code path is the real one)
    sae=SAEConfig(expansion_factor=8, l1_coefficient=1.0, l0_target=0.075, l0_gain=0.1, training_tokens=40_000,
                  batch_tokens=512, lr=1e-3,
                  context=64, n_batches_in_buffer=8, store_batch_rows=8, dead_feature_window=100,
                  eval_tokens=5_000),
    mppc_tokens=8_000,
)

# The English-plus-code mix of the zoo v2 (issue 14): the standard library's code and the English sources
# of universality_lib.sources (narrative prose upweighted), split by document with a held-out share that no
# model or SAE reads. The `tiny` corpus.
MIX_CORPUS = CorpusConfig(
    text_sources=("moby-dick", "brown", "shakespeare", "kjv", "sotu", "python-docs"),
    splits=(("lm_train", 0.8), ("sae_train", 0.1), ("eval", 0.05), ("heldout", 0.05)),
)

# The zoo v2 recipe (issue 14): T / T2 with 4 blocks, M with 8 (the paper's 1:2), d_model 96, trained on the
# English-plus-code mix. Speed on the quiet 2-core CPU (benchmarks/zoo_v2_trials.py, batch 64 x 128, 2 threads): d96 T
# 9,268 and M (d_state 16) 7,699 tokens/s, 2.2x and 1.9x the d128 pair (4,276 / 3,992). The first v2 trial (d128, 12M
# tokens, a quarter of the rows random tiles and a quarter natural tiles) had no induction at 9.8M tokens (period-64
# check 7.29 / 6.89 for T); the v1 zoo (2 / 4 blocks, d128, code only), with half of its rows random tiles, formed
# induction as its period ramp ended. So half of the rows tile a random sequence (as v1), a quarter tile the row's own
# natural text (copying real text), a quarter are plain text, and the period ramp ends at 30% of the steps (4.8M
# tokens). T / T2 trained in session 6 (95 min each, three processes side by side on 2 cores); M in session 7. The whole
# zoo retrained from scratch with `train --preset tiny` in 1 h 44 min (session 13: M on one core, T then T2 on the other;
# zoo/tiny/train_run.json): T and T2 come back to float rounding, M to the same measures (recipe_trials.json).
# Every trial is in zoo/tiny/recipe_trials.json (chapter 1).
_TINY = Preset(
    name="tiny",
    description="The default: 4-block Transformers and an 8-block Mamba (d96) trained here on English text plus "
    "code, shipped in the repository.",
    corpus=MIX_CORPUS,
    transformer=TransformerConfig(n_layers=4, d_model=96, n_heads=4, d_mlp=384, n_ctx=256),
    # d_state 64 (not Mamba's default 16): M's recall of a 64-token span is bounded by its state, d_inner x d_state
    # per block; with d_state 16, M (1.33M parameters, untied) reached a natural-text ratio of 0.65 and a random
    # period-64 ratio of 0.53 at 16M tokens (session 6; recipe_trials.json). The embedding is tied, as Mamba-130M's
    # is, which keeps M within 15% of T (1.16M vs 1.24M parameters); measured 0.85x the d_state-16 M's speed. Trained in
    # session 7 alone on the 2 cores (2 threads): 48 min. Held-out natural-text ratio 0.36 (English) / 0.44 (code) for a
    # snippet that opens its row only (0.84 / 0.79 when its first copy starts after 2-48 tokens of its document, T 0.29 /
    # 0.30: zoo_check.natural_ratio_by_prefix, session 17), period-64 check 0.22; still short of the zoo check on the
    # loss (M / T 1.036) and on chapter 5's clean p(B) (0.033), which it predicts only when A is among the first
    # tokens after BOS (zoo_check.prob_B_by_prefix): every tiled row's first copy starts there (T and T2 lean on the
    # same shortcut, less). Tried against it (recipe_trials.json): pair rows
    # by fine-tuning the shipped models (benchmarks/zoo_pb_trials.py), and an M from scratch with tile offsets and pair
    # rows (mamba_tile_offset_max 32, mamba_repeat_pair_frac 0.5; session 10): clean p(B) 0.001 and every induction
    # ratio over 0.5, so neither field is set here. T / T2 from scratch with tile_offset_max 32 (session 12) formed
    # induction over 900 steps later (T2 in the last 100 steps, T not at all; recipe_trials.json): not set either.
    mamba=MambaSize(n_layers=8, d_model=96, d_state=64, tie_embeddings=True),
    train=TrainConfig(tokens=16_000_000, batch_size=64, context=128, lr=2e-3, mamba_lr=5e-3, warmup_steps=200,
                      repeat_frac=0.75, repeat_span=64, repeat_mode="sequence", repeat_min_period=1,
                      repeat_ramp_frac=0.3, repeat_natural_frac=1 / 3, log_every=50, eval_every=100,
                      checkpoint_every=100),
    shipped=True,
    # One L0 target for every SAE (on the v1 zoo a fixed λ = 1 gave 2.2% to 9.1% of the dictionary across layers and
    # families; the λ that reach one L0 differ 12x). 1.5M tokens kept the v1 zoo's 14 SAEs under 20 minutes on 2 cores
    # (18.2 min); the v2 zoo's 28 (twice the blocks) took 20.5 min in session 7's fresh book run. At lr 1e-3 and a 9%
    # target, the v2 zoo's SAEs missed two quality targets: M0's blocks 3-7 reached FVE 0.80-0.75, and M's block 2 an L0
    # of 10.06%. In 732 steps the learning rate is what holds the FVE back (benchmarks/results/sae_quality_trials.json,
    # session 13: M0 block 7 0.748 / 0.886 / 0.915 at lr 1e-3 / 2e-3 / 3e-3; a larger lr also raises the L0), so lr 2e-3
    # with the target at 8%: the four hardest SAEs then reach FVE 0.861-0.970 at L0 7.4-9.2%.
    sae=SAEConfig(expansion_factor=16, l1_coefficient=0.5, l0_target=0.08, l0_gain=0.04,
                  training_tokens=1_500_000, batch_tokens=2048, lr=2e-3, context=128, eval_tokens=50_000, workers=2),
    mppc_tokens=200_000,
)


# hub names of the paper preset's zoo (T2 is Pythia's second pretraining seed)
PAPER_HUB_NAMES = {
    "T": "EleutherAI/pythia-160m",
    "T2": "EleutherAI/pythia-160m-seed1",
    "M": "state-spaces/mamba-130m",
}

_PAPER = Preset(
    name="paper",
    description="The paper's models: Pythia-160M and Mamba-130M from the Hugging Face hub (GPU + internet).",
    corpus=CorpusConfig(
        source="NeelNanda/pile-10k",
        tokenizer="EleutherAI/gpt-neox-20b",
        vocab_size=50277,
        sae_source="NeelNanda/pile-10k",
        mppc_source="Skylion007/openwebtext",
        # no language model is trained at `paper`: 90% of pile-10k for the SAEs, 10% held out; `eval` (MPPC, the
        # SAE metrics, the circuit prompts' checks) reads the first 5,000 OpenWebText documents instead
        splits=(("lm_train", 0.0), ("sae_train", 0.9), ("eval", 0.1)),
    ),
    transformer=TransformerConfig(n_layers=12, d_model=768, n_heads=12, d_mlp=3072, n_ctx=2048,
                                  hub_name=PAPER_HUB_NAMES["T"]),
    mamba=MambaSize(n_layers=24, d_model=768, tie_embeddings=True, hub_name=PAPER_HUB_NAMES["M"]),
    zoo=(
        ("T", "transformer", 0),
        ("T2", "transformer", 1),  # EleutherAI/pythia-160m-seed1
        ("M", "mamba", 0),
    ),
    needs_internet=True,
    eval_tokens=1_000_000,
    # proxies of the authors' library defaults (paper digest 2.2): expansion 32, batch 4096, lr 4e-4. The budget is
    # cut from those defaults (100M+ tokens per SAE) to 10M, with the SAE steps in bf16 autocast, so the 84 SAEs fit
    # one ~3 h Colab session on an A100 (estimated: book/appendix_resources.md; 100M in float32 was 3.3 days there).
    # The cost: 2,441 steps per SAE instead of 24,414, so expect more dead features and a lower reconstruction FVE
    # than the authors' SAEs; the bf16 matmuls of the SAE steps round to 8 mantissa bits (~4e-3 relative).
    # dead_feature_window (in steps) is kept under the step count so the dead-feature statistic means something.
    # The shared forward pass trains 12 SAEs at a time (two passes per model): all 24 of a model at once would hold
    # 23.2 GB (estimated), 12 keep the stage within a 16 GB GPU, for one more forward pass per model.
    sae=SAEConfig(expansion_factor=32, l1_coefficient=5.0, training_tokens=10_000_000, batch_tokens=4096,
                  lr=4e-4, context=1024, n_batches_in_buffer=32, store_batch_rows=8, dead_feature_window=1000,
                  eval_tokens=200_000, autocast=True, shared_max=12),
    hub_models=tuple(PAPER_HUB_NAMES.items()),
    mppc_tokens=1_000_000,
)

_PRESETS = {p.name: p for p in (_SMOKE, _TINY, _PAPER)}

# The Colab T4 plan: the paper's models and data, cut to fit every chapter into one free Colab T4 session (about 3 h,
# estimated: book/appendix_resources.md). A T4 has no bfloat16 tensor cores, so the SAE steps stay float32
# (autocast off), and it is ~2.4x slower than an A100 in float32. What it gives up: dictionaries of 8 x 768 = 6,144
# features instead of 24,576 (fewer, coarser features), 1.5M training tokens per SAE (732 steps of 2,048: a
# demonstration, expect more dead features and a lower FVE), a 250,000-token MPPC sample instead of 1M (noisier
# correlations for rare features), and at most 1,024 induction prompts per sweep (the precision rule decides).
_PAPER_T4 = _PAPER.replace(
    name="paper_t4",
    description="The paper's models on a free Colab T4 in one session: smaller SAEs on fewer tokens, a smaller "
    "MPPC sample (what it gives up: book/appendix_resources.md).",
    sae=dataclasses.replace(_PAPER.sae, expansion_factor=8, training_tokens=1_500_000, batch_tokens=2048,
                            dead_feature_window=500, eval_tokens=100_000, autocast=False),
    mppc_tokens=250_000,
)
_PRESETS[_PAPER_T4.name] = _PAPER_T4
NAMES = NAMES + (_PAPER_T4.name,)


def get(name: "str | Preset" = DEFAULT) -> Preset:
    """The preset called ``name`` (a Preset passes through). Unknown names raise one clear error."""
    if isinstance(name, Preset):
        return name
    if not isinstance(name, str) or name not in _PRESETS:
        raise UniversalityError(
            f"unknown preset {name!r}: choose one of {', '.join(NAMES)} "
            f"(smoke = CI check in minutes, tiny = the CPU reproduction, paper = Pythia-160M/Mamba-130M on a GPU)"
        )
    return _PRESETS[name]


def table() -> list[dict]:
    """One row per preset, for the README and the book."""
    rows = []
    for p in _PRESETS.values():
        rows.append({
            "preset": p.name,
            "transformer": f"{p.transformer.n_layers}L d{p.transformer.d_model}",
            "mamba": f"{p.mamba.n_layers}L d{p.mamba.d_model}",
            "corpus": p.corpus.source if p.corpus.max_files is None
            else f"{p.corpus.source} ({p.corpus.max_files} files)",
            "what for": p.description,
        })
    return rows


def shipped_dir(preset: "str | Preset") -> Path:
    """The folder of a preset's shipped files in the package (``universality_lib/zoo/<name>/``: checkpoints,
    tokenizer, recipe trials). Here, not in ``zoo``, so that ``corpus`` finds the shipped tokenizer without
    importing the zoo above it."""
    return Path(__file__).parent / "zoo" / get(preset).name


def hub_name(preset: "str | Preset", name: str) -> str:
    """The hub repo id (or local folder) that zoo model ``name`` of a hub preset loads from."""
    p = get(preset)
    models = dict(p.hub_models)
    if name not in models:
        have = ", ".join(models) or "none"
        raise UniversalityError(f"preset {p.name!r} loads no published checkpoint for {name!r} (it has: {have}).")
    return models[name]


def with_hub(preset: "str | Preset" = "paper", *, models: dict[str, str] | None = None, tokenizer: str | None = None,
             dataset: str | None = None, sae_dataset: str | None = None, mppc_dataset: str | None = None) -> Preset:
    """A copy of a hub preset (``paper``) whose models, tokenizer or datasets come from other hub repos or from
    local folders. The preset keeps its name, sizes and budgets; caches are keyed by these names, so a copy never
    reuses what the original cached. Everything not given is unchanged.

    ``models``: zoo name -> repo id or folder (a GPT-NeoX ``save_pretrained`` folder for T / T2; a state-spaces,
    HF or HookedMamba folder for M); ``tokenizer``: a tokenizer repo or folder; ``dataset``: the text corpus (a
    `datasets` repo or a local folder of ``*.jsonl`` / ``*.txt`` files with a ``text`` column), also used for SAEs
    and MPPC unless ``sae_dataset`` / ``mppc_dataset`` say otherwise. The tests point the paper preset at tiny
    stand-ins this way::

        p = presets.with_hub("paper", models={"T": neox, "T2": neox_seed1, "M": mamba}, tokenizer=neox,
                             dataset=texts)
        zoo.load(p, "M")  # no hub access
    """
    p = get(preset)
    if not p.needs_internet:
        raise UniversalityError(f"preset {p.name!r} loads no published checkpoints: with_hub applies to 'paper'.")
    hub = dict(p.hub_models)
    for name, repo in (models or {}).items():
        if name not in hub:
            raise UniversalityError(f"unknown model {name!r} for preset {p.name!r}: choose among {', '.join(hub)}")
        hub[name] = str(repo)
    c = p.corpus
    corpus_changes = {}
    if tokenizer is not None:
        corpus_changes["tokenizer"] = str(tokenizer)
    if dataset is not None:
        corpus_changes.update(source=str(dataset), sae_source=str(dataset), mppc_source=str(dataset))
    if sae_dataset is not None:
        corpus_changes["sae_source"] = str(sae_dataset)
    if mppc_dataset is not None:
        corpus_changes["mppc_source"] = str(mppc_dataset)
    return p.replace(
        hub_models=tuple(hub.items()),
        corpus=dataclasses.replace(c, **corpus_changes),
        transformer=dataclasses.replace(p.transformer, hub_name=hub.get("T", p.transformer.hub_name)),
        mamba=dataclasses.replace(p.mamba, hub_name=hub.get("M", p.mamba.hub_name)),
    )
