"""A static page for browsing matched feature pairs across the two architectures.

:func:`pairs_data` gathers, for chosen features of side ``a`` of an MPPC result (T's, in the main condition),
their best match in the other model, MPPC, layers, firing frequencies, the reverse MPPC of the match, any extra
columns (e.g. the complexity measures), and the strongest contexts of both features on the same token rows.
:func:`write_page` writes one self-contained HTML file: the data as JSON inside the page, inline CSS and
JavaScript, nothing fetched from a network or a server, so it works from the built book opened from disk.

In the page a reader filters the pairs (MPPC range, layer of either side, frequency range), sorts them by any
column (click a header), and clicks a pair to see the top contexts of the two features side by side, each token
shaded by the feature's activation relative to the feature's peak in the contexts shown.

Self-test: opening the page with ``?selftest=1`` drives the same controls (sort, filter, select) from the page's
own script and writes what the table then shows into ``<pre id="selftest">`` as JSON, so a headless browser's
``--dump-dom`` output can be checked (tests/test_explorer.py).

In the book: chapter 4 writes the page to ``book/explorer/feature_explorer.html`` (:data:`BOOK_FOLDER`,
:data:`PAGE_NAME`); ``_config.yml`` lists that folder in ``html_extra_path``, so Sphinx copies the page to the
root of the built HTML, next to the ``book/`` folder of the chapter pages.

Glossary: side ``a`` / ``b`` (T / M in the main condition), ``la``, ``ua`` / ``lb``, ``ub`` the layer and feature
index of the two features of a pair, ``freq`` the fraction of the MPPC sample's tokens on which a feature fires.
"""
from __future__ import annotations

import html
import json
import math
from pathlib import Path

import numpy as np

from .errors import UniversalityError
from .similarity.result import side_of

__all__ = ["BOOK_FOLDER", "PAGE_NAME", "BOOK_LINK", "book_page_path", "pair_table", "pairs_data", "write_page",
           "contexts_html", "pair_html"]

BOOK_FOLDER = "explorer"  # relative to the chapter's folder (book/); listed in _config.yml html_extra_path
PAGE_NAME = "feature_explorer.html"
BOOK_LINK = "../" + PAGE_NAME  # from a chapter page (html/book/*.html) to the page at the root of the built HTML
_BASE_COLUMNS = ("la", "ua", "lb", "ub", "mppc", "rev", "freq_a", "freq_b")


def book_page_path(start: str | Path | None = None) -> Path:
    """Where chapter 4 writes the page: ``<book>/explorer/feature_explorer.html``, ``<book>`` being the folder of
    the chapter notebooks: the current folder when it is called ``book`` (the book runner executes a chapter
    there), else its ``book/`` subfolder when it holds ``_toc.yml`` (a clone's root), else the current folder."""
    here = Path(start) if start is not None else Path.cwd()
    if here.name != "book" and (here / "_toc.yml").exists() and (here / "book").is_dir():
        here = here / "book"
    return here / BOOK_FOLDER / PAGE_NAME


def pair_table(result, features=None, side: str = "a"):
    """pandas DataFrame, one row per feature of ``side`` (default: every live one; ``features``: a DataFrame
    with ``layer`` and ``unit`` columns, extra columns kept): its best match (``best_layer``, ``best_index``),
    ``mppc``, ``freq``, the match's frequency ``freq_match`` and the match's own MPPC back (``mppc_back``)."""
    import pandas as pd

    s = side_of(side)
    o = "b" if s == "a" else "a"
    tab = result.table(s)
    tab = tab[tab.live & np.isfinite(tab.mppc)]
    if features is not None:
        tab = pd.merge(features, tab, on=["layer", "unit"], how="inner", suffixes=("", "_result"))
    back = result.best(o)
    tab = tab.reset_index(drop=True)
    tab["freq_match"] = [float(result.freq[(o, int(bl))][int(bi)]) for bl, bi in zip(tab.best_layer, tab.best_index)]
    tab["mppc_back"] = [float(back[int(bl)][0][int(bi)]) for bl, bi in zip(tab.best_layer, tab.best_index)]
    return tab


def _num(x, digits: int = 4):
    x = float(x)
    return None if not math.isfinite(x) else round(x, digits)


