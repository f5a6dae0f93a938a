"""Times a POT script against the same script with `import sparse_ot as ot_fast`, on one problem, in one run.

    python3 benches/python_vs_pot.py            # n = 500 and 1000
    python3 benches/python_vs_pot.py --n 300    # other sizes

Problem: n x n uniform points in the unit square, squared-Euclidean cost scaled to max 1, uniform
marginals. Each call is POT's default settings on both sides (so each side stops on its own criteria) and
is timed once after a warm-up call on a small problem; the objective compared for the sparse solvers is
the dual D_k(alpha, beta) evaluated in NumPy from each side's potentials (higher is better), for emd and
Sinkhorn the transport cost <T, M> (the same problem: equal up to the tolerance).
"""

import argparse
import datetime
import os
import platform
import time
import warnings

import numpy as np


def problem(n, seed=0):
    rng = np.random.default_rng(seed)
    x, y = rng.random((n, 2)), rng.random((n, 2))
    M = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    M /= M.max()
    return np.full(n, 1 / n), np.full(n, 1 / n), M


def dual_objective(alpha, beta, a, b, M, k, gamma):
    x = np.maximum(alpha[:, None] + beta[None, :] - M, 0.0)
    top = -np.partition(-x, k - 1, axis=0)[:k]
    return float(alpha @ a + beta @ b - (top**2).sum() / (2.0 * gamma))


def timed(f):
    t0 = time.perf_counter()
    out = f()
    return time.perf_counter() - t0, out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[500, 1000])
    opts = ap.parse_args()
    import ot
    import sparse_ot as ot_fast

    warnings.simplefilter("ignore")
    print(f"date (UTC): {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M}")
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"machine: {cpu}, {os.cpu_count()} logical CPUs; python {platform.python_version()}, "
          f"numpy {np.__version__}, POT {ot.__version__}, sparse_ot {ot_fast.__version__}")
    k, gamma, eps = 5, 0.1, 0.01
    print(f"{'n':>5} {'call':<58} {'POT s':>8} {'ours s':>8} {'POT/ours':>8}  objective POT / ours")
    for n in opts.n:
        a, b, M = problem(n)
        a0, b0, M0 = problem(20, 1)
        calls = [
            ("emd(a, b, M)", lambda o: o.emd2(a, b, M), lambda o: o.emd2(a0, b0, M0), None),
            (f"sinkhorn_log(a, b, M, {eps})",
             lambda o: float(np.sum(o.bregman.sinkhorn_log(a, b, M, eps) * M)) if o is ot
             else float(np.sum(o.sinkhorn_log(a, b, M, eps) * M)),
             lambda o: None, None),
            (f"smooth_ot_dual(..., {gamma}, 'sparsity_constrained', max_nz={k})",
             lambda o: o.smooth.smooth_ot_dual(a, b, M, gamma, reg_type="sparsity_constrained", max_nz=k,
                                               log=True)[1],
             lambda o: o.smooth.smooth_ot_dual(a0, b0, M0, gamma, reg_type="sparsity_constrained", max_nz=k),
             "dual"),
            (f"smooth_ot_dual(..., {gamma}, 'l2')",
             lambda o: o.smooth.smooth_ot_dual(a, b, M, gamma, reg_type="l2", log=True)[1],
             lambda o: o.smooth.smooth_ot_dual(a0, b0, M0, gamma, reg_type="l2"), "dual-l2"),
        ]
        for name, call, warm, kind in calls:
            row = []
            for lib in (ot, ot_fast):
                warm(lib)
                seconds, out = timed(lambda: call(lib))
                if kind == "dual":
                    obj = dual_objective(np.asarray(out["alpha"]), np.asarray(out["beta"]), a, b, M, k, gamma)
                elif kind == "dual-l2":
                    obj = dual_objective(np.asarray(out["alpha"]), np.asarray(out["beta"]), a, b, M, n, gamma)
                else:
                    obj = float(out)
                row.append((seconds, obj))
            (tp, op), (to, oo) = row
            print(f"{n:>5} {name:<58} {tp:>8.3f} {to:>8.3f} {tp / to:>8.1f}  {op:.12g} / {oo:.12g}")


if __name__ == "__main__":
    main()
