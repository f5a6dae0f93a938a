#!/usr/bin/env python3
"""Times sparse-ot's CPU Sinkhorn against OTT-JAX (CPU, jit) per iteration, on the same problems, in one run.

    python3 benches/ott_cpu.py [--n 2000] [--points 20000]

Problems: n uniform points in [0,1]^2 on each side (numpy default_rng, fixed seed), squared-Euclidean cost,
uniform marginals, eps = 0.01, fixed iteration counts (no stopping test, no eps-scaling), time per
iteration = (t(N1) - t(N0)) / (N1 - N0) on both sides, so set-up, compilation (OTT compiles each count once,
before timing) and the final assembly cancel.

* dense: OTT `Geometry(cost_matrix=C)` against the `bench_cpu` example on the same C, f32 and f64
  (jax_enable_x64 for f64);
* points: OTT `PointCloud(x, y)` against the `solve` CLI on x, y (--no-epsilon-scaling, --tol 0,
  --plan none), f32.
Both run on every core of this machine; the best of 3 timings is kept on each side.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cargo_example(name):
    subprocess.run(["cargo", "build", "--release", "--quiet", "--example", name], cwd=ROOT, check=True)
    return os.path.join(ROOT, "target", "release", "examples", name)


def ott_per_iteration(make_geom, n0, n1, dtype):
    import jax
    from ott.problems.linear import linear_problem
    from ott.solvers.linear import sinkhorn

    def run(iters):
        solver = sinkhorn.Sinkhorn(threshold=-1.0, max_iterations=iters, min_iterations=iters,
                                   inner_iterations=1, lse_mode=True)
        fn = jax.jit(lambda: solver(linear_problem.LinearProblem(make_geom())).f)
        fn().block_until_ready()  # compile
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            fn().block_until_ready()
            best = min(best, time.perf_counter() - t)
        return best

    return (run(n1) - run(n0)) / (n1 - n0)


def best_of(cmd, key="seconds"):
    best = float("inf")
    for _ in range(3):
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        best = min(best, json.loads(out)[key])
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--points", type=int, default=20000)
    args = ap.parse_args()
    import jax
    import ott
    rng = np.random.default_rng(0)
    tmp = tempfile.mkdtemp()
    results = []
    # Dense.
    n = args.n
    x, y = rng.random((n, 2)), rng.random((n, 2))
    C = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    a = np.full(n, 1.0 / n)
    path = os.path.join(tmp, "dense.npz")
    np.savez(path, a=a, b=a, cost=C)
    bench = cargo_example("bench_cpu")
    for prec in ["f32", "f64"]:
        jax.config.update("jax_enable_x64", prec == "f64")
        import jax.numpy as jnp
        from ott.geometry import geometry
        dt = jnp.float32 if prec == "f32" else jnp.float64
        Cj = jnp.asarray(C, dtype=dt)
        t_ott = ott_per_iteration(lambda: geometry.Geometry(cost_matrix=Cj, epsilon=0.01), 10, 60, dt)
        out = subprocess.run([bench, "--input", path, "--solver", "sinkhorn", "--epsilon", "0.01", "--iters", "60",
                              "--precision", prec, "--repeat", "3"], check=True, capture_output=True,
                             text=True).stdout.strip().splitlines()[-1]
        t_ours = json.loads(out)["seconds_per_iteration"]
        results.append({"what": "dense", "n": n, "precision": prec, "ott_s": t_ott, "ours_s": t_ours,
                        "ott_over_ours": t_ott / t_ours})
        print(results[-1], flush=True)
    # Points, f32.
    if args.points:
        jax.config.update("jax_enable_x64", False)
        import jax.numpy as jnp
        from ott.geometry import pointcloud
        m = args.points
        px, py = rng.random((m, 2)).astype(np.float32), rng.random((m, 2)).astype(np.float32)
        path = os.path.join(tmp, "points.npz")
        np.savez(path, x=px, y=py)
        xj, yj = jnp.asarray(px), jnp.asarray(py)
        t_ott = ott_per_iteration(lambda: pointcloud.PointCloud(xj, yj, epsilon=0.01), 2, 12, jnp.float32)
        solve = cargo_example("solve")
        base = [solve, "--input", path, "--output", os.path.join(tmp, "o.npz"), "--solver", "sinkhorn",
                "--epsilon", "0.01", "--precision", "f32", "--tol", "0", "--no-epsilon-scaling", "--plan", "none",
                "--quiet"]
        t0 = best_of(base + ["--max-iter", "2"])
        t1 = best_of(base + ["--max-iter", "12"])
        t_ours = (t1 - t0) / 10
        results.append({"what": "points", "n": m, "d": 2, "precision": "f32", "ott_s": t_ott, "ours_s": t_ours,
                        "ott_over_ours": t_ott / t_ours})
        print(results[-1], flush=True)
    print(json.dumps({"ott": ott.__version__, "jax": jax.__version__, "results": results}))


if __name__ == "__main__":
    sys.exit(main())