def _contexts(sample, layer: int, unit: int, vocab: dict, tokenizer, k: int, before: int, after: int) -> list:
    out = []
    for ex in sample.top_contexts(layer, unit, k=k, before=before, after=after):
        for t in ex["tokens"]:
            if t not in vocab:
                vocab[t] = tokenizer.decode([t]).replace("\n", "⏎")
        out.append({"act": _num(ex["act"]), "tok": [int(t) for t in ex["tokens"]],
                    "val": [_num(v, 3) for v in ex["values"]]})
    return out


def pairs_data(table, sample_a, sample_b, tokenizer, *, name_a: str = "T", name_b: str = "M",
               extra_columns: dict | None = None, k: int = 4, before: int = 10, after: int = 3,
               title: str = "", note: str = "", progress: bool = True) -> dict:
    """The page's data: one pair per row of ``table`` (:func:`pair_table`), the contexts of its ``a`` feature
    from ``sample_a`` and of its match from ``sample_b`` (``FeatureSample`` on the same token rows).
    ``extra_columns``: ``{column of table: label}`` shown, sortable, next to the base columns."""
    from tqdm.auto import tqdm

    extra_columns = dict(extra_columns or {})
    for c in extra_columns:
        if c not in table:
            raise UniversalityError(f"extra column {c!r} is not in the pair table")
    vocab: dict = {}
    pairs = []
    for i, r in enumerate(tqdm(list(table.itertuples(index=False)), desc="explorer pairs", disable=not progress)):
        la, ua, lb, ub = int(r.layer), int(r.unit), int(r.best_layer), int(r.best_index)
        p = {"id": i, "la": la, "ua": ua, "lb": lb, "ub": ub, "mppc": _num(r.mppc), "rev": _num(r.mppc_back),
             "freq_a": _num(r.freq, 6), "freq_b": _num(r.freq_match, 6),
             "ctx_a": _contexts(sample_a, la, ua, vocab, tokenizer, k, before, after),
             "ctx_b": _contexts(sample_b, lb, ub, vocab, tokenizer, k, before, after)}
        for c in extra_columns:
            p[c] = _num(getattr(r, c))
        pairs.append(p)
    labels = {"la": f"{name_a} layer", "ua": f"{name_a} feature", "lb": f"{name_b} layer", "ub": f"{name_b} feature",
              "mppc": "MPPC", "rev": f"MPPC back ({name_b}→{name_a})", "freq_a": f"{name_a} freq",
              "freq_b": f"{name_b} freq", **extra_columns}
    return {"title": title or f"Matched features: {name_a} → {name_b}", "note": note, "name_a": name_a,
            "name_b": name_b, "columns": [[c, labels[c]] for c in (*_BASE_COLUMNS, *extra_columns)],
            "vocab": {str(t): s for t, s in vocab.items()}, "pairs": pairs}


def write_page(data: dict, path: str | Path) -> Path:
    """Write the self-contained HTML page for ``data`` (:func:`pairs_data`) to ``path``; returns the path."""
    if not data.get("pairs"):
        raise UniversalityError("the explorer has no pairs to show")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    blob = blob.replace("</", "<\\/").replace("<!--", "<\\!--")  # cannot close the script element
    page = (_TEMPLATE.replace("__TITLE__", html.escape(data.get("title", "Feature explorer")))
            .replace("__CSS__", _CSS).replace("__JS__", _JS).replace("__DATA__", blob))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path


# ----------------------------------------------------------------------------- the same colouring, in a notebook
def contexts_html(contexts: list, vocab: dict) -> str:
    """Token-shaded HTML of the contexts of one feature (the page's own rendering, for a notebook)."""
    if not contexts:
        return '<div class="ctx"><i>no activation on these rows</i></div>'
    peak = max((v or 0.0) for c in contexts for v in c["val"]) or 1.0
    lines = []
    for c in contexts:
        spans = []
        for t, v in zip(c["tok"], c["val"]):
            alpha = max(0.0, min(1.0, (v or 0.0) / peak))
            s = html.escape(vocab.get(str(t), vocab.get(t, "?")))
            spans.append(f'<span title="{v}" style="white-space:pre;background:rgba(255,120,0,{alpha:.2f})">{s}</span>')
        lines.append(f'<div style="font-family:monospace;margin:2px 0"><small>{c["act"]:.2f}</small> '
                     f'{"".join(spans)}</div>')
    return "".join(lines)


