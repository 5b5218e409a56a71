"""The reproduction report (claims table, CLI exit codes, timings) and the generated resource appendix."""
from __future__ import annotations

import json
import re

import pytest
import torch

from universality_lib import book, presets, report, resources, saes
from universality_lib.cli import main as cli_main
from universality_lib.models import n_params
from universality_lib.models.mamba import HookedMamba, MambaConfig
from universality_lib.results import record

from standins import make_gpt_neox


def _record_claim(claim: report.Claim, chapter: str, passed: bool | None = True, skip: tuple[str, ...] = ()) -> None:
    for i, name in enumerate(claim.verdict):
        if name not in skip:
            record(name, 0.5 + i, chapter=chapter, passed=passed, criterion=f"recorded test of {name}")
    for name in claim.shown:
        record(name, [1, 2.5], chapter=chapter)


def _by_id(rows):
    return {r["id"]: r for r in rows}


# ----------------------------------------------------------------------------- the claim table as data
def test_claim_table_covers_the_digest():
    """The report's table is claims.CLAIMS (its verdict names and their checks: tests/test_claims.py)."""
    ids = [c.id for c in report.CLAIMS]
    assert len(ids) == len(set(ids))
    assert [i for i in ids if i.startswith("C")] == [f"C{k}" for k in range(1, 11)]
    for c in report.CLAIMS:
        assert c.paper and c.source.startswith("[") and c.criterion
        if c.chapter is None:
            assert c.id == "C10" and not c.verdict  # the 2.8B models: not testable here
            continue
        assert re.fullmatch(r"0[1-9]", c.chapter) and c.verdict


def test_statuses_from_results_files(results_env, monkeypatch):
    monkeypatch.setenv("UNIVERSALITY_PRESET", "smoke")
    claims = {c.id: c for c in report.CLAIMS}
    _record_claim(claims["P1"], "01_two_architectures")
    _record_claim(claims["P2"], "01_two_architectures", passed=False)
    _record_claim(claims["P3"], "02_sparse_autoencoders", passed=None)
    _record_claim(claims["C1"], "03_features")
    _record_claim(claims["C2"], "03_features", skip=claims["C2"].verdict)
    rows = _by_id(report.claim_rows(preset="smoke"))
    assert rows["P1"]["status"] == report.HELD and rows["P2"]["status"] == report.NOT_HELD
    assert rows["P3"]["status"] == report.NO_VERDICT
    assert rows["C1"]["status"] == report.HELD
    assert rows["C2"]["status"] == report.MISSING and rows["C2"]["missing"] == list(claims["C2"].verdict)
    assert rows["C3"]["status"] == report.MISSING  # chapter 03 ran but recorded none of C3's names
    assert {rows[i]["status"] for i in ("C4", "C5", "C6", "C7", "C8", "C9")} == {report.NOT_RUN}
    assert rows["C10"]["status"] == report.NOT_TESTABLE
    # this run's numbers, the recorded criterion and the preset come from the files
    c1 = claims["C1"]
    assert rows["C1"]["this_run"] == "; ".join([f"{c1.verdict[0]} = 0.5"] + [f"{n} = [1, 2.5]" for n in c1.shown])
    assert rows["C1"]["criterion"] == f"recorded test of {c1.verdict[0]}" and rows["C1"]["preset"] == "smoke"
    assert rows["C4"]["criterion"] == claims["C4"].criterion and rows["C4"]["this_run"] == ""
    assert _by_id(report.claim_rows(preset="tiny"))["C1"]["preset"] == "smoke (asked for tiny)"
    assert report.missing_chapters() == ["04", "05", "06"]


def test_rendering_escapes_and_lists_every_claim(results_env):
    name = next(c for c in report.CLAIMS if c.id == "C1").verdict[0]
    record(name, 0.25, chapter="03_features", passed=True, criterion="a | b")
    rows = report.claim_rows()
    md = report.to_markdown(rows)
    assert md.count("\n") == len(rows) + 2 and "a \\| b" in md
    text = report.to_text(rows, width=80)
    for r in rows:
        assert f"{r['id']:4} {r['status']:18}" in text
    assert f"{name} = 0.25" in text


@pytest.mark.parametrize("v,out", [(0.123456, "0.123"), (12345, "12,345"), ([0.5, 2], "[0.5, 2]"), (True, "True"),
                                   (float("nan"), "nan"), ("L1H2", "L1H2")])
def test_format_value(v, out):
    assert report.format_value(v) == out


