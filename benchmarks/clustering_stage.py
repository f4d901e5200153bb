"""Clustering-stage benchmark (thin entry point; the logic is uda_reid.clustering.benchmark).

    python benchmarks/clustering_stage.py --n 32621 --dim 2048 --floor --json
    python benchmarks/clustering_stage.py --n 12936 --reference

Same options as ``udareid bench clustering``; prints per-step wall time, peak RSS and cluster/outlier
counts as JSON.
"""

import sys

from uda_reid.clustering.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
