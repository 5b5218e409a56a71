"""The reproduction report: for each of the paper's claims, the criterion, the paper's number, this run's number,
the preset, and whether the claim held.

Built from the chapters' results files (:func:`universality_lib.results.load_results`) and, when the book runner
wrote one, its ``timings.json`` (time per chapter, machine). The book's last page and
``python -m universality_lib report [--preset P]`` print the same table; the command exits non-zero when a
chapter's results are missing.

The claims, their criteria, the paper's numbers and the result names each chapter records are
:data:`universality_lib.claims.CLAIMS` (one :class:`~universality_lib.claims.Claim` each): a claim's verdict names
(every one recorded with ``passed=True`` for "held") and the names shown beside them.

A chapter that has not run (no results file with its prefix) shows "not run yet"; a chapter that ran but did not
record a verdict name shows "missing result" (and the command exits non-zero too). A claim with a record written at
another preset than the one asked for, or at none, shows "not this preset" (the command exits non-zero).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import textwrap
from pathlib import Path
from typing import Any, Sequence

from . import results as _results
from .claims import CLAIMS, Claim
from .errors import UniversalityError

__all__ = ["Claim", "CLAIMS", "HELD", "NOT_HELD", "NOT_RUN", "MISSING", "NO_VERDICT", "NOT_TESTABLE", "NOT_THIS_PRESET",
           "claim_rows", "missing_chapters", "load_timings", "timings_rows", "to_markdown", "to_html", "to_text",
           "format_value", "add_arguments", "run", "main"]

HELD, NOT_HELD, NOT_RUN = "held", "did not hold", "not run yet"
MISSING, NO_VERDICT, NOT_TESTABLE = "missing result", "no verdict", "not testable here"
NOT_THIS_PRESET = "not this preset"  # some of the claim's results were recorded at another preset (or none)


# ----------------------------------------------------------------------------- reading results
def _chapter_records(res: dict[str, list[dict]], prefix: str) -> tuple[list[str], dict[str, dict]]:
    """(chapter names with this number prefix, {result name: record}) from ``load_results`` output."""
    chapters = [ch for ch in sorted(res) if ch.split("_", 1)[0] == prefix]
    by_name: dict[str, dict] = {}
    for ch in chapters:
        for r in res[ch]:
            if isinstance(r, dict) and r.get("name"):
                by_name[r["name"]] = r
    return chapters, by_name


def format_value(v: Any) -> str:
    """A recorded value as short text (3 significant digits for floats)."""
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else format(v, ".3g")
    if isinstance(v, int):
        return format(v, ",d")
    if isinstance(v, list):
        return "[" + ", ".join(format_value(x) for x in v) + "]"
    return str(v)


def claim_rows(directory: str | os.PathLike | None = None, preset: str | None = None,
               results: dict[str, list[dict]] | None = None, claims: Sequence[Claim] = CLAIMS) -> list[dict]:
    """One dict per claim: ``id``, ``claim``, ``chapter``, ``criterion``, ``paper``, ``source``, ``this_run``,
    ``preset``, ``status`` (held / did not hold / not run yet / missing result / no verdict / not testable here /
    not this preset), ``missing`` (verdict names the chapter did not record).

    ``directory``: the results folder (default: :func:`universality_lib.results.results_dir`); ``results``: an
    already loaded ``load_results`` dict instead. ``preset``: the preset asked for; a claim with a record of another
    preset, or of none, gets the status "not this preset" (its verdict says nothing about this preset), and the
    ``preset`` column says what was recorded."""
    res = results if results is not None else _results.load_results(directory)
    rows = []
    for c in claims:
        row = {"id": c.id, "claim": c.title, "chapter": c.chapter, "criterion": c.criterion, "paper": c.paper,
               "source": c.source, "this_run": "", "preset": "", "status": NOT_TESTABLE, "missing": []}
        rows.append(row)
        if c.chapter is None:
            continue
        chapters, recs = _chapter_records(res, c.chapter)
        if not chapters:
            row["status"] = NOT_RUN
            continue
        found = [n for n in (*c.verdict, *c.shown) if n in recs]
        row["this_run"] = "; ".join(f"{n} = {format_value(recs[n].get('value'))}" for n in found)
        criteria = [recs[n]["criterion"] for n in c.verdict if n in recs and recs[n].get("criterion")]
        if criteria:
            row["criterion"] = "; ".join(dict.fromkeys(criteria))
        recorded = {recs[n].get("preset") or None for n in found}
        foreign = preset is not None and bool(recorded - {preset})
        row["preset"] = ", ".join(sorted(str(x) if x else "no preset" for x in recorded if x or foreign))
        if foreign:
            row["preset"] += f" (asked for {preset})"
        row["missing"] = [n for n in c.verdict if n not in recs]
        passed = [recs[n].get("passed") for n in c.verdict if n in recs]
        if foreign:
            row["status"] = NOT_THIS_PRESET
        elif row["missing"]:
            row["status"] = MISSING
        elif any(p is False for p in passed):
            row["status"] = NOT_HELD
        elif all(p is True for p in passed):
            row["status"] = HELD
        else:
            row["status"] = NO_VERDICT
    return rows


def missing_chapters(directory: str | os.PathLike | None = None, results: dict[str, list[dict]] | None = None,
                     claims: Sequence[Claim] = CLAIMS) -> list[str]:
    """The chapter prefixes the claim table needs that have no results file (in book order)."""
    res = results if results is not None else _results.load_results(directory)
    need = dict.fromkeys(c.chapter for c in claims if c.chapter is not None)
    return [ch for ch in need if not _chapter_records(res, ch)[0]]


# ----------------------------------------------------------------------------- timings
def load_timings(directory: str | os.PathLike | None = None) -> dict | None:
    """The book runner's ``timings.json`` beside the results folder (``<out>/<preset>/timings.json``), or None."""
    path = _results.results_dir(directory).resolve().parent / "timings.json"
    if not path.exists():
        return None
    fix = "re-run the book to rewrite it"
    timings = _results.read_json(path, "timings file", fix)
    chapters = timings.get("chapters", []) if isinstance(timings, dict) else None
    if not isinstance(chapters, list) or not all(
            isinstance(c, dict) and isinstance(c.get("executed_at", ""), str) and all(
                isinstance(c.get(k), (int, float, type(None))) for k in ("seconds", "executed_seconds"))
            for c in chapters):
        raise UniversalityError(f"timings file {path} is not the book runner's (an object with a 'chapters' list of "
                                f"{{'chapter', 'seconds', 'status'}} objects); {fix}.")
    return timings