# ----------------------------------------------------------------------------- command line
def test_cli_exits_nonzero_while_a_chapter_is_missing(results_env, capsys, monkeypatch):
    monkeypatch.setenv("UNIVERSALITY_PRESET", "smoke")  # the records say which preset they were recorded at
    for c in report.CLAIMS[:3]:
        _record_claim(c, {"01": "01_two_architectures", "02": "02_sparse_autoencoders"}[c.chapter])
    assert cli_main(["report", "--preset", "smoke", "--results", str(results_env)]) == 1
    out, err = capsys.readouterr()
    assert "P1   held " in out and "C1   not run yet " in out
    assert "no results from chapter(s) 03, 04, 05, 06" in err


def test_cli_exit_zero_when_every_chapter_recorded(results_env, capsys, monkeypatch):
    monkeypatch.setenv("UNIVERSALITY_PRESET", "smoke")
    for c in report.CLAIMS:
        if c.chapter is not None:
            _record_claim(c, f"{c.chapter}_chapter", passed=c.id != "C5")
    (results_env.parent / "timings.json").write_text(json.dumps(
        {"preset": "smoke", "machine": "test box", "chapters": [{"chapter": "01_x", "seconds": 90, "status": "ok"}]}))
    assert cli_main(["report", "--preset", "smoke", "--results", str(results_env), "--markdown"]) == 0
    out = capsys.readouterr().out
    assert "| **C5** |" in out and "**did not hold**" in out and "01_x 1.5 min (ok)" in out
    # a chapter that ran without one of its verdict names fails the command too
    path = results_env / "05_chapter.json"
    data = json.loads(path.read_text())
    data["records"] = [r for r in data["records"] if r["name"] != "T_head_to_logits_ratio"]
    path.write_text(json.dumps(data))
    assert cli_main(["report", "--preset", "smoke", "--results", str(results_env)]) == 1
    assert "claim(s) C6" in capsys.readouterr().err
    assert cli_main(["report", "--preset", "huge", "--results", str(results_env)]) == 2


def test_results_of_another_preset_or_none_are_not_this_presets(results_env, capsys, monkeypatch):
    """Every claim recorded and held at smoke: asked for tiny, no claim holds and the command exits 1; records
    with no preset are flagged too; the flag is printed whole."""
    claims = [c for c in report.CLAIMS if c.chapter is not None]
    monkeypatch.setenv("UNIVERSALITY_PRESET", "smoke")
    for c in claims:
        _record_claim(c, f"{c.chapter}_chapter")
    assert cli_main(["report", "--preset", "smoke", "--results", str(results_env)]) == 0
    capsys.readouterr()
    assert cli_main(["report", "--preset", "tiny", "--results", str(results_env)]) == 1
    out, err = capsys.readouterr()
    assert f"P1   {report.NOT_THIS_PRESET:18} smoke (asked for tiny) " in out and " held " not in out
    assert f"claim(s) {', '.join(c.id for c in claims)}: results in" in err and "another preset than 'tiny'" in err
    rows = _by_id(report.claim_rows(results_env, preset="tiny"))
    assert {rows[c.id]["status"] for c in claims} == {report.NOT_THIS_PRESET}
    # one record without a preset (written outside the book runner) is flagged as well, the others still count
    monkeypatch.delenv("UNIVERSALITY_PRESET")
    p2 = claims[1]  # P2: two verdict names, one of them now re-recorded without a preset
    record(p2.verdict[0], 0.9, chapter=f"{p2.chapter}_chapter", passed=True)
    rows = _by_id(report.claim_rows(results_env, preset="smoke"))
    assert rows[p2.id]["status"] == report.NOT_THIS_PRESET
    assert rows[p2.id]["preset"] == "no preset, smoke (asked for smoke)"
    assert rows[claims[0].id]["status"] == report.HELD
    assert "**not this preset**" in report.to_markdown(list(rows.values()))


