"""Corpus, tokenizer and the one aligned token stream that every model consumes.

Offline default corpus: the Python standard library source of the running interpreter.

* Files: every ``*.py`` under ``sysconfig.get_paths()["stdlib"]`` that decodes as UTF-8, in sorted
  path order, **test folders included** (they are ordinary Python and add about a third of the text);
  ``site-packages``, ``__pycache__`` and the machine-specific ``_sysconfigdata_*`` files are left out.
* English text (``CorpusConfig.text_sources``): pinned packages of public-domain and freely licensed prose
  and documentation, fetched by name and extracted by :mod:`universality_lib.sources`. A text document's id is
  ``text/<source>/<doc>``, a code document's ``code/<path>`` (plain ``<path>`` when the corpus is code only).
* Mixing weights: in the training splits (``lm_train``, ``sae_train``) each document is read ``weight`` times
  (its source's weight; ``CorpusConfig.code_weight`` for code; a fractional part picks a stable share of the
  documents to read once more), in a stable shuffled order. ``eval`` and ``heldout`` read each document once.
* Splits: a document goes to ``lm_train``, ``sae_train``, ``eval`` or ``heldout`` by a stable hash of its id,
  so the splits are disjoint and identical on every machine with the same Python version. ``heldout`` is
  read by no model and no SAE: it is for the natural-text checks (prose and code reported separately).
* A manifest (file count, bytes, sha256 of the paths and contents) is saved next to anything trained on
  it. Another Python version has a slightly different standard library: the shipped tokenizer and models
  still work, the manifest just differs (``compare_manifest`` says how).

Tokenizer: one byte-level BPE (HF ``tokenizers``), a single special token ``<|endoftext|>`` that is BOS,
EOS and PAD at once, trained on ``lm_train`` and saved as a ``PreTrainedTokenizerFast`` folder, which
TransformerLens can reload.

Token stream: each split is tokenized once into one 1-D array ``[EOT] doc0 [EOT] doc1 ...`` and cached
with its sha256. Rows handed to models are ``[BOS] + (context - 1)`` consecutive stream tokens, so token
``k`` of a row means the same thing for every architecture. Activations of two models may only be
compared on streams whose hashes are equal (``check_same_stream``).

Memo (within one process): :func:`manifest` reads and hashes every document, so its result is kept per corpus,
keyed by :func:`_corpus_key`: the preset's ``CorpusConfig``, the Python version and, for the standard library,
the path, size and modification time of every file the walk sees (plus the pins of the text sources). An edited,
added or removed file changes that key, so a changed corpus is noticed where a re-read would notice it; a hub
corpus is named, not hashed, and not memoised. :func:`token_stream` keeps each stream per cache key (the same key
that names its cache folder) and uses it again while that folder's ``tokens.npy`` is the file it loaded.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from . import cache, hub, sources
from .errors import StreamMismatchError, UniversalityError
from .presets import Preset, get as get_preset, shipped_dir

EOT = "<|endoftext|>"
SPLITS = ("lm_train", "sae_train", "eval", "heldout")
WEIGHTED_SPLITS = ("lm_train", "sae_train")  # the training splits, where mixing weights apply
KINDS = ("code", "text")


# ----------------------------------------------------------------------------- documents
def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _unit(text: str) -> float:
    """A stable number in [0, 1) from the hash of ``text``: the same on every machine."""
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 16**8


def _split_of(relpath: str, splits) -> str:
    u = _unit(relpath)
    acc = 0.0
    for name, frac in splits:
        acc += frac
        if u < acc:
            return name
    return splits[-1][0]


def _stdlib_files(root: Path, include_tests: bool) -> Iterator[tuple[str, str]]:
    """``(relative posix path, full path)`` of every ``*.py`` of the corpus walk under ``root`` (before the UTF-8
    check), in walk order. Plain strings: :func:`_corpus_key` stats every file on each call, and ``pathlib``
    objects cost three times the ``stat`` itself there."""
    top = str(root)
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "__pycache__")
                             and not d.startswith("config-")
                             and (include_tests or d not in ("test", "tests", "idle_test")))
        rel = os.path.relpath(dirpath, top).replace(os.sep, "/")
        for fn in sorted(filenames):
            if fn.endswith(".py") and not fn.startswith("_sysconfigdata"):
                yield (fn if rel == "." else f"{rel}/{fn}"), os.path.join(dirpath, fn)


def stdlib_documents(include_tests: bool = True, max_files: int | None = None) -> dict[str, str]:
    """``{relative path: text}`` of the standard library sources, sorted by path."""
    root = stdlib_root()
    docs: dict[str, str] = {}
    for rel, path in _stdlib_files(root, include_tests):
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (UnicodeDecodeError, OSError):
            continue  # a handful of test files are deliberately not UTF-8
        docs[rel] = text
    docs = dict(sorted(docs.items()))
    if max_files is not None:  # a spread-out, deterministic subset (by path hash), kept in path order
        keep = sorted(docs, key=lambda p: hashlib.sha256(b"subset:" + p.encode()).hexdigest())[:max_files]
        docs = {p: docs[p] for p in sorted(keep)}
    return docs


def hub_documents(name: str, split: str = "train", text_column: str = "text",
                  max_docs: int | None = None) -> dict[str, str]:
    """Documents of a Hugging Face dataset (streamed). Offline gives one clear ``OfflineError``; a local
    folder that is missing or empty says so (online too), before ``datasets`` is asked."""
    problem = hub.local_problem(name, "dataset")
    if problem is not None:
        raise problem
    try:
        import datasets

        ds = datasets.load_dataset(name, split=split, streaming=True)
        docs = {}
        for i, row in enumerate(ds):
            if max_docs is not None and i >= max_docs:
                break
            docs[f"{name}/{i:08d}"] = row[text_column]
        return docs
    except Exception as e:  # datasets raises many different types when offline
        if hub.offline_env() or hub.is_connection_error(e):
            raise hub.offline_error(name, "dataset", e) from e
        raise


def split_names(preset: "str | Preset") -> list[str]:
    """The splits a preset's corpus has (a share in ``CorpusConfig.splits``), in order."""
    return [name for name, _ in get_preset(preset).corpus.splits]


