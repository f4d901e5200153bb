"""Package metadata a user's environment depends on."""

import re
import tomllib
from pathlib import Path

PYPROJECT = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]


def test_torch_has_no_upper_bound_so_installing_never_downgrades_a_users_torch():
    for requirement in PYPROJECT["dependencies"]:
        if re.match(r"torch(vision)?\b", requirement):
            assert "<" not in requirement and "==" not in requirement, requirement


def test_only_one_faiss_distribution_can_be_installed_by_the_package():
    requirements = PYPROJECT["dependencies"] + [r for extra in PYPROJECT.get("optional-dependencies", {}).values()
                                                for r in extra]
    faiss = [r for r in requirements if r.startswith("faiss")]
    assert len(faiss) == 1, f"faiss-cpu and faiss-gpu both provide the module faiss: {faiss}"
