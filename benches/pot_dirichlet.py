#!/usr/bin/env python3
"""POT's sparsity-constrained dual on the stored Dirichlet problem (tests/data/dirichlet_300x200.npz), the
reference that tests/gpu.rs (`sparse_dirichlet_beats_pot`) holds both devices to.

    python3 benches/pot_dirichlet.py

The problem: 300 x 200, 5-D points, Dirichlet(1/2) masses (weights down to ~1e-6), squared-Euclidean cost
scaled to max 1. POT 0.9.7 `ot.smooth.smooth_ot_dual(a, b, C, reg=1.0, reg_type='sparsity_constrained',
max_nz=2)` with its defaults (scipy L-BFGS-B, stopThr 1e-9, 500 iterations); the dual D_k(alpha, beta) =
a.alpha + b.beta - sum_j delta_k(alpha + beta_j - c_j) is evaluated in numpy at the potentials it returns.
"""

import os
import sys

import numpy as np
import ot

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_pot import dual_objective  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

d = np.load(os.path.join(ROOT, "tests", "data", "dirichlet_300x200.npz"))
x, y, a, b = d["x"], d["y"], d["a"], d["b"]
cost = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
cost /= cost.max()
_, log = ot.smooth.smooth_ot_dual(a, b, cost, reg=1.0, reg_type="sparsity_constrained", max_nz=2, log=True)
value = dual_objective(np.asarray(log["alpha"]), np.asarray(log["beta"]), a, b, cost, 2, 1.0)
print(f"POT {ot.__version__}: D_k = {value!r} after {log['res'].nit} L-BFGS-B iterations")