def kind_of(doc_id: str) -> str:
    """``"text"`` for English text from a package source, ``"code"`` for source code."""
    return "text" if doc_id.startswith("text/") else "code"


def doc_weight(doc_id: str, code_weight: float) -> float:
    """How many times a training split reads this document per pass (its source's mixing weight)."""
    return sources.get(doc_id.split("/", 2)[1]).weight if kind_of(doc_id) == "text" else code_weight


def _repeats(doc_id: str, weight: float) -> int:
    """``weight`` as a whole number of reads: the integer part, plus one for a stable share of documents."""
    whole, frac = int(weight), weight - int(weight)
    return whole + (_unit("weight:" + doc_id) < frac)


def weighted_order(docs: dict[str, str], preset: "str | Preset") -> list[str]:
    """The document ids of a training split, each repeated per its weight, in a stable shuffled order."""
    code_weight = get_preset(preset).corpus.code_weight
    reads = [(d, r) for d in docs for r in range(_repeats(d, doc_weight(d, code_weight)))]
    return [d for d, r in sorted(reads, key=lambda dr: hashlib.sha256(f"{dr[0]}#{dr[1]}".encode()).digest())]


def split_source(preset: "str | Preset", split: str) -> str | None:
    """The dataset a split reads when it is not a share of ``CorpusConfig.source``: ``sae_source`` for
    ``sae_train`` and ``mppc_source`` for ``eval`` (the paper: SAEs on a Pile subset, MPPC on OpenWebText), when
    set and different from ``source``; else None."""
    c = get_preset(preset).corpus
    other = {"sae_train": c.sae_source, "eval": c.mppc_source}.get(split)
    return other if other and other != c.source else None


def _check_split(split: str | None, kind: str | None = None) -> None:
    if split is not None and split not in SPLITS:
        raise UniversalityError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
    if kind is not None and kind not in KINDS:
        raise UniversalityError(f"unknown kind {kind!r}: choose one of {', '.join(KINDS)} (or None for both)")


