"""Results and timings files that are not UTF-8, not JSON or of the wrong shape, and a --results folder that does
not exist: one clear error (the report exits 2, not 1 as for "results missing"), never a traceback."""
import json

import pytest

from universality_lib import report, results
from universality_lib.errors import UniversalityError

GOOD = {"name": "x", "value": 1, "passed": True, "preset": "smoke"}

BAD_RESULTS = {
    "not UTF-8": b'{"records": [{"name": "\xff\xfe"}]}',
    "not JSON": b"{not json",
    "records an object": json.dumps({"records": {"name": "x"}}).encode(),
    "a record a list": json.dumps({"records": [["x", 1]]}).encode(),
    "a name a number": json.dumps({"records": [{**GOOD, "name": 3}]}).encode(),
    "passed a string": json.dumps({"records": [{**GOOD, "passed": "yes"}]}).encode(),
    "claim a number": json.dumps({"records": [{**GOOD, "claim": 1}]}).encode(),
    "nonfinite a number": json.dumps({"records": [{**GOOD, "nonfinite": 3}]}).encode(),
    "nonfinite an odd word": json.dumps({"records": [{**GOOD, "value": None, "nonfinite": "huge"}]}).encode(),
    "chapter a number": json.dumps({"chapter": 5, "records": [GOOD]}).encode(),
}


@pytest.mark.parametrize("how", list(BAD_RESULTS))
def test_a_bad_results_file_is_one_clear_error(tmp_path, capsys, how):
    d = tmp_path / "results"
    d.mkdir()
    (d / "03_features.json").write_bytes(BAD_RESULTS[how])
    with pytest.raises(UniversalityError, match="03_features.json.*delete it and re-run its chapter"):
        results.load_results(d)
    assert report.run("smoke", results=d) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: results file") and err.count("\n") == 1


BAD_TIMINGS = {
    "not UTF-8": b'{"chapters": [{"chapter": "\xff"}]}',
    "a list": b"[]",
    "chapters a string": json.dumps({"chapters": "01"}).encode(),
    "a chapter a string": json.dumps({"chapters": ["01"]}).encode(),
    "seconds a string": json.dumps({"chapters": [{"chapter": "01", "seconds": "abc", "status": "ok"}]}).encode(),
    "executed_at a number": json.dumps({"chapters": [{"chapter": "01", "status": "cached", "executed_at": 3}]}).encode(),
}


@pytest.mark.parametrize("how", list(BAD_TIMINGS))
def test_a_bad_timings_file_is_one_clear_error(tmp_path, capsys, how):
    d = tmp_path / "smoke" / "results"
    d.mkdir(parents=True)
    (d / "01_two_architectures.json").write_text(json.dumps({"records": [GOOD]}))
    (tmp_path / "smoke" / "timings.json").write_bytes(BAD_TIMINGS[how])
    assert report.run("smoke", out=tmp_path) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "timings.json" in err and "re-run the book" in err and err.count("\n") == 1


def test_a_results_folder_that_does_not_exist_is_named(tmp_path, capsys):
    assert report.run("smoke", results=tmp_path / "resluts") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: no such folder {tmp_path / 'resluts'} (--results)") and "run them with" not in err


def test_a_good_file_still_loads(tmp_path):
    d = tmp_path / "results"
    d.mkdir()
    (d / "c.json").write_text(json.dumps({"chapter": "c", "records": [{**GOOD, "value": None, "nonfinite": "nan"}]}))
    (rec,) = results.load_results(d)["c"]
    assert rec["name"] == "x" and rec["value"] != rec["value"]  # NaN restored
