"""Command line: ``python -m universality_lib {train,book,info,check,report}``.

* ``train --preset P [--models T T2 M] [--device cuda] [--max-steps N] [--jobs J] [--dest DIR]``: train a preset's
  zoo (resumable: Ctrl-C or a kill keeps the last checkpoint, and the same command continues from it); ``--dest``
  installs the models elsewhere than the preset's zoo (at tiny: beside the shipped ones, not over them).
* ``book --preset P [--out build] [--chapters A B | A,B] [--no-html] [--timeout S] [--kernel K] [--rerun]``:
  execute every chapter with papermill (restoring the unchanged ones from the cache), then build the HTML book
  (:func:`universality_lib.book.build_book`; ``python -m universality_lib.book ...`` is an alias of this).
* ``info --preset P``: the preset, its corpus manifest and its zoo.
* ``check --preset P [--json FILE] [--zoo DIR]``: the zoo's own check (:mod:`universality_lib.zoo_check`: the
  four criteria, each with ``passed``, and clean p(B) by the tokens before the first A) on the preset's trained
  models, or those a ``train --dest DIR`` installed, as chapter 1 shows it; exits 1 when a criterion fails (after
  ``train``: does the retrained zoo pass?).
* ``report --preset P [--out build] [--results DIR] [--markdown]``: the reproduction report (claims C1-C10) from
  the chapters' results files; exits 1 when a chapter's results are missing.

Exit status: 0 done; 1 (report) results missing, (check) a criterion failed; 2 a bad input or an unusable file or folder (one ``error:``
line saying what to do); 130 interrupted (Ctrl-C).
"""
from __future__ import annotations

import argparse
import json
import sys

from . import presets
from .errors import UniversalityError


def _preset_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default=presets.DEFAULT, help=f"one of {', '.join(presets.NAMES)}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m universality_lib", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", help="train a preset's models (resumable)")
    _preset_arg(t)
    t.add_argument("--models", nargs="*", default=None, help="zoo names (default: all)")
    t.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    t.add_argument("--max-steps", type=int, default=None, help="stop after N steps this sitting")
    t.add_argument("--work-dir", default=None, help="where resumable checkpoints go")
    t.add_argument("--jobs", type=int, default=None,
                   help="models trained side by side (default: one per core on a CPU, longest first; 1 on a GPU)")
    t.add_argument("--dest", default=None,
                   help="install the trained models (and the run's record) in this folder instead of the preset's "
                   "zoo: at tiny the shipped models stay; compare them with `check --zoo DEST`")

    b = sub.add_parser("book", help="execute every chapter with papermill and build the HTML book")
    _preset_arg(b)
    b.add_argument("--out", default="build", help="output folder (default: build); results go to OUT/PRESET/")
    b.add_argument("--chapters", nargs="+", default=None,
                   help="notebook stems to run (default: all); comma-separated also works")
    b.add_argument("--no-html", action="store_true", help="execute the notebooks only, skip jupyter-book build")
    b.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds (default: none)")
    b.add_argument("--kernel", default=None, help="a kernelspec name (default: this Python interpreter)")
    b.add_argument("--rerun", action="store_true", help="execute every chapter, even those the cache holds unchanged")
    b.add_argument("--root", default=None, help=argparse.SUPPRESS)  # another book's folder (tests)

    i = sub.add_parser("info", help="show a preset, its corpus and its zoo")
    _preset_arg(i)

    c = sub.add_parser("check", help="the zoo's own check: the four criteria on the trained models")
    _preset_arg(c)
    c.add_argument("--json", default=None, help="also write the rows and the p(B) table to this JSON file")
    c.add_argument("--zoo", default=None, help="check the models in this folder (a `train --dest`) instead of the "
                   "preset's zoo")

    r = sub.add_parser("report", help="the reproduction report: each claim of the paper, held or not")
    from .report import add_arguments as _report_arguments

    _report_arguments(r)

    args = ap.parse_args(argv)
    try:
        if args.cmd == "report":
            from .report import run as _report

            return _report(args.preset, args.out, args.results, args.markdown)
        preset = presets.get(args.preset)
        if args.cmd == "train":
            from . import zoo

            done = zoo.train_models(preset, args.models, device=args.device, work_dir=args.work_dir,
                                    max_steps=args.max_steps, jobs=args.jobs, dest=args.dest)
            for name, dest in done.items():
                print(f"[train] {name}: {dest if dest else 'not finished (resumable)'}")
            if preset.shipped and not args.dest:
                zoo.ship_tokenizer(preset)
        elif args.cmd == "book":
            from .book import build_book

            chapters = None if args.chapters is None else [c.strip() for item in args.chapters
                                                           for c in item.split(",") if c.strip()]
            index = build_book(preset=preset, out=args.out, chapters=chapters, html=not args.no_html,
                               timeout=args.timeout, kernel=args.kernel, root=args.root, reuse=not args.rerun)
            print(f"[book] {index}")
        elif args.cmd == "info":
            from . import corpus, zoo

            out = {"preset": preset.to_dict()}
            if not preset.needs_internet:
                out["corpus"] = corpus.manifest(preset)
                out["zoo"] = {n: str(zoo.model_dir(preset, n)) for n in zoo.names(preset)}
            print(json.dumps(out, indent=2, default=str))
        elif args.cmd == "check":
            return _check(preset, args.json, args.zoo)
    except UniversalityError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted; {_AGAIN.get(args.cmd, 'run the same command again')}.", file=sys.stderr)
        return 130
    return 0


