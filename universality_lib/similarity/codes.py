"""The units of one token sample, computed once: each (model, layer)'s SAE codes or neurons, chunk by chunk, kept
for every MPPC pass that reads them (issue 15).

When the float64 cross sums of all layer pairs do not fit one pass (``experiments.compute``'s ``max_gb``), the
pairs are split into passes over the tokens. Before, every pass ran the models and the SAE encodes again (216
passes at the paper preset on an 80 GB GPU, 864 on a 4 GB CPU budget); now a unit set that two or more passes
read is computed once, in one encoding pass, and each pass reads it from here:

* **memory** (host RAM): SAE codes as scipy CSR float32, neurons as dense float32, up to ``memory_gb``
  (:func:`default_memory_gb`: a quarter of the machine's RAM);
* **disk**: one ``chunk{i}.npz`` per chunk of rows in a folder of the cache, built by ``cache.building``
  (manifest; verified when reused, rebuilt when corrupt) and keyed by the token rows' hash, the rows per chunk and
  every unit set's content key (model checkpoint hash, SAE cache key, layer) when each has one; else a temporary
  folder in the cache, removed after the passes. ``codes.json`` holds the rows' hash, checked against the
  sources' (``corpus.check_same_stream``) before any pass reads a chunk, and each chunk's token count is checked;
* **not kept** (neither fits): the passes that read it compute it again, as before.

A unit set that one pass reads is not kept: that pass computes it, once. The kept arrays are the ones the passes
used to receive (16-bit values widened exactly to float32, as ``engine._check_chunk`` does), so every back end
sees the same chunks and the statistics are bit for bit those of recomputing (``tests/test_similarity_codes.py``).

Glossary: unit key ``(id(model), units, layer, id(sae))`` names one layer's units of one source in a process; its
content key (a string or None) names them across processes; ``t`` ordinary tokens of a chunk, ``F`` units.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from .. import cache, corpus
from ..errors import UniversalityError

__all__ = ["MODES", "CodeStore", "host_form", "nbytes", "default_memory_gb"]

MODES = ("auto", "memory", "disk", "none")
KIND = "similarity-codes"
_VERSION = 1


def default_memory_gb() -> float:
    """A quarter of this machine's RAM (the float64 cross sums of a pass take their own ``max_gb``)."""
    try:
        return 0.25 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):  # not a POSIX system
        return 4.0


def host_form(x: torch.Tensor, units: str):
    """One layer's units of one chunk [t, F] as kept: scipy CSR (SAE codes) or a numpy array (neurons), float32 or
    float64 (16-bit widened exactly to float32). The engine prepares either form into the same numbers as ``x``."""
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    a = x.detach().cpu().numpy()
    return sp.csr_matrix(a) if units == "sae" else a


def nbytes(v) -> int:
    """Bytes of one kept chunk (CSR: its three arrays)."""
    if sp.issparse(v):
        return int(v.data.nbytes + v.indices.nbytes + v.indptr.nbytes)
    return int(v.nbytes)


def _save_chunk(path: Path, values: dict) -> None:
    """``values`` {j: CSR or array} into one uncompressed npz (``{j}_data`` / ``_indices`` / ``_indptr`` /
    ``_shape`` for CSR, ``{j}_dense`` for arrays)."""
    arrays = {}
    for j, v in values.items():
        if sp.issparse(v):
            arrays.update({f"{j}_data": v.data, f"{j}_indices": v.indices, f"{j}_indptr": v.indptr,
                           f"{j}_shape": np.asarray(v.shape, np.int64)})
        else:
            arrays[f"{j}_dense"] = v
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def _load_chunk(path: Path, ids) -> dict:
    with np.load(path) as z:
        out = {}
        for j in ids:
            if f"{j}_dense" in z.files:
                out[j] = z[f"{j}_dense"]
            else:
                out[j] = sp.csr_matrix((z[f"{j}_data"], z[f"{j}_indices"], z[f"{j}_indptr"]),
                                       shape=tuple(z[f"{j}_shape"]))
    return out