def pair_html(pair: dict, data: dict) -> str:
    """One pair of :func:`pairs_data` as a two-column HTML table (for display in a notebook)."""
    a, b = data["name_a"], data["name_b"]
    head = (f"<b>{a} L{pair['la']} #{pair['ua']}</b> (fires on {pair['freq_a']:.2%})",
            f"<b>{b} L{pair['lb']} #{pair['ub']}</b> (fires on {pair['freq_b']:.2%})")
    cells = [contexts_html(pair["ctx_a"], data["vocab"]), contexts_html(pair["ctx_b"], data["vocab"])]
    return ("<table><tr>" + "".join(f'<td style="vertical-align:top;width:50%;text-align:left">{h}{c}</td>'
                                    for h, c in zip(head, cells)) + "</tr></table>")


# ----------------------------------------------------------------------------- the page
_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>__CSS__</style>
</head>
<body>
<h1 id="title"></h1>
<p id="note"></p>
<form id="filters" onsubmit="return false">
  <label>MPPC from <input id="mppc-min" type="number" step="0.05" value="-1"></label>
  <label>to <input id="mppc-max" type="number" step="0.05" value="1"></label>
  <label><span id="la-label">layer a</span> <select id="layer-a"><option value="">all</option></select></label>
  <label><span id="lb-label">layer b</span> <select id="layer-b"><option value="">all</option></select></label>
  <label>freq from <input id="freq-min" type="number" step="0.001" value="0"></label>
  <label>to <input id="freq-max" type="number" step="0.001" value="1"></label>
  <button id="reset" type="button">reset</button>
  <span id="count"></span>
</form>
<div id="main">
  <div id="table-wrap"><table id="pairs"><thead><tr id="head"></tr></thead><tbody id="body"></tbody></table>
  <p id="more"></p></div>
  <div id="detail"><p>Click a pair to see its top contexts.</p></div>
</div>
<pre id="selftest" hidden></pre>
<script type="application/json" id="explorer-data">__DATA__</script>
<script>__JS__</script>
</body>
</html>
"""

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1em; color: #222; }
h1 { font-size: 1.3em; margin: 0.2em 0; }
#filters { display: flex; flex-wrap: wrap; gap: 0.8em; align-items: center; margin: 0.6em 0;
  padding: 0.5em; background: #f4f4f4; border-radius: 4px; }
#filters input[type=number] { width: 5.5em; }
#count { color: #555; margin-left: auto; }
#main { display: flex; gap: 1em; align-items: flex-start; }
#table-wrap { flex: 0 1 auto; max-width: 62%; max-height: 85vh; overflow: auto; }
#pairs { border-collapse: collapse; font-size: 0.85em; }
#pairs th { position: sticky; top: 0; background: #e8e8e8; cursor: pointer; padding: 3px 6px; white-space: nowrap; }
#pairs th.sorted-asc::after { content: " \\25B2"; }
#pairs th.sorted-desc::after { content: " \\25BC"; }
#pairs td { padding: 2px 6px; text-align: right; border-bottom: 1px solid #eee; }
#pairs tr.pair:hover { background: #fff3e0; cursor: pointer; }
#pairs tr.selected { background: #ffe0b2; }
#detail { flex: 1 1 auto; min-width: 20em; }
#sides { display: grid; grid-template-columns: 1fr 1fr; gap: 1em; }
.side { min-width: 0; }
.side h3 { font-size: 0.95em; }
#detail h2 { font-size: 1.05em; }
.ctx { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 0.85em; margin: 3px 0;
  padding: 2px; border-bottom: 1px dotted #ddd; overflow-wrap: anywhere; }
.ctx small { color: #888; margin-right: 0.5em; }
.tok { white-space: pre-wrap; border-radius: 2px; }
"""