def documents(preset: "str | Preset", split: str | None = None, kind: str | None = None) -> dict[str, str]:
    """The documents of a preset's corpus, optionally only one split and one kind (``code`` / ``text``). A
    split with its own dataset (:func:`split_source`) is that dataset's first ``split_source_max_docs``."""
    p = get_preset(preset)
    c = p.corpus
    _check_split(split, kind)
    own = split_source(p, split) if split is not None else None
    if own is not None:
        return hub_documents(own, c.dataset_split, c.text_column, max_docs=c.split_source_max_docs)
    if c.source == "stdlib":
        docs = stdlib_documents(c.include_tests, c.max_files)
        if c.text_sources:  # the mix: code and English text, told apart by the id's first part
            docs = {f"code/{k}": v for k, v in docs.items()}
            for name in c.text_sources:
                docs.update({f"text/{name}/{k}": v for k, v in sources.documents(name).items()})
            docs = dict(sorted(docs.items()))
    else:
        docs = hub_documents(c.source, c.dataset_split, c.text_column, max_docs=c.max_files)
    if kind is not None:
        docs = {k: v for k, v in docs.items() if kind_of(k) == kind}
    if split is None:
        return docs
    return {k: v for k, v in docs.items() if _split_of(k, c.splits) == split}


def _corpus_key(p: Preset) -> tuple | None:
    """What the documents of ``p`` are a function of, read without reading them: the corpus config, the Python
    version, the text sources' pins and the (path, size, mtime) of every standard-library file the walk sees.
    None for a hub corpus (named, not hashed: never memoised)."""
    c = p.corpus
    if c.source != "stdlib":
        return None
    root = stdlib_root()
    files = []
    for rel, path in _stdlib_files(root, c.include_tests):
        try:
            st = os.stat(path)
        except OSError:
            continue
        files.append((rel, st.st_size, st.st_mtime_ns))
    pins = json.dumps([sources.get(n).spec() for n in c.text_sources], sort_keys=True)
    return (c, platform.python_version(), str(root), pins, hashlib.sha256(repr(files).encode()).hexdigest())


_MANIFESTS: dict[tuple, dict] = {}  # _corpus_key -> manifest (this process)


def manifest(preset: "str | Preset") -> dict:
    """File count, bytes and content hash of the corpus and of each split (memoised per corpus: see the module
    docstring; a copy is returned)."""
    p = get_preset(preset)
    key = _corpus_key(p)
    if key is not None and key in _MANIFESTS:
        return copy.deepcopy(_MANIFESTS[key])
    out = _manifest(p)
    if key is not None:
        _MANIFESTS[key] = copy.deepcopy(out)
    return out


def _manifest(p: Preset) -> dict:
    docs = documents(p)
    out = {"source": p.corpus.source, "python": platform.python_version(),
           "include_tests": p.corpus.include_tests, "max_files": p.corpus.max_files,
           "splits": {}}
    if p.corpus.text_sources:  # the pins of every text source, and the mixing weights
        out["text_sources"] = [sources.get(n).spec() for n in p.corpus.text_sources]
        out["code_weight"] = p.corpus.code_weight
    total = hashlib.sha256()
    names = split_names(p)
    per = {s: hashlib.sha256() for s in names}
    counts = {s: [0, 0] for s in names}
    for path, text in docs.items():
        blob = path.encode() + b"\0" + text.encode() + b"\0"
        total.update(blob)
        s = _split_of(path, p.corpus.splits)
        per[s].update(blob)
        counts[s][0] += 1
        counts[s][1] += len(text.encode())
    out["files"] = len(docs)
    out["bytes"] = sum(c[1] for c in counts.values())
    out["sha256"] = total.hexdigest()
    for s in names:
        out["splits"][s] = {"files": counts[s][0], "bytes": counts[s][1], "sha256": per[s].hexdigest()}
    return out