def timings_rows(timings: dict | None) -> list[dict]:
    """One dict per chapter of the run: chapter, minutes (the time it took to execute: in this run, or when it
    ran if this run restored it from the cache), status (``ok``, ``failed``, or ``cached``) and the minutes this
    run spent on it (empty without timings)."""
    if not timings:
        return []
    rows = []
    for c in timings.get("chapters", []):
        cached = c.get("status") == "cached"
        took = c.get("executed_seconds") if cached else c.get("seconds")
        rows.append({"chapter": c.get("chapter"), "minutes": round(float(took or 0.0) / 60, 2),
                     "status": f"cached (ran {c.get('executed_at', '?')[:10]})" if cached else c.get("status"),
                     "this run (min)": round(float(c.get("seconds") or 0.0) / 60, 2)})
    return rows


# ----------------------------------------------------------------------------- rendering
# how each status stands out: "strong" (bold) for a failure, "em" (italic) for a row with no run, "" plain
_EMPHASIS = {HELD: "", NOT_HELD: "strong", NOT_RUN: "em", MISSING: "strong", NO_VERDICT: "", NOT_TESTABLE: "em",
             NOT_THIS_PRESET: "strong"}
_MD_MARK = {"": "", "strong": "**", "em": "*"}
_STATUS_MARK = {s: f"{_MD_MARK[e]}{s}{_MD_MARK[e]}" for s, e in _EMPHASIS.items()}


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(rows: list[dict]) -> str:
    """The claims as a Markdown table (for the book's last page)."""
    head = "| | claim | criterion | paper (source) | this run | preset | status |\n|---|---|---|---|---|---|---|\n"
    body = "".join(
        f"| **{r['id']}** | {_md_cell(r['claim'])} | {_md_cell(r['criterion'])} | "
        f"{_md_cell(r['paper'])} ({_md_cell(r['source'])}) | {_md_cell(r['this_run'] or '-')} | "
        f"{_md_cell(r['preset'] or '-')} | {_STATUS_MARK.get(r['status'], r['status'])} |\n" for r in rows)
    return head + body


# the columns of the HTML table, with their headings (the order they appear in)
COLUMNS = {"id": "", "claim": "claim", "criterion": "criterion", "paper": "paper (source)", "this_run": "this run",
           "preset": "preset", "status": "status"}


def to_html(rows: list[dict], columns: Sequence[str] = tuple(COLUMNS)) -> str:
    """The claims as an HTML ``<table class="claims">``, one body row per claim (for the book's pages, where a
    Markdown table printed by a cell is not parsed as a table). ``columns``: some of :data:`COLUMNS`, in order."""
    import html

    unknown = [c for c in columns if c not in COLUMNS]
    if unknown or not columns:
        raise UniversalityError(f"report.to_html: columns must be some of {list(COLUMNS)}, got {list(columns)}.")

    def cell(r: dict, c: str) -> str:
        if c == "id":
            return f'<th scope="row">{html.escape(r["id"])}</th>'
        if c == "status":
            tag, text = _EMPHASIS.get(r["status"], ""), html.escape(r["status"])
            slug = r["status"].replace(" ", "-")
            return f'<td class="status-{slug}">' + (f"<{tag}>{text}</{tag}>" if tag else text) + "</td>"
        text = f"{r['paper']} ({r['source']})" if c == "paper" else (r[c] or "-")
        attr = ' class="this-run"' if c == "this_run" else ""  # long values with no spaces (the book's stylesheet)
        return f"<td{attr}>{html.escape(str(text))}</td>"

    head = "".join(f'<th scope="col">{html.escape(COLUMNS[c])}</th>' for c in columns)
    body = "".join("<tr>" + "".join(cell(r, c) for c in columns) + "</tr>\n" for r in rows)
    return f'<table class="claims">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>'


