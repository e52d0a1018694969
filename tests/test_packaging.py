"""pyproject.toml and the requirements files (which `make`, CI and conda's requirement.yml install) pin one set."""

from pathlib import Path

import pytest
from packaging.requirements import Requirement

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
REPO = Path(__file__).resolve().parents[1]


def _requirements(name: str) -> dict[str, Requirement]:
    """``name``'s requirements (its ``-r`` includes left out), by lower-case name."""
    lines = (line.split("#")[0].strip() for line in (REPO / name).read_text(encoding="utf-8").splitlines())
    return _by_name(line for line in lines if line and not line.startswith("-r"))


def _by_name(entries) -> dict[str, Requirement]:
    return {req.name.lower(): req for req in map(Requirement, entries)}


def test_pyproject_and_the_requirements_files_pin_the_same_ranges() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert _by_name(project["dependencies"]) == _requirements("requirements.txt")
    assert _by_name(project["optional-dependencies"]["dev"]) == _requirements("requirements-dev.txt")
    assert (REPO / "requirements-dev.txt").read_text(encoding="utf-8").count("-r requirements.txt") == 1
    assert "-r requirements-dev.txt" in (REPO / "requirement.yml").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", ["requirements.txt", "requirements-dev.txt"])
def test_every_pin_is_a_compatible_range(name: str) -> None:
    """A floor the code needs and a ceiling (the next major, or torch's capped release)."""
    for req in _requirements(name).values():
        operators = {spec.operator for spec in req.specifier}
        assert operators & {">=", ">"} and operators & {"<", "<="}, f"{name}: {req}"