def test_default_results_folder_is_the_book_runners(tmp_path, capsys):
    (tmp_path / "smoke" / "results").mkdir(parents=True)
    (tmp_path / "smoke" / "results" / "01_two_architectures.json").write_text(json.dumps(
        {"chapter": "01_two_architectures", "records": [{"name": "param_ratio_M_over_T", "value": 0.9, "passed": True,
                                                         "preset": "smoke"}]}))
    assert cli_main(["report", "--preset", "smoke", "--out", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert str(tmp_path / "smoke" / "results") in out and "param_ratio_M_over_T = 0.9" in out


def test_timings(results_env):
    assert report.load_timings() is None and report.timings_rows(None) == []
    results_env.mkdir(parents=True, exist_ok=True)
    (results_env.parent / "timings.json").write_text(json.dumps(
        {"machine": "m", "chapters": [{"chapter": "01", "seconds": 30, "status": "ok"},
                                      {"chapter": "02", "seconds": 600.0, "status": "failed"},
                                      {"chapter": "03", "seconds": 1.2, "status": "cached", "executed_seconds": 120,
                                       "executed_at": "2026-11-24T10:00:00+00:00"}]}))
    assert report.timings_rows(report.load_timings()) == [
        {"chapter": "01", "minutes": 0.5, "status": "ok", "this run (min)": 0.5},
        {"chapter": "02", "minutes": 10.0, "status": "failed", "this run (min)": 10.0},
        {"chapter": "03", "minutes": 2.0, "status": "cached (ran 2026-11-24)", "this run (min)": 0.02}]


def test_report_page_is_last_in_the_toc():
    pages = [p.relative_to(book.ROOT).as_posix() for p in book.toc_pages()]
    assert pages[-2:] == ["book/appendix_resources.md", "book/99_reproduction_report.ipynb"]


# ----------------------------------------------------------------------------- resource appendix
def test_resource_page_is_generated_and_up_to_date():
    page = (book.ROOT / "book" / "appendix_resources.md").read_text(encoding="utf-8")
    assert page == resources.page("paper"), "regenerate: python -m universality_lib.resources > book/appendix_resources.md"
    assert "**estimated**" in page and all(g.name in page for g in resources.GPUS)


@pytest.mark.parametrize("layers,d,vocab", [(2, 32, 100), (3, 48, 64)])
def test_parameter_formulas_match_real_models(layers, d, vocab):
    hf = make_gpt_neox(vocab, hidden=d, layers=layers, heads=4, intermediate=4 * d)
    assert resources.pythia_params(layers, d, 4 * d, vocab)["total"] == sum(p.numel() for p in hf.parameters())
    for tied in (True, False):
        m = HookedMamba(MambaConfig(d_model=d, n_layers=2 * layers, d_vocab=vocab, tie_embeddings=tied, seed=0))
        assert resources.mamba_params(2 * layers, d, 16, 4, 2, vocab, tied)["total"] == n_params(m)


def test_paper_plan_counts_what_the_library_runs():
    rows = {r["stage"].split(" (")[0]: r for r in resources.plan("paper")}
    assert rows["SAE training"]["count"] == len(saes.jobs("paper")) == 84
    assert rows["SAE training"]["tokens"] == 84 * presets.get("paper").sae.training_tokens
    assert rows["MPPC, dense path"]["count"] == 2 * 12 * 24 + 2 * 12 * 12
    assert all(r["flops"] > 0 and 0 < r["memory_gb"] < 16 for r in rows.values())
    # estimated times scale inversely with the GPU's float32 peak
    assert torch.tensor([g.fp32_tflops for g in resources.GPUS]).diff().gt(0).all()


def _status_cell_edge(page, chromium: str) -> tuple[float, float]:
    """Headless Chromium in a 1,300 px window: the right edge of the claims table's first status cell and the page's
    width (px), written into the DOM by a script on the page."""
    import subprocess

    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1300,900",
           "--host-resolver-rules=MAP * ~NOTFOUND", "--dump-dom", page.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    m = re.search(r'data-edge="([\d.]+) ([\d.]+)"', dom)
    assert m, dom[-2000:]
    return float(m[1]), float(m[2])


def test_claims_table_keeps_the_status_column_on_the_page(tmp_path, chromium):
    """A run's values are long strings with no spaces; with the book's stylesheet they break inside their cell and
    the status column stays within a 1,300 px page. Without it the same table runs off the page (so the check can
    fail)."""
    from universality_lib.book.extension import STATIC, STYLESHEET

    long = ";".join(f"prob_B_M_no_bos_A_later_{i}=0.0123" for i in range(12))  # 400 characters, no space
    rows = [dict(r, this_run=long) for r in report.claim_rows(results={})]
    probe = ("<script>var c = document.querySelector('td[class^=status-]').getBoundingClientRect();"
             "document.body.setAttribute('data-edge', c.right + ' ' + document.documentElement.clientWidth);</script>")
    edges = {}
    for name, css in (("book", (STATIC / STYLESHEET).read_text(encoding="utf-8")), ("none", "")):
        page = tmp_path / f"{name}.html"
        page.write_text(f"<!DOCTYPE html><html><head><style>{css}</style></head><body style='margin:0'>"
                        f"{report.to_html(rows)}{probe}</body></html>", encoding="utf-8")
        edges[name] = _status_cell_edge(page, chromium)
    right, width = edges["book"]
    assert width == pytest.approx(1300, abs=40) and right <= width
    right, width = edges["none"]
    assert right > width
