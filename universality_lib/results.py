"""Recorded results: every number the book reports, with the paper claim it tests.

A chapter notebook calls :func:`record` for each number it reports::

    record("top1_max_corr", 0.83, claim="Most T features have a close M counterpart",
           criterion="mean max correlation > 0.5", passed=True)

Each call adds (or, for a name recorded before, replaces) one entry in
``<results dir>/<chapter>.json``. The results directory is ``$UNIVERSALITY_RESULTS_DIR``, else
``./results`` under the current working directory. The chapter is the ``chapter`` argument, else
``$UNIVERSALITY_CHAPTER`` (set by :func:`universality_lib.book.build_book`), else the notebook's
name when it can be found, else ``"misc"``.

:func:`record` returns the value it recorded. Prose shows recorded numbers with :func:`value` / :func:`fmt`,
verdicts with :func:`verdict` / :func:`verdicts`, and :func:`show`, so that no number in the text is typed in
by hand::

    show(f"The mean max correlation is {value('top1_max_corr'):.2f} (the claim {verdict('top1_max_corr')}).")

A paper claim's verdict is recorded by :func:`universality_lib.claims.check`, which adds the ``inputs`` the verdict
was computed from.

The file format (one JSON object per chapter)::

    {"chapter": "03_features", "records": [
        {"name": ..., "value": ..., "claim": ..., "criterion": ..., "passed": true|false|null,
         "unit": ..., "note": ..., "preset": "tiny", "timestamp": "...Z", "version": "...",
         "inputs": {...} (only for a claim's verdict)},
        ...]}

Non-finite floats (NaN, +-inf) are not JSON: they are stored as ``null`` and the entry gets a
``"nonfinite"`` field (``"nan"``, ``"inf"`` or ``"-inf"``; for a list, a mapping from the
flattened index to that word). :func:`value` and :func:`load_results` turn them back into floats.

Writes are atomic (a temporary file in the same folder, then :func:`os.replace`), so a crash never
leaves a half-written file. Chapters run one after another, so there is no cross-process lock.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import numbers
import os
import re
from pathlib import Path
from typing import Any

from .cache import atomic_write_json
from .errors import UniversalityError

__all__ = [
    "record",
    "read_json",
    "load_results",
    "load_chapter",
    "results_dir",
    "current_chapter",
    "get",
    "value",
    "fmt",
    "show",
    "verdict",
    "verdicts",
    "ENV_RESULTS_DIR",
    "ENV_CHAPTER",
    "ENV_PRESET",
]

ENV_RESULTS_DIR = "UNIVERSALITY_RESULTS_DIR"
ENV_CHAPTER = "UNIVERSALITY_CHAPTER"
ENV_PRESET = "UNIVERSALITY_PRESET"
DEFAULT_CHAPTER = "misc"
_CHAPTER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_FORMAT_VERSION = 1


# ----------------------------------------------------------------------------------------------
# where things go


def results_dir(path: str | os.PathLike | None = None) -> Path:
    """The results directory: ``path``, else ``$UNIVERSALITY_RESULTS_DIR``, else ``./results``."""
    if path is not None:
        return Path(path)
    env = os.environ.get(ENV_RESULTS_DIR)
    if env:
        return Path(env)
    return Path.cwd() / "results"


def _notebook_name() -> str | None:
    """The running notebook's stem, when the front end tells us (Jupyter server, VS Code)."""
    candidates: list[str] = []
    try:  # IPython globals set by VS Code / Jupyter server >= 2
        from IPython import get_ipython  # type: ignore

        ip = get_ipython()
        if ip is not None:
            for key in ("__vsc_ipynb_file__", "__session__"):
                v = ip.user_ns.get(key)
                if isinstance(v, str) and v:
                    candidates.append(v)
    except Exception:  # pragma: no cover - IPython missing or odd shell
        pass
    env = os.environ.get("JPY_SESSION_NAME")
    if env:
        candidates.append(env)
    for c in candidates:
        p = Path(c)
        if p.suffix == ".ipynb" and _CHAPTER_RE.match(p.stem):
            return p.stem
    return None


