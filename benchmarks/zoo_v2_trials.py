"""Zoo v2 sizing trials (issue 14): the tokenizer's vocabulary and each candidate model's training speed.

Two measurements on the code + English mix (``presets.MIX_CORPUS``), written to
``benchmarks/results/zoo_v2_trials.json``:

* **vocabulary**: a byte-level BPE at each size, trained on the same sample of ``lm_train`` documents; for each,
  tokens per byte on the held-out code and text, and the share of a candidate Transformer's parameters that the
  embedding and unembedding take. A larger vocabulary shortens sequences (more text per context) but moves
  parameters out of the blocks.
* **speed**: training tokens per second of each candidate (T: Pythia-style, M: twice T's blocks), a few
  optimizer steps at the recipe's batch and context, on this CPU with ``torch.get_num_threads()`` threads.

    python benchmarks/zoo_v2_trials.py [--vocab 4096 8192] [--steps 6] [--skip-vocab]

The machine is shared: the JSON records the load average when each measurement started.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from universality_lib import corpus, presets, zoo
from universality_lib.models.mamba import HookedMamba  # noqa: F401  (import cost outside the timings)

OUT = Path(__file__).parent / "results" / "zoo_v2_trials.json"
CANDIDATES = {  # name: (transformer overrides, mamba overrides)
    "4L/8L d128": (dict(n_layers=4, d_model=128, n_heads=4, d_mlp=512), dict(n_layers=8, d_model=128)),
    "4L/8L d96": (dict(n_layers=4, d_model=96, n_heads=4, d_mlp=384), dict(n_layers=8, d_model=96)),
    # session 7: M's recall is bounded by its state (d_inner x d_state per block); a larger d_state with the
    # embedding tied (as Mamba-130M's is) keeps M within 15% of T's parameters
    "4L/8L d96 N32 tied": (dict(n_layers=4, d_model=96, n_heads=4, d_mlp=384),
                           dict(n_layers=8, d_model=96, d_state=32, tie_embeddings=True)),
    "4L/8L d96 N64 tied": (dict(n_layers=4, d_model=96, n_heads=4, d_mlp=384),
                           dict(n_layers=8, d_model=96, d_state=64, tie_embeddings=True)),
}


def load() -> float:
    return os.getloadavg()[0]


def vocab_trial(p, sizes: list[int], sample_bytes: int) -> list[dict]:
    docs = corpus.documents(p, "lm_train")
    sample, n = [], 0
    for k in sorted(docs, key=lambda d: corpus.hashlib.sha256(d.encode()).digest()):  # a stable, mixed sample
        sample.append(docs[k])
        n += len(docs[k].encode())
        if n >= sample_bytes:
            break
    held = {kind: list(corpus.documents(p, "heldout", kind).values()) for kind in corpus.KINDS}
    rows = []
    for v in sizes:
        t0, l0 = time.time(), load()
        with tempfile.TemporaryDirectory() as d:
            tok = corpus.train_tokenizer(sample, v, d)
        row = {"vocab": v, "train_seconds": round(time.time() - t0, 1), "load": l0, "sample_bytes": n}
        for kind, texts in held.items():
            n_tok = sum(len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"])
            row[f"tokens_per_byte_{kind}"] = round(n_tok / sum(len(t.encode()) for t in texts), 4)
        tc = presets.dataclasses.replace(p.transformer, **next(iter(CANDIDATES.values()))[0])  # the first candidate T
        emb = 2 * v * tc.d_model
        body = tc.n_layers * (4 * tc.d_model ** 2 + 2 * tc.d_model * tc.d_mlp)
        row["embedding_share_T"] = round(emb / (emb + body), 3)
        row["share_of"] = next(iter(CANDIDATES))
        rows.append(row)
        print(row, flush=True)
    return rows


def speed_trial(p, steps: int, only: list[str] | None = None) -> list[dict]:
    tok = corpus.load_tokenizer(presets.get("tiny"))  # speed does not depend on which BPE, only on its size
    rows = []
    for cand, (t_over, m_over) in CANDIDATES.items():
        if only and cand not in only:
            continue
        q = p.replace(transformer=presets.dataclasses.replace(p.transformer, **t_over),
                      mamba=presets.dataclasses.replace(p.mamba, **m_over))
        for name in ("T", "M"):
            model = zoo.build(q, name, tokenizer=tok)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
            x = torch.randint(0, len(tok), (q.train.batch_size, q.train.context))
            l0 = load()
            for i in range(steps + 1):
                if i == 1:
                    t0 = time.time()  # the first step warms up (numba compile, allocator)
                loss = model(x, return_type="loss")
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            dt = (time.time() - t0) / steps
            n_params = sum(t.numel() for t in model.parameters())
            row = {"candidate": cand, "model": name, "params": n_params,
                   "tokens_per_second": round(q.train.batch_size * q.train.context / dt),
                   "batch": q.train.batch_size, "context": q.train.context, "threads": torch.get_num_threads(),
                   "load": l0}
            rows.append(row)
            print(row, flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vocab", type=int, nargs="+", default=[4096, 8192])
    ap.add_argument("--sample-mb", type=float, default=12.0)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--skip-vocab", action="store_true")
    ap.add_argument("--only", nargs="+", choices=list(CANDIDATES), help="measure these candidates only")
    args = ap.parse_args()
    p = presets.get("tiny").replace(corpus=presets.MIX_CORPUS)
    out = json.loads(OUT.read_text()) if OUT.exists() else {}
    out["machine"] = f"{platform.machine()} x{os.cpu_count()} ({platform.system()})"
    if not args.skip_vocab:
        out["vocab"] = vocab_trial(p, args.vocab, int(args.sample_mb * 1e6))
    new = speed_trial(p, args.steps, args.only)
    keep = [r for r in out.get("speed", []) if r["candidate"] not in {r["candidate"] for r in new}]
    out["speed"] = keep + new
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, indent=1) + "\n")
    print("wrote", OUT)


if __name__ == "__main__":
    main()