def compare_manifest(recorded: dict, current: dict) -> list[str]:
    """Human-readable differences between a recorded corpus manifest and the current one."""
    diffs = []
    for key in ("source", "files", "bytes", "sha256", "python"):
        if recorded.get(key) != current.get(key):
            diffs.append(f"{key}: recorded {recorded.get(key)!r}, here {current.get(key)!r}")
    return diffs


# ----------------------------------------------------------------------------- tokenizer
def train_tokenizer(texts, vocab_size: int, folder: str | Path):
    """Train a byte-level BPE on ``texts`` and save it as a reloadable PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT,
                                   pad_token=EOT, unk_token=EOT)
    fast.save_pretrained(str(folder))
    return load_tokenizer_folder(folder)


def load_tokenizer_folder(folder: str | Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def tokenizer_hash(tokenizer) -> str:
    """A hash of the vocabulary and merges: two tokenizers with equal hashes tokenize alike."""
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()[:16]


def tokenizer_folder(preset: "str | Preset") -> Path:
    """Folder of the preset's tokenizer: shipped (tiny), cached (smoke, trained on demand) or hub (paper)."""
    p = get_preset(preset)
    if p.corpus.tokenizer is not None:
        return hub.snapshot(p.corpus.tokenizer, ["*.json", "*.txt", "*.model"], what="tokenizer")
    if p.shipped:
        shipped = shipped_dir(p) / "tokenizer"
        if (shipped / cache.MANIFEST).exists():
            cache.verify_manifest(shipped)
            return shipped
    key = cache.stable_hash({"corpus": manifest(p)["splits"]["lm_train"]["sha256"],
                             "vocab": p.corpus.vocab_size, "v": 1})

    def build(tmp: Path) -> None:
        docs = documents(p, "lm_train")
        train_tokenizer(docs.values(), p.corpus.vocab_size, tmp)

    return cache.cached_folder("tokenizer", key, build)


def load_tokenizer(preset: "str | Preset" = "tiny"):
    """The one tokenizer shared by every model of a preset."""
    return load_tokenizer_folder(tokenizer_folder(preset))


# ----------------------------------------------------------------------------- token stream
def _check_context(context) -> None:
    if isinstance(context, bool) or not isinstance(context, int) or context < 2:
        raise UniversalityError(f"context must be a whole number >= 2 (BOS and at least one text token), "
                                f"got {context!r}")


@dataclass
class TokenStream:
    """One split tokenized into a single 1-D array, with the hash that identifies it."""

    tokens: np.ndarray  # [n_tokens] int32
    split: str
    sha256: str
    bos_id: int

    def __len__(self) -> int:
        return len(self.tokens)

    def rows(self, context: int, n_rows: int | None = None, start: int = 0) -> torch.Tensor:
        """Consecutive, non-overlapping rows ``[BOS] + context-1 tokens``: LongTensor [n_rows, context]."""
        _check_context(context)
        body = context - 1
        available = (len(self.tokens) - start) // body
        if n_rows is None:
            n_rows = available
        if n_rows > available:
            raise UniversalityError(f"the {self.split} stream has {len(self.tokens):,} tokens: not enough for "
                                    f"{n_rows} rows of {context} (from token {start:,}); ask for fewer.")
        chunk = self.tokens[start:start + n_rows * body].reshape(n_rows, body)
        out = np.empty((n_rows, context), dtype=np.int64)
        out[:, 0] = self.bos_id
        out[:, 1:] = chunk
        return torch.from_numpy(out)

    def row_hash(self, context: int, n_rows: int, start: int = 0) -> str:
        """Hash of exactly the tokens ``rows(context, n_rows, start)`` returns (for aligned comparisons)."""
        t = self.rows(context, n_rows, start).numpy()
        return hashlib.sha256(t.tobytes()).hexdigest()[:16]