def _check(preset, json_path: str | None, folder: str | None = None) -> int:
    """``check``: load the trained zoo (or the models in ``folder``), print (and write) the criteria and the two
    row-start diagnostics (p(B) and the natural-text ratio by prefix); 1 when a criterion fails."""
    from pathlib import Path

    from . import cache, corpus, zoo, zoo_check

    if preset.needs_internet:
        raise UniversalityError(f"the {preset.name!r} preset loads published checkpoints: the zoo check is for the "
                                f"models this project trains (smoke, tiny)")
    if json_path:  # a bad path is refused before minutes of measuring
        cache.writable_dir(Path(json_path).parent, "the folder of --json", "choose another --json")
    if folder:
        missing = [n for n in zoo.names(preset) if not (Path(folder) / n).is_dir()]
        if missing:
            raise UniversalityError(f"--zoo {folder} has no model folder for {', '.join(missing)}: give the --dest "
                                    f"of a whole `train --preset {preset.name}`")
        tok = corpus.load_tokenizer(preset)
        models = {name: zoo.load_folder(Path(folder) / name, tok).eval() for name in zoo.names(preset)}
    else:
        models = {name: zoo.load(preset, name) for name in zoo.names(preset)}
    rows = zoo_check.criteria(preset, models)
    prefix = zoo_check.prob_B_by_prefix(models, preset)
    moved = zoo_check.natural_ratio_tables(models, preset)
    print(zoo_check.table(rows).to_string(index=False))
    print(f"\nclean p(B) by {prefix.index.name} (a diagnostic, not a criterion):")
    print(prefix.round(3).to_string())
    for kind, table in moved.items():
        print(f"\nnatural-text ratio ({kind}) by {table.index.name} (a diagnostic, not a criterion):")
        print(table.round(3).to_string())
    passed = all(r.passed for r in rows)
    if json_path:
        cache.atomic_write_json(Path(json_path), {
            "preset": preset.name, "passed": passed, "criteria": [r.to_dict() for r in rows],
            "prob_B_by_prefix": {name: {str(k): v for k, v in col.items()} for name, col in prefix.items()},
            "natural_ratio_by_prefix": {kind: {name: {str(k): v for k, v in col.items()} for name, col in t.items()}
                                        for kind, t in moved.items()}})
    print(f"\n[check] {'every criterion passed' if passed else 'a criterion failed'}")
    return 0 if passed else 1


_AGAIN = {  # what Ctrl-C tells the user
    "train": "resume with the same command (it continues from the last checkpoint)",
    "book": "run the same command again (the chapters that finished are restored from the cache)",
}