class CodeStore:
    """Kept unit sets of one token sample: ``put`` during the encoding pass, ``chunk(i)`` in every later pass.

    ``plan``: ``{unit key: "memory" | "disk"}``; ``content``: ``{unit key: str | None}`` (a disk folder is a cache
    entry only when every disk unit has a content key); ``stream_sha``: the rows' hash; ``rows_per_chunk`` the rows
    of one chunk."""

    def __init__(self, plan: dict, content: dict, stream_sha: str, rows_per_chunk: int, n_chunks: int):
        self.plan, self.stream_sha, self.n_chunks = dict(plan), stream_sha, n_chunks
        self.memory: dict = {}  # (chunk, unit key) -> kept array
        self.disk_keys = [k for k, where in self.plan.items() if where == "disk"]
        self._ids = {k: j for j, k in enumerate(self.disk_keys)}  # unit key -> its name in the npz files
        self.folder, self.building, self._tmp, self._build, self._final = None, False, None, None, None
        if not self.disk_keys:
            return
        names = [content.get(k) for k in self.disk_keys]
        if all(names):  # a cache entry, reusable by a later run on the same rows and units
            key = cache.stable_hash({"rows": stream_sha, "rows_per_chunk": rows_per_chunk, "n_chunks": n_chunks,
                                     "units": names, "v": _VERSION})
            found = cache.verified_folder(KIND, key)  # None: absent, or corrupt and removed
            if found is not None:
                self.folder = found
                self._check_info()
                return
            self._final = cache.cache_dir() / KIND / key
            self._build = cache.building(self._final)
            self.folder, self.building = self._build.__enter__(), True  # a temporary name until finish()
        else:  # model objects without a content key: a scratch folder of this call
            root = cache.cache_dir() / KIND
            root.mkdir(parents=True, exist_ok=True)
            self._tmp = Path(tempfile.mkdtemp(prefix="scratch-", dir=root))
            self.folder, self.building = self._tmp, True

    # ------------------------------------------------------------------------- filling (the encoding pass)
    def needs(self) -> list:
        """The unit keys the encoding pass must compute (the disk ones only when the folder is being built)."""
        return [k for k, where in self.plan.items() if where == "memory" or self.building]

    def put(self, i: int, values: dict) -> None:
        """Chunk ``i``'s kept arrays ``{unit key: CSR or array}``: memory ones stored, disk ones written."""
        disk = {}
        for k, v in values.items():
            if self.plan.get(k) == "memory":
                self.memory[(i, k)] = v
            elif self.plan.get(k) == "disk" and self.building:
                disk[self._ids[k]] = v
        if disk:
            _save_chunk(self.folder / f"chunk{i:05d}.npz", disk)

    def finish(self) -> None:
        """End of the encoding pass: the disk folder gets ``codes.json`` (and, in the cache, its manifest)."""
        if not self.building:
            return
        cache.atomic_write_json(self.folder / "codes.json", {"stream_sha": self.stream_sha, "n_chunks": self.n_chunks,
                                                             "units": len(self.disk_keys), "v": _VERSION})
        if self._build is not None:  # manifest written, swapped into place
            self._build.__exit__(None, None, None)
            self.folder, self._build = self._final, None
        self.building = False
        self._check_info()

    def _check_info(self) -> None:
        info = json.loads((self.folder / "codes.json").read_text())
        corpus.check_same_stream(info.get("stream_sha"), self.stream_sha, what="kept MPPC units and their sources")
        if info.get("n_chunks") != self.n_chunks or info.get("units") != len(self.disk_keys):
            raise UniversalityError(f"{self.folder}: kept MPPC units for {info.get('n_chunks')} chunks of "
                                    f"{info.get('units')} unit sets, expected {self.n_chunks} of "
                                    f"{len(self.disk_keys)}; delete the folder.")

    # ------------------------------------------------------------------------- reading (every later pass)
    def chunk(self, i: int, t: int, keys) -> dict:
        """``{unit key: kept array [t, F]}`` of chunk ``i`` for the kept ``keys`` (``t``: the chunk's ordinary
        tokens, checked); a disk chunk reads only the arrays of ``keys``."""
        keys = list(keys)
        out = {k: self.memory[(i, k)] for k in keys if self.plan[k] == "memory"}
        on_disk = [k for k in keys if self.plan[k] == "disk"]
        if on_disk:
            got = _load_chunk(self.folder / f"chunk{i:05d}.npz", [self._ids[k] for k in on_disk])
            out.update({k: got[self._ids[k]] for k in on_disk})
        for k, v in out.items():
            if v.shape[0] != t:
                raise UniversalityError(f"kept MPPC units of chunk {i} have {v.shape[0]} tokens, the chunk has {t}: "
                                        f"the cache entry does not match these rows; delete {self.folder}.")
        return out

    def close(self) -> None:
        """Drop the memory entries and remove a scratch folder (a cache entry stays)."""
        self.memory.clear()
        if self._build is not None:  # interrupted while building: the half-built entry is discarded
            self._build.__exit__(UniversalityError, UniversalityError("interrupted"), None)
            self._build = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
