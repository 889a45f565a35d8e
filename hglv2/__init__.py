"""hglv2: Hierarchical Google Landmarks v2 dataset pipeline, SupRank rank losses and hierarchical
retrieval metrics."""

import os

# OpenMP threads (torch's intra-op pool, numba's kernels) spin after each parallel region by default;
# on a machine whose cores are shared this steals the cores the working threads need, and a step
# made of many mid-sized parallel operations varied 10x between processes with 2 threads. Sleeping
# waits cost microseconds per region. Read by libgomp when torch loads: effective when hglv2 is
# imported first (the CLI, the benchmarks); set OMP_WAIT_POLICY=ACTIVE to opt out.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

__all__ = ["__version__"]