_JS = r"""
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("explorer-data").textContent);
  var PAIRS = DATA.pairs, COLS = DATA.columns, LIMIT = 500;
  var state = { key: "mppc", dir: -1, selected: null };
  var $ = function (id) { return document.getElementById(id); };

  function fmt(key, v) {
    if (v === null || v === undefined) return "–";
    if (key.indexOf("freq") === 0) return (100 * v).toFixed(2) + "%";
    if (Number.isInteger(v) && (key === "la" || key === "ua" || key === "lb" || key === "ub")) return String(v);
    return Number(v).toFixed(3);
  }
  function num(id, dflt) { var v = parseFloat($(id).value); return isNaN(v) ? dflt : v; }
  function filters() {
    return { mppcMin: num("mppc-min", -Infinity), mppcMax: num("mppc-max", Infinity),
             la: $("layer-a").value, lb: $("layer-b").value,
             freqMin: num("freq-min", -Infinity), freqMax: num("freq-max", Infinity) };
  }
  function view() {
    var f = filters();
    var rows = PAIRS.filter(function (p) {
      return p.mppc >= f.mppcMin && p.mppc <= f.mppcMax &&
        (f.la === "" || p.la === +f.la) && (f.lb === "" || p.lb === +f.lb) &&
        p.freq_a >= f.freqMin && p.freq_a <= f.freqMax;
    });
    var k = state.key, d = state.dir;
    rows.sort(function (a, b) {
      var x = a[k], y = b[k];
      if (x === null || x === undefined) return 1;
      if (y === null || y === undefined) return -1;
      return x === y ? a.id - b.id : (x < y ? -d : d);
    });
    return rows;
  }
  function header() {
    var tr = $("head"); tr.textContent = "";
    COLS.forEach(function (c) {
      var th = document.createElement("th");
      th.textContent = c[1]; th.dataset.key = c[0];
      if (c[0] === state.key) th.className = state.dir > 0 ? "sorted-asc" : "sorted-desc";
      th.addEventListener("click", function () { sortBy(c[0]); });
      tr.appendChild(th);
    });
  }
  function render() {
    header();
    var rows = view(), body = $("body");
    body.textContent = "";
    rows.slice(0, LIMIT).forEach(function (p) {
      var tr = document.createElement("tr");
      tr.className = "pair" + (p.id === state.selected ? " selected" : "");
      tr.dataset.id = p.id;
      COLS.forEach(function (c) {
        var td = document.createElement("td");
        td.textContent = fmt(c[0], p[c[0]]); td.dataset.key = c[0];
        td.dataset.value = p[c[0]] === null ? "" : p[c[0]];
        tr.appendChild(td);
      });
      tr.addEventListener("click", function () { select(p.id); });
      body.appendChild(tr);
    });
    $("count").textContent = rows.length + " of " + PAIRS.length + " pairs";
    $("more").textContent = rows.length > LIMIT ? "Showing the first " + LIMIT + "; filter to see others." : "";
    return rows;
  }
  function sortBy(key) {
    if (state.key === key) state.dir = -state.dir; else { state.key = key; state.dir = -1; }
    render();
  }
  function contexts(ctx) {
    var box = document.createElement("div");
    if (!ctx.length) { box.innerHTML = "<p><i>no activation on these rows</i></p>"; return box; }
    var peak = 0;
    ctx.forEach(function (c) { c.val.forEach(function (v) { if (v > peak) peak = v; }); });
    ctx.forEach(function (c) {
      var line = document.createElement("div"); line.className = "ctx";
      var s = document.createElement("small"); s.textContent = Number(c.act).toFixed(2); line.appendChild(s);
      c.tok.forEach(function (t, i) {
        var sp = document.createElement("span"), v = c.val[i] || 0;
        var a = peak > 0 ? Math.max(0, Math.min(1, v / peak)) : 0;
        sp.className = "tok"; sp.textContent = DATA.vocab[String(t)];
        sp.title = "activation " + v; sp.dataset.act = v;
        sp.style.background = "rgba(255,120,0," + a.toFixed(2) + ")";
        line.appendChild(sp);
      });
      box.appendChild(line);
    });
    return box;
  }
  function select(id) {
    state.selected = id;
    var p = PAIRS[id], det = $("detail");
    det.textContent = "";
    var h = document.createElement("h2");
    h.textContent = DATA.name_a + " L" + p.la + " #" + p.ua + "  ↔  " + DATA.name_b + " L" + p.lb + " #" + p.ub +
      "   (MPPC " + fmt("mppc", p.mppc) + ")";
    det.appendChild(h);
    var sides = document.createElement("div"); sides.id = "sides"; det.appendChild(sides);
    [["a", DATA.name_a, p.la, p.ua, p.freq_a, p.ctx_a], ["b", DATA.name_b, p.lb, p.ub, p.freq_b, p.ctx_b]]
      .forEach(function (s) {
        var col = document.createElement("div"); col.className = "side"; col.id = "side-" + s[0];
        var t = document.createElement("h3");
        t.textContent = s[1] + " layer " + s[2] + ", feature " + s[3] + " (fires on " + fmt("freq", s[4]) + ")";
        col.appendChild(t); col.appendChild(contexts(s[5])); sides.appendChild(col);
      });
    render();
  }
  function setup() {
    document.title = DATA.title; $("title").textContent = DATA.title; $("note").textContent = DATA.note || "";
    $("la-label").textContent = DATA.name_a + " layer"; $("lb-label").textContent = DATA.name_b + " layer";
    [["layer-a", "la"], ["layer-b", "lb"]].forEach(function (x) {
      var seen = {};
      PAIRS.forEach(function (p) { seen[p[x[1]]] = 1; });
      Object.keys(seen).map(Number).sort(function (a, b) { return a - b; }).forEach(function (l) {
        var o = document.createElement("option"); o.value = String(l); o.textContent = String(l);
        $(x[0]).appendChild(o);
      });
    });
    ["mppc-min", "mppc-max", "freq-min", "freq-max", "layer-a", "layer-b"].forEach(function (id) {
      $(id).addEventListener("input", render); $(id).addEventListener("change", render);
    });
    $("reset").addEventListener("click", function () {
      $("mppc-min").value = -1; $("mppc-max").value = 1; $("freq-min").value = 0; $("freq-max").value = 1;
      $("layer-a").value = ""; $("layer-b").value = ""; render();
    });
    render();
  }
  // ---- self-test: drive the controls as a reader would, report what the table shows
  function shown(key) {
    return Array.prototype.map.call(document.querySelectorAll("#body tr"), function (tr) {
      var td = tr.querySelector('td[data-key="' + key + '"]');
      return td.dataset.value === "" ? null : Number(td.dataset.value);
    });
  }
  function click(el) { el.dispatchEvent(new MouseEvent("click", { bubbles: true })); }
  function set(id, v) { $(id).value = v; $(id).dispatchEvent(new Event("input", { bubbles: true })); }
  function selftest(q) {
    var out = { n_pairs: PAIRS.length, columns: COLS.map(function (c) { return c[0]; }) };
    var th = function (key) { return document.querySelector('#head th[data-key="' + key + '"]'); };
    out.initial_mppc = shown("mppc");
    click(th("mppc")); out.mppc_after_one_click = shown("mppc");
    click(th("freq_a")); out.freq_a_sorted = shown("freq_a");
    var t = q.get("mppc_min") || "0.5";
    set("mppc-min", t); out.mppc_min = Number(t); out.filtered_mppc = shown("mppc");
    var la = q.get("layer_a") || $("layer-a").options[1].value;
    set("layer-a", la); out.layer_a = Number(la); out.filtered_la = shown("la"); out.filtered_mppc2 = shown("mppc");
    var fmax = q.get("freq_max") || "1";
    set("freq-max", fmax); out.freq_max = Number(fmax); out.filtered_freq = shown("freq_a");
    out.count_text = $("count").textContent;
    click($("reset")); out.after_reset = shown("mppc").length;
    var first = document.querySelector("#body tr"); click(first);
    out.selected_id = Number(first.dataset.id);
    out.detail_title = document.querySelector("#detail h2").textContent;
    ["a", "b"].forEach(function (s) {
      var spans = document.querySelectorAll("#side-" + s + " span.tok");
      out["spans_" + s] = spans.length;
      out["alpha_" + s] = Array.prototype.map.call(spans, function (x) {  // as the browser parsed the colour
        var m = /rgba?\(([^)]*)\)/.exec(x.style.backgroundColor), v = m ? m[1].split(",") : [];
        return v.length === 4 ? Number(v[3]) : (v.length === 3 ? 1 : null);
      });
      out["act_" + s] = Array.prototype.map.call(spans, function (x) { return Number(x.dataset.act); });
      out["text_" + s] = Array.prototype.map.call(spans, function (x) { return x.textContent; }).join("");
    });
    var pre = $("selftest"); pre.textContent = JSON.stringify(out); pre.hidden = false;
  }
  setup();
  var q = new URLSearchParams(window.location.search);
  if (q.get("selftest") === "1") {
    try { selftest(q); } catch (e) { $("selftest").textContent = JSON.stringify({ error: String(e) }); }
  }
})();
"""