def current_chapter(chapter: str | None = None) -> str:
    """The chapter a record goes to (see the module docstring for the order of precedence)."""
    if chapter is None:
        chapter = os.environ.get(ENV_CHAPTER) or _notebook_name() or DEFAULT_CHAPTER
    if not isinstance(chapter, str) or not _CHAPTER_RE.match(chapter):
        raise UniversalityError(
            f"chapter must be a plain file name (letters, digits, '_', '-', '.'), got {chapter!r}."
        )
    return chapter


def _library_version() -> str:
    try:
        from . import __version__  # type: ignore[attr-defined]

        return str(__version__)
    except Exception:
        pass
    try:
        from importlib.metadata import version

        return version("universality_lib")
    except Exception:
        return "unknown"


# ----------------------------------------------------------------------------------------------
# validation and (de)serialisation of values


def _to_plain(value: Any) -> Any:
    """numpy / torch scalars and arrays -> Python scalars and (nested) lists; others unchanged."""
    if isinstance(value, (bool, int, float, str)):
        return value
    mod = type(value).__module__ or ""
    if mod.startswith(("numpy", "torch", "jax")):
        if hasattr(value, "tolist"):
            return value.tolist()  # 0-d -> scalar, n-d -> nested list
        if hasattr(value, "item"):
            return value.item()
    if isinstance(value, tuple):
        return list(value)
    return value


def _nonfinite_word(x: float) -> str | None:
    return None if math.isfinite(x) else "nan" if math.isnan(x) else "inf" if x > 0 else "-inf"


def _encode_value(name: str, value: Any) -> tuple[Any, Any]:
    """(JSON value, nonfinite flag or None): a non-finite float is stored as null, its flag the word ("nan", "inf",
    "-inf"), or for a list a mapping from the flattened index to the word. Raises UniversalityError on unsupported
    values."""
    value = _to_plain(value)
    if isinstance(value, (bool, str)):
        return value, None
    flags: dict[str, str] = {}
    counter = [0]

    def enc(v: Any, depth: int) -> Any:
        v = _to_plain(v)
        if isinstance(v, list) and depth <= 8:
            return [enc(e, depth + 1) for e in v]
        if isinstance(v, list):
            raise UniversalityError(f"record({name!r}): list nested too deeply.")
        idx = counter[0]
        counter[0] += 1
        if isinstance(v, (bool, numbers.Integral)):
            return v if isinstance(v, bool) else int(v)
        if isinstance(v, numbers.Real):
            word = _nonfinite_word(float(v))
            if word:
                flags[str(idx)] = word
            return None if word else float(v)
        if depth == 0:
            raise UniversalityError(
                f"record({name!r}): value must be a float, int, str, bool or a list of numbers "
                f"(numpy/torch scalars and arrays are converted), got {type(v).__name__}: {v!r}.")
        raise UniversalityError(
            f"record({name!r}): a list value may hold only numbers (or nested lists of "
            f"numbers); element {idx} is {type(v).__name__}: {v!r}.")

    out = enc(value, 0)
    if not isinstance(value, list):
        return out, flags.get("0")
    return out, (flags or None)


def _decode_value(entry: dict) -> Any:
    """The stored value with non-finite floats restored."""
    v, flag = entry.get("value"), entry.get("nonfinite")
    if not flag or isinstance(flag, str):
        return float(flag) if flag else v
    counter = [0]

    def dec(x: Any) -> Any:
        if isinstance(x, list):
            return [dec(e) for e in x]
        counter[0] += 1
        word = flag.get(str(counter[0] - 1))
        return float(word) if word else x

    return dec(v)


# ----------------------------------------------------------------------------------------------
# reading and writing files