def to_text(rows: list[dict], width: int = 100) -> str:
    """The claims for a terminal: a summary table, then one block per claim."""
    w = max([8] + [len(r["preset"]) for r in rows])  # the preset column, never cut ("smoke (asked for tiny)")
    out = [f"{'':4} {'status':18} {'preset':{w}} claim", f"{'':4} {'-' * 18} {'-' * w} {'-' * 40}"]
    for r in rows:
        out.append(f"{r['id']:4} {r['status']:18} {r['preset'] or '-':{w}} {r['claim']}")
    out.append("")
    wrap = lambda label, text: textwrap.fill(str(text), width=width, initial_indent=f"     {label:10}",  # noqa: E731
                                             subsequent_indent=" " * 15)
    for r in rows:
        out.append(f"{r['id']:4} {r['claim']}  [{r['status']}]")
        out.append(wrap("criterion", r["criterion"]))
        out.append(wrap("paper", f"{r['paper']} {r['source']}"))
        if r["this_run"]:
            out.append(wrap("this run", r["this_run"]))
        if r["missing"]:
            out.append(wrap("missing", ", ".join(r["missing"])))
        out.append("")
    return "\n".join(out)


# ----------------------------------------------------------------------------- command line
def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The report's options (shared by ``python -m universality_lib report`` and ``-m universality_lib.report``)."""
    from . import presets

    ap.add_argument("--preset", default=presets.DEFAULT, help=f"one of {', '.join(presets.NAMES)}")
    ap.add_argument("--out", default="build", help="the book runner's output folder (results in OUT/PRESET/results)")
    ap.add_argument("--results", default=None, help="a results folder (overrides --out)")
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table instead")


def run(preset: str, out: str | os.PathLike = "build", results: str | os.PathLike | None = None,
        markdown: bool = False) -> int:
    """Print the report; return the exit status: 0 when every chapter the claims need recorded its verdict
    names at this preset, 1 when a chapter's results (or a verdict name) are missing or were recorded at another
    preset, 2 for bad input."""
    from . import presets

    try:
        p = presets.get(preset)
        directory = Path(results) if results else Path(out) / p.name / "results"
        if results and not directory.is_dir():
            raise UniversalityError(f"no such folder {directory} (--results): give the folder the book wrote the "
                                    f"results to, e.g. {Path(out) / p.name / 'results'}.")
        res = _results.load_results(directory)
        rows = claim_rows(results=res, preset=p.name)
        missing = missing_chapters(results=res)
        timings = load_timings(directory)
    except UniversalityError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"Reproduction report: preset {p.name!r}, results in {directory}\n")
    print(to_markdown(rows) if markdown else to_text(rows))
    t = timings_rows(timings)
    if t:
        print("time per chapter: " + ", ".join(f"{r['chapter']} {r['minutes']} min ({r['status']})" for r in t))
    incomplete = [r["id"] for r in rows if r["status"] == MISSING]
    foreign = [r["id"] for r in rows if r["status"] == NOT_THIS_PRESET]
    if missing:
        print(f"error: no results from chapter(s) {', '.join(missing)} in {directory}: run them with "
              f"`python -m universality_lib book --preset {p.name}`.", file=sys.stderr)
    if incomplete:
        print(f"error: claim(s) {', '.join(incomplete)}: their chapter ran but did not record every verdict name "
              f"(see the 'missing' lines above).", file=sys.stderr)
    if foreign:
        print(f"error: claim(s) {', '.join(foreign)}: results in {directory} were recorded at another preset than "
              f"{p.name!r}, or at none (see the preset column), so they say nothing about {p.name!r}: run the book "
              f"at it (`python -m universality_lib book --preset {p.name}`), or ask for the preset they were "
              f"recorded at (--preset).", file=sys.stderr)
    return 1 if (missing or incomplete or foreign) else 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m universality_lib.report [--preset P] [--out build] [--results DIR] [--markdown]``."""
    ap = argparse.ArgumentParser(prog="python -m universality_lib report", description=__doc__.splitlines()[0])
    add_arguments(ap)
    args = ap.parse_args(argv)
    return run(args.preset, args.out, args.results, args.markdown)


if __name__ == "__main__":
    sys.exit(main())