def token_stream(preset: "str | Preset", split: str = "eval", tokenizer=None, kind: str | None = None) -> TokenStream:
    """The preset's split (optionally one kind, ``code`` or ``text``), tokenized with the preset's tokenizer,
    cached and verified. A training split of a mixed corpus reads each document per its mixing weight."""
    p = get_preset(preset)
    _check_split(split, kind)
    if split not in split_names(p):
        raise UniversalityError(f"the {p.name} corpus has no {split!r} split (it has {', '.join(split_names(p))})")
    tok = tokenizer if tokenizer is not None else load_tokenizer(p)
    c, own = p.corpus, split_source(p, split)
    weighted = bool(c.text_sources) and split in WEIGHTED_SPLITS
    if c.source == "stdlib" and own is None:
        m = manifest(p)  # reads and hashes every document: once
        what = m["splits"][split]["sha256"]  # the split's content hash
        if c.text_sources:
            what = {"split": what, "kind": kind, "weights": m["text_sources"] if weighted else None,
                    "code_weight": c.code_weight if weighted else None}
    else:  # a hub dataset (or a folder) is named, not hashed: everything that picks its documents goes in the key
        what = {"source": own or c.source, "split": split, "own": own is not None,
                "dataset_split": c.dataset_split, "text_column": c.text_column, "max_files": c.max_files,
                "splits": c.splits, "split_source_max_docs": c.split_source_max_docs}
    key = cache.stable_hash({"split": what, "tok": tokenizer_hash(tok), "v": 1})
    memo_key = (str(cache.cache_dir()), key, split, tok.bos_token_id)
    if memo_key in _STREAMS:
        stream, stamp = _STREAMS[memo_key]
        if _stamp(cache.cache_dir() / "tokens" / key) == stamp:
            return TokenStream(tokens=stream.tokens, split=split, sha256=stream.sha256, bos_id=stream.bos_id)

    def build(tmp: Path) -> None:
        docs = documents(p, split, kind)
        eot = tok.convert_tokens_to_ids(EOT)
        ids: list[int] = []
        texts = [docs[d] for d in weighted_order(docs, p)] if weighted else list(docs.values())
        for enc in _encode(tok, texts):
            ids.append(eot)
            ids.extend(enc)
        arr = np.asarray(ids, dtype=np.int32)
        np.save(tmp / "tokens.npy", arr)
        cache.atomic_write_json(tmp / "info.json", {"split": split, "n_tokens": len(arr),
                                                    "tokenizer": tokenizer_hash(tok)})

    folder = cache.cached_folder("tokens", key, build)
    arr = np.load(folder / "tokens.npy")
    stream = TokenStream(tokens=arr, split=split, sha256=hashlib.sha256(arr.tobytes()).hexdigest()[:16],
                         bos_id=tok.bos_token_id)
    stamp = _stamp(folder)
    if stamp is not None:
        _STREAMS[memo_key] = (stream, stamp)
    return TokenStream(tokens=arr, split=split, sha256=stream.sha256, bos_id=stream.bos_id)


def _encode(tok, texts: list[str], batch: int = 256) -> Iterator[list[int]]:
    """The token ids of each text (no special tokens), tokenized ``batch`` texts at a time."""
    for i in range(0, len(texts), batch):
        yield from tok(texts[i:i + batch], add_special_tokens=False)["input_ids"]


_STREAMS: dict[tuple, tuple[TokenStream, tuple]] = {}  # (cache dir, cache key, split, bos) -> (stream, _stamp)


def _stamp(folder: Path) -> tuple | None:
    """(size, mtime, inode) of a stream folder's ``tokens.npy`` and its manifest: a rebuilt or rewritten entry
    changes it. None when the folder is gone."""
    try:
        return tuple((st.st_size, st.st_mtime_ns, st.st_ino)
                     for st in ((folder / "tokens.npy").stat(), (folder / cache.MANIFEST).stat()))
    except OSError:
        return None


def check_same_stream(a: str, b: str, what: str = "activations") -> None:
    """Refuse to compare two things computed on token streams with different hashes."""
    if a != b:
        raise StreamMismatchError(
            f"the two {what} come from different token streams (hash {a} vs {b}): token k must be the same "
            f"token for both models. Collect both from the same corpus split, tokenizer and row layout."
        )