def read_json(path: str | os.PathLike, what: str, fix: str) -> Any:
    """The JSON in ``path``. A file that cannot be read, is not UTF-8 or is not JSON is one UniversalityError that
    names ``what`` it is and says ``fix``."""
    try:
        return json.loads(Path(path).read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise UniversalityError(f"{what} {path} is not UTF-8 text ({e.reason} at byte {e.start}); {fix}.") from e
    except json.JSONDecodeError as e:
        raise UniversalityError(f"{what} {path} is not valid JSON ({e}); {fix}.") from e
    except OSError as e:
        raise UniversalityError(f"cannot read {what} {path} ({e.strerror or e}); {fix}.") from e


_NONFINITE = ("nan", "inf", "-inf")


def _record_problem(r: Any) -> str | None:
    """What is wrong with one stored record (None: nothing): the types :func:`record` writes."""
    if not isinstance(r, dict):
        return f"is a {type(r).__name__}, not an object"
    if not isinstance(r.get("name"), str):
        return f"has name {r.get('name')!r}, not a string"
    for field in ("claim", "criterion", "unit", "note", "preset"):
        if not isinstance(r.get(field), (str, type(None))):
            return f"({r['name']!r}) has {field} {r[field]!r}, not a string or null"
    if not isinstance(r.get("passed"), (bool, type(None))):
        return f"({r['name']!r}) has passed {r['passed']!r}, not true, false or null"
    flag = r.get("nonfinite")
    if flag is not None and not (flag in _NONFINITE if isinstance(flag, str) else isinstance(flag, dict)
                                 and all(w in _NONFINITE for w in flag.values())):
        return f"({r['name']!r}) has nonfinite {flag!r}, not one of {', '.join(_NONFINITE)} (or a mapping to them)"
    return None


def _read_file(path: Path) -> dict:
    fix = "delete it and re-run its chapter"
    data = read_json(path, "results file", fix)
    if isinstance(data, list):  # tolerate a bare list of records
        data = {"chapter": path.stem, "records": data}
    if not isinstance(data, dict) or not isinstance(data.get("records"), list):
        raise UniversalityError(f"results file {path} has no 'records' list; {fix}.")
    if not isinstance(data.get("chapter", path.stem), str):
        raise UniversalityError(f"results file {path} has chapter {data['chapter']!r}, not a string; {fix}.")
    for i, r in enumerate(data["records"]):
        problem = _record_problem(r)
        if problem:
            raise UniversalityError(f"results file {path}: record {i} {problem}; {fix}.")
    return data


def record(
    name: str,
    value: Any,
    *,
    claim: str | None = None,
    criterion: str | None = None,
    passed: bool | None = None,
    unit: str | None = None,
    chapter: str | None = None,
    note: str | None = None,
    inputs: dict | None = None,
) -> Any:
    """Record one named result and return ``value`` (so ``x = record("x", f(...))`` reads like an assignment).

    ``value``: float, int, str, bool or a (nested) list of numbers; numpy/torch scalars and arrays
    are converted. NaN / inf are allowed and stored as ``null`` with a ``nonfinite`` flag.
    ``claim``: the paper claim the number tests; ``criterion``: the test in words;
    ``passed``: whether the criterion holds (``None`` when it is not a pass/fail); ``inputs``: the numbers a
    verdict was computed from (JSON; :func:`universality_lib.claims.check` stores them).
    Recording a name again replaces the earlier entry (in place).
    """
    if not isinstance(name, str) or not name.strip() or "\n" in name.strip():
        raise UniversalityError(f"record(): name must be a non-empty string on one line, got {name!r}.")
    name = name.strip()
    stored, flag = _encode_value(name, value)
    if passed is not None:
        if type(passed).__module__.startswith("numpy") and hasattr(passed, "item"):
            passed = passed.item()
        if not isinstance(passed, bool):
            raise UniversalityError(
                f"record({name!r}): passed must be True, False or None, got {type(passed).__name__}: {passed!r}."
            )
    texts = {"claim": claim, "criterion": criterion, "unit": unit, "note": note}
    for field, v in texts.items():
        if not isinstance(v, (str, type(None))):
            raise UniversalityError(f"record(): {field} must be a string or None, got {type(v).__name__}.")
    chapter = current_chapter(chapter)
    entry: dict[str, Any] = {
        "name": name, "value": stored, **texts, "passed": passed, "preset": os.environ.get(ENV_PRESET) or None,
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "version": _library_version(),
    }
    if flag is not None:
        entry["nonfinite"] = flag
    if inputs is not None:
        entry["inputs"] = inputs
    # fail here, not half-way through the write, if something slipped through
    try:
        json.dumps(entry, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise UniversalityError(f"record({name!r}): value or inputs are not JSON-serialisable ({e}).") from e

    path = results_dir() / f"{chapter}.json"
    records = _read_file(path)["records"] if path.exists() else []
    same = [i for i, old in enumerate(records) if old.get("name") == name]
    if same:
        records[same[0]] = entry
    else:
        records.append(entry)
    atomic_write_json(path, {"chapter": chapter, "format": _FORMAT_VERSION, "records": records})
    return value


def load_chapter(chapter: str | None = None, directory: str | os.PathLike | None = None) -> list[dict]:
    """The records of one chapter (an empty list when it has none)."""
    path = results_dir(directory) / f"{current_chapter(chapter)}.json"
    if not path.exists():
        return []
    return _read_file(path)["records"]


def load_results(directory: str | os.PathLike | None = None) -> dict[str, list[dict]]:
    """``{chapter: [record, ...]}`` for every ``*.json`` in the results directory (sorted by chapter).

    Non-finite values are restored to floats in each record's ``"value"``.
    """
    d = results_dir(directory)
    out: dict[str, list[dict]] = {}
    if not d.is_dir():
        return out
    for path in sorted(d.glob("*.json")):
        if path.name.startswith("."):
            continue
        data = _read_file(path)
        chapter = data.get("chapter") or path.stem
        recs = []
        for r in data["records"]:
            r = dict(r)
            r["value"] = _decode_value(r)
            recs.append(r)
        out[chapter] = recs
    return out


def get(name: str, chapter: str | None = None, directory: str | os.PathLike | None = None) -> dict:
    """The stored entry for ``name``: from ``chapter`` (default: the current chapter) first,
    else from the one other chapter that has it."""
    here = current_chapter(chapter)
    for r in load_chapter(here, directory):
        if r.get("name") == name:
            return r
    if chapter is None:
        hits = [(ch, r) for ch, recs in load_results(directory).items() if ch != here for r in recs if r.get("name") == name]
        if len(hits) == 1:
            return hits[0][1]
        if len(hits) > 1:
            chs = ", ".join(ch for ch, _ in hits)
            raise UniversalityError(f"result {name!r} is recorded in several chapters ({chs}); pass chapter=.")
    raise UniversalityError(
        f"no result named {name!r} in chapter {here!r} (results dir {results_dir(directory)}); "
        "record it before using it in prose."
    )


def value(name: str, chapter: str | None = None, directory: str | os.PathLike | None = None) -> Any:
    """The recorded value of ``name`` (NaN/inf restored), for use in prose."""
    return _decode_value(get(name, chapter, directory))


def fmt(name: str, spec: str | None = None, *, unit: bool = True, chapter: str | None = None,
        directory: str | os.PathLike | None = None) -> str:
    """The recorded value of ``name`` as text: ``format(value, spec)`` (default ``.3g`` for
    floats), followed by the recorded unit (unless ``unit=False``)."""
    entry = get(name, chapter, directory)
    v = _decode_value(entry)
    if spec is None:
        spec = ".3g" if isinstance(v, float) else ""
    if isinstance(v, list):
        text = "[" + ", ".join(format(x, spec) if isinstance(x, (int, float)) else str(x) for x in v) + "]"
    else:
        text = format(v, spec)
    u = entry.get("unit")
    if unit and u:
        text = f"{text} {u}" if not u.startswith("%") else f"{text}{u}"
    return text


def verdict(name: str, held: str = "held", failed: str = "did not hold", chapter: str | None = None,
            directory: str | os.PathLike | None = None) -> str:
    """A recorded verdict in prose: ``held`` when ``name`` passed, else ``**failed**`` (bold)."""
    return held if get(name, chapter, directory)["passed"] else f"**{failed}**"


def verdicts(preset: str, chapter: str | None = None, directory: str | os.PathLike | None = None) -> str:
    """Markdown: how many of the chapter's verdicts held at ``preset``, then one line per verdict (claim,
    criterion, value, held or not)."""
    recs = [r for r in load_chapter(chapter, directory) if r.get("passed") is not None]
    lines = [f"- {r['claim']} ({r['criterion']}): "
             f"{fmt(r['name'], '.3g' if isinstance(r['value'], float) else None, chapter=chapter, directory=directory)}"
             f" → **{'held' if r['passed'] else 'did not hold'}**." for r in recs]
    held = sum(r["passed"] for r in recs)
    return f"At the `{preset}` preset, **{held} of {len(recs)}** claims held:\n\n" + "\n".join(lines)


def show(markdown: str) -> None:
    """Display Markdown in a notebook (plain print elsewhere)."""
    try:
        from IPython import get_ipython
        from IPython.display import Markdown, display

        if get_ipython() is not None:
            display(Markdown(markdown))
            return
    except Exception:  # pragma: no cover
        pass
    print(markdown)
