"""pyproject.toml and environment.yml must pin the same packages at the same versions."""
import re
import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(lines):
    out = {}
    for line in lines:
        m = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^\s;#]+)\s*", line)
        assert m, f"not an exact pin: {line!r}"
        out[_norm(m.group(1))] = m.group(2)
    return out


def test_pyproject_and_environment_yml_agree():
    py = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    want = _pins(py["dependencies"] + py["optional-dependencies"]["test"])
    env_lines = []
    in_pip = False
    for line in (ROOT / "environment.yml").read_text().splitlines():
        if re.match(r"\s*- pip:\s*$", line):
            in_pip = True
            continue
        if in_pip and re.match(r"\s*- ", line):
            env_lines.append(re.sub(r"^\s*- ", "", line).split("#")[0])
    assert _pins(env_lines) == want


def test_torch_is_pinned_to_the_cpu_wheel_version():
    py = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "torch==2.13.0" in py["dependencies"]
    assert any(d.startswith("transformer-lens==3.") for d in py["dependencies"])  # 4.x removed HookedTransformer


def test_ci_calls_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make test" in ci
