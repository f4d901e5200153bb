"""The benchmark scripts, installed as ``uda_reid.benchmarks`` so that ``udareid bench NAME`` runs them
from any installation; each also runs as ``python benchmarks/NAME.py`` in a source checkout."""
