#!/usr/bin/env python3
"""Times sparse-ot's CPU solvers against POT 0.9.7 on the same problems, interleaved, and prints a table.

    python3 benches/compare_pot.py            # full run (a few minutes)
    python3 benches/compare_pot.py --quick    # smaller sizes, one round
    python3 benches/compare_pot.py --only sparse --sizes 1000   # one table, chosen sizes

Problems: n = m uniform points in [0,1]^2 (numpy default_rng, fixed seed), squared-Euclidean cost scaled to
max 1, uniform marginals. Each is saved as .npz and solved by `examples/bench_cpu.rs` (built in release).

* Sinkhorn (log domain, eps = 0.01): time per iteration at a fixed iteration count on both sides. POT:
  `ot.bregman.sinkhorn_log(a, b, C, eps, numItermax=N, stopThr=0)`; ours: tol 0, max_iter N, no eps-scaling.
  Both sides report (t(N) - t(2)) / (N - 2), so setup and plan assembly cancel.
* Sparsity-constrained dual (k = 5, gamma = 0.1): full solve with each side's defaults. POT:
  `ot.smooth.smooth_ot_dual(a, b, C, reg=0.1, reg_type='sparsity_constrained', max_nz=5, log=True)`
  (scipy L-BFGS-B, stopThr 1e-9, 500 iterations); ours: `SparseOt::new(5, 0.1).formulation(Dual)` (tol 1e-9,
  1000 iterations). The objective is compared on one footing: the dual D_k(alpha, beta) = a.alpha + b.beta -
  sum_j delta_k(alpha + beta_j - c_j) evaluated here, in numpy, at the potentials each side returns.

Rounds alternate POT and ours; the best (minimum) time of each side is reported, which is the least disturbed
by other load on the machine; the load average is printed too.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POT_VERSION = "0.9.7"


def ensure_pot():
    try:
        import ot  # noqa: F401

        if ot.__version__ == POT_VERSION:
            return
    except ImportError:
        pass
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", f"pot=={POT_VERSION}"])


def build_example():
    subprocess.check_call(
        ["cargo", "build", "--release", "--quiet", "--example", "bench_cpu"], cwd=ROOT
    )
    meta = json.loads(
        subprocess.check_output(["cargo", "metadata", "--format-version", "1", "--no-deps"], cwd=ROOT)
    )
    return os.path.join(meta["target_directory"], "release", "examples", "bench_cpu")


def make_problem(n, seed, path):
    import numpy as np

    rng = np.random.default_rng(seed)
    x, y = rng.random((n, 2)), rng.random((n, 2))
    cost = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    cost /= cost.max()
    a = np.full(n, 1.0 / n)
    b = np.full(n, 1.0 / n)
    np.savez(path, a=a, b=b, cost=cost)
    return a, b, cost


def dual_objective(alpha, beta, a, b, cost, k, gamma):
    """D_k(alpha, beta) of docs/MATH.md §2.1 (independent of the tie rule)."""
    import numpy as np

    x = np.maximum(alpha[:, None] + beta[None, :] - cost, 0.0)
    top = -np.partition(-x, k - 1, axis=0)[:k]
    return float(alpha @ a + beta @ b - (top**2).sum() / (2.0 * gamma))


def ours(exe, args):
    out = subprocess.check_output([exe] + [str(v) for v in args], cwd=ROOT, text=True)
    return json.loads(out.strip().splitlines()[-1])


def pot_sinkhorn_per_iter(a, b, cost, eps, iters):
    import ot

    def run(n):
        t0 = time.perf_counter()
        ot.bregman.sinkhorn_log(a, b, cost, eps, numItermax=n, stopThr=0.0, warn=False)
        return time.perf_counter() - t0

    base = 2
    return (run(iters) - run(base)) / (iters - base)


def pot_sparse_dual(a, b, cost, k, gamma):
    import ot

    t0 = time.perf_counter()
    plan, log = ot.smooth.smooth_ot_dual(
        a, b, cost, reg=gamma, reg_type="sparsity_constrained", max_nz=k, log=True
    )
    seconds = time.perf_counter() - t0
    return seconds, plan, log


def machine():
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return model


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, one round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", choices=["sinkhorn", "sparse"], help="run one of the two tables")
    ap.add_argument("--sizes", type=int, nargs="+", help="problem sizes n (instead of the defaults)")
    opts = ap.parse_args()
    ensure_pot()
    import numpy as np
    import ot
    import scipy

    exe = build_example()
    rounds = 1 if opts.quick else opts.rounds
    sink_sizes = [500, 1000] if opts.quick else [500, 1000, 2000]
    sparse_sizes = [200, 500] if opts.quick else [200, 500, 1000]
    if opts.sizes:
        sink_sizes = sparse_sizes = opts.sizes
    if opts.only == "sparse":
        sink_sizes = []
    elif opts.only == "sinkhorn":
        sparse_sizes = []
    eps, k, gamma = 0.01, 5, 0.1
    load0 = os.getloadavg()
    print(f"date (UTC): {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M}")
    print(f"machine: {machine()}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.machine()}")
    print(f"python {platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}, POT {ot.__version__}")
    print(f"load average at start: {load0[0]:.1f} {load0[1]:.1f} {load0[2]:.1f}; rounds: {rounds}")
    print()

    with tempfile.TemporaryDirectory() as tmp:
        print(f"## Log-domain Sinkhorn, eps = {eps}, time per iteration (ms), best of {rounds}")
        print()
        print("| n = m | POT sinkhorn_log (f64) | ours F64 | ours F32 | POT / F64 | POT / F32 |")
        print("|---|---|---|---|---|---|")
        for n in sink_sizes:
            path = os.path.join(tmp, f"sink{n}.npz")
            a, b, cost = make_problem(n, opts.seed, path)
            pot_iters = max(6, min(40, int(2e8 / (n * n))))
            our_iters = max(20, min(200, int(4e8 / (n * n))))
            best = {"pot": np.inf, "F64": np.inf, "F32": np.inf}
            for _ in range(rounds):
                best["pot"] = min(best["pot"], pot_sinkhorn_per_iter(a, b, cost, eps, pot_iters))
                for prec in ("F64", "F32"):
                    r = ours(exe, ["--input", path, "--solver", "sinkhorn", "--epsilon", eps,
                                   "--iters", our_iters, "--precision", prec.lower()])
                    best[prec] = min(best[prec], r["seconds_per_iteration"])
            ms = {key: 1e3 * v for key, v in best.items()}
            print(f"| {n} | {ms['pot']:.2f} | {ms['F64']:.3f} | {ms['F32']:.3f} | "
                  f"{ms['pot'] / ms['F64']:.1f}x | {ms['pot'] / ms['F32']:.1f}x |", flush=True)
        print()

        print(f"## Sparsity-constrained dual, k = {k}, gamma = {gamma}: full solve, best of {rounds}")
        print()
        print("D_k is evaluated here (numpy) at each side's returned potentials; errors are the max-norm marginal")
        print("violations of each side's returned plan.")
        print()
        print("| n = m | POT s | ours s | POT / ours | D_k POT | D_k ours | ours - POT | POT iters | ours iters "
              "| POT err rows / cols | ours err rows / cols | ours status |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for n in sparse_sizes:
            path = os.path.join(tmp, f"sparse{n}.npz")
            pots = os.path.join(tmp, f"sparse{n}_out.npz")
            a, b, cost = make_problem(n, opts.seed, path)
            t_pot, t_ours = np.inf, np.inf
            for _ in range(rounds):
                s, plan, log = pot_sparse_dual(a, b, cost, k, gamma)
                t_pot = min(t_pot, s)
                r = ours(exe, ["--input", path, "--output", pots, "--solver", "sparse", "--formulation", "dual",
                               "--k", k, "--gamma", gamma])
                t_ours = min(t_ours, r["seconds"])
            d_pot = dual_objective(np.asarray(log["alpha"]), np.asarray(log["beta"]), a, b, cost, k, gamma)
            sol = np.load(pots)
            d_ours = dual_objective(sol["alpha"], sol["beta"], a, b, cost, k, gamma)
            pot_err = (np.abs(plan.sum(1) - a).max(), np.abs(plan.sum(0) - b).max())
            pot_iters = getattr(log["res"], "nit", "?")
            print(f"| {n} | {t_pot:.3f} | {t_ours:.3f} | {t_pot / t_ours:.1f}x | {d_pot:.12f} | {d_ours:.12f} | "
                  f"{d_ours - d_pot:.2e} | {pot_iters} | {r['iterations']} | {pot_err[0]:.1e} / {pot_err[1]:.1e} | "
                  f"{r['marginal_error_rows']:.1e} / {r['marginal_error_cols']:.1e} | {r['termination']} |",
                  flush=True)
    load1 = os.getloadavg()
    print()
    print(f"load average at end: {load1[0]:.1f} {load1[1]:.1f} {load1[2]:.1f}")


if __name__ == "__main__":
    main()