def frequent_tokens(stream: TokenStream, k: int = 1000, exclude: tuple[int, ...] = ()) -> torch.Tensor:
    """The ``k`` most frequent token ids of a stream (special ids excluded): the induction task's vocabulary."""
    counts = np.bincount(stream.tokens, minlength=int(stream.tokens.max()) + 1)
    for i in set(exclude) | {stream.bos_id}:
        if i < len(counts):
            counts[i] = -1
    order = np.argsort(-counts, kind="stable")[:k]
    return torch.from_numpy(order[counts[order] > 0].astype(np.int64))


def describe(preset: "str | Preset") -> dict:
    """A small summary for chapter 1: manifest, vocabulary, stream sizes."""
    p = get_preset(preset)
    tok = load_tokenizer(p)
    out = {"manifest": manifest(p), "vocab_size": len(tok), "python": sys.version.split()[0]}
    out["tokens"] = {s: len(token_stream(p, s, tok)) for s in split_names(p)}
    return out


def mix_table(preset: "str | Preset", split: str = "lm_train", tokenizer=None) -> list[dict]:
    """Chapter 1's corpus table: one row per source of ``split`` (the code, then each English text source) with
    genre, licence, documents, tokens, mixing weight and its share of the tokens a training pass reads
    (tokens x weight; a share of the documents only where the split is not weighted)."""
    p = get_preset(preset)
    tok = tokenizer if tokenizer is not None else load_tokenizer(p)
    docs = documents(p, split)
    weighted = bool(p.corpus.text_sources) and split in WEIGHTED_SPLITS
    groups: dict[str, list[str]] = {}
    for d in docs:
        groups.setdefault("code" if kind_of(d) == "code" else d.split("/", 2)[1], []).append(d)
    rows = []
    for name, ids in groups.items():
        texts = [docs[d] for d in ids]
        n_tok = sum(len(e) + 1 for e in _encode(tok, texts))  # + 1: the EOT before every document (token_stream)
        if name == "code":
            genre, licence = "Python source code (standard library)", "PSF-2.0"
            weight = p.corpus.code_weight
        else:
            src = sources.get(name)
            genre, licence, weight = src.genre, src.licence, src.weight
        rows.append({"source": name, "genre": genre, "licence": licence, "documents": len(ids), "tokens": n_tok,
                     "weight": weight if weighted else 1.0})
    reads = sum(r["tokens"] * r["weight"] for r in rows) or 1
    for r in rows:
        r["share of training reads"] = round(r["tokens"] * r["weight"] / reads, 4)
    return rows


def save_manifest(preset: "str | Preset", folder: str | Path) -> dict:
    m = manifest(preset)
    cache.atomic_write_json(Path(folder) / "corpus_manifest.json", m)
    return m


def load_json(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def iter_batches(stream: TokenStream, batch_size: int, context: int, seed: int,
                 start_step: int = 0) -> Iterator[torch.Tensor]:
    """Endless shuffled batches [batch_size, context] of stream rows; epoch e uses permutation seed+e.

    The order is a pure function of (stream, batch_size, context, seed): resuming at ``start_step``
    yields exactly the batches an uninterrupted run would have seen.
    """
    _check_context(context)
    body = context - 1
    n_rows = len(stream) // body
    if n_rows < batch_size:
        raise UniversalityError(f"the {stream.split} stream ({len(stream):,} tokens) is too small for a batch "
                                f"of {batch_size} x {context}.")
    per_epoch = n_rows // batch_size
    step, perm_epoch, perm = start_step, None, None
    while True:
        epoch, i = divmod(step, per_epoch)
        if epoch != perm_epoch:
            perm_epoch, perm = epoch, np.random.default_rng(seed + epoch).permutation(n_rows)
        idx = perm[i * batch_size:(i + 1) * batch_size]
        starts = idx * body
        out = np.empty((batch_size, context), dtype=np.int64)
        out[:, 0] = stream.bos_id
        out[:, 1:] = stream.tokens[starts[:, None] + np.arange(body)[None, :]]
        yield torch.from_numpy(out)
        step += 1
