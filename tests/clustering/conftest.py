"""Fixture for the clustering tests: the dense reference implementation, imported by path."""

import importlib.util
from pathlib import Path

import pytest

REFERENCE_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "reference_jaccard.py"


@pytest.fixture(scope="session")
def reference():
    """The dense brute-force implementation in benchmarks/reference_jaccard.py."""
    spec = importlib.util.spec_from_file_location("reference_jaccard", REFERENCE_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
