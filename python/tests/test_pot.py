"""The same problems through POT and through sparse_ot, objectives and plans compared as the crate's own
tests compare its solvers; bad inputs; the GIL released; batches, the router and the GPU path.

Tolerances: both sides solve to marginal errors near 1e-9 (POT's stopThr default and ours), so plans agree
to ~1e-7 entrywise on these well-conditioned 40 x 30 problems and objectives to ~1e-9 relative; the
sparse solvers are compared by objective only (POT's L-BFGS-B ends short of the optimum, ours certifies
it), on the dual objective D_k, which does not depend on how ties are broken.
"""

import os
import threading
import time
import warnings

import numpy as np
import pytest

import sparse_ot
import sparse_ot as ot_fast

ot = pytest.importorskip("ot")


def problem(m=40, n=30, seed=0, uniform=False):
    rng = np.random.default_rng(seed)
    x, y = rng.random((m, 2)), rng.random((n, 2))
    M = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    M /= M.max()
    if uniform:
        return np.full(m, 1 / m), np.full(n, 1 / n), M
    a, b = rng.random(m) + 0.5, rng.random(n) + 0.5
    return a / a.sum(), b / b.sum(), M


def dual_objective(alpha, beta, a, b, M, k, gamma):
    """D_k(alpha, beta) = alpha.a + beta.b - (1 / 2 gamma) * sum over columns of the k largest [X_ij]_+^2."""
    x = np.maximum(alpha[:, None] + beta[None, :] - M, 0.0)
    top = -np.partition(-x, k - 1, axis=0)[:k]
    return float(alpha @ a + beta @ b - (top**2).sum() / (2.0 * gamma))


def test_emd_matches_pot():
    a, b, M = problem()
    G_pot = ot.emd(a, b, M)
    G, log = ot_fast.emd(a, b, M, log=True)
    assert log["converged"] and log["warning"] is None and log["result_code"] == 1
    assert abs(log["cost"] - np.sum(G_pot * M)) <= 1e-12
    assert abs(ot_fast.emd2(a, b, M) - ot.emd2(a, b, M)) <= 1e-12
    np.testing.assert_allclose(G.sum(1), a, atol=1e-12)
    np.testing.assert_allclose(G.sum(0), b, atol=1e-12)
    # Strong duality: the potentials certify the cost.
    assert abs(log["u"] @ a + log["v"] @ b - log["cost"]) <= 1e-12
    cost, lg = ot_fast.emd2(a, b, M, log=True, return_matrix=True)
    np.testing.assert_array_equal(lg["G"], G)


def test_sinkhorn_log_matches_pot():
    a, b, M = problem()
    reg = 0.05
    G_pot = ot.bregman.sinkhorn_log(a, b, M, reg, numItermax=10000, stopThr=1e-12)
    G, log = ot_fast.sinkhorn_log(a, b, M, reg, log=True)
    assert log["converged"]
    np.testing.assert_allclose(G, G_pot, atol=1e-8)
    # POT's log keys: the plan from the log-scalings, and the transport cost of sinkhorn2.
    np.testing.assert_allclose(np.exp(log["log_u"][:, None] + log["log_v"][None, :] - M / reg), G, rtol=1e-12)
    assert {"log_u", "log_v", "u", "v", "niter", "err", "alpha", "beta"} <= log.keys()
    assert abs(ot_fast.sinkhorn2(a, b, M, reg) - np.sum(G_pot * M)) <= 1e-8
    np.testing.assert_allclose(ot_fast.sinkhorn(a, b, M, reg), G, rtol=0, atol=0)


@pytest.mark.parametrize("fn", ["smooth_ot_dual", "smooth_ot_semi_dual"])
def test_quadratic_matches_pot(fn):
    """Ours meets the marginals to 1e-9 (its tolerance); POT's L-BFGS-B (asked for 1e-12) stops on its own
    criteria, here within ~3e-6 of the plan. The dual objective (k = m: no sparsity) of ours is at least POT's."""
    a, b, M = problem()
    reg = 0.1
    G_pot, log_pot = getattr(ot.smooth, fn)(a, b, M, reg, reg_type="l2", stopThr=1e-12, numItermax=5000, log=True)
    G, log = getattr(ot_fast.smooth, fn)(a, b, M, reg, reg_type="l2", log=True)
    assert log["converged"], log["termination"]
    np.testing.assert_allclose(G.sum(1), a, atol=1e-9)
    np.testing.assert_allclose(G.sum(0), b, atol=1e-9)
    np.testing.assert_allclose(G, G_pot, atol=1e-5)
    if fn == "smooth_ot_dual":
        m = len(a)
        d_pot = dual_objective(np.asarray(log_pot["alpha"]), np.asarray(log_pot["beta"]), a, b, M, m, reg)
        d_ours = dual_objective(log["alpha"], log["beta"], a, b, M, m, reg)
        assert d_ours >= d_pot - 1e-12 * abs(d_pot)
    else:
        s_pot = -log_pot["res"].fun
        assert log["value"] >= s_pot - 1e-12 * abs(s_pot)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_sparse_dual_at_least_pot(k):
    a, b, M = problem(uniform=True)
    reg = 0.1
    G_pot, log_pot = ot.smooth.smooth_ot_dual(a, b, M, reg, reg_type="sparsity_constrained", max_nz=k, log=True)
    G, log = ot_fast.smooth_ot_dual(a, b, M, reg, reg_type="sparsity_constrained", max_nz=k, log=True)
    assert log["converged"], log["termination"]
    d_pot = dual_objective(np.asarray(log_pot["alpha"]), np.asarray(log_pot["beta"]), a, b, M, k, reg)
    d_ours = dual_objective(log["alpha"], log["beta"], a, b, M, k, reg)
    assert d_ours >= d_pot - 1e-12 * abs(d_pot)
    assert abs(d_ours - log["value"]) <= 1e-12 * abs(d_ours) + 1e-15
    assert ((G > 0).sum(0) <= k).all()
    np.testing.assert_allclose(G.sum(0), b, atol=1e-9)


def test_sparse_semi_dual_at_least_pot():
    a, b, M = problem(uniform=True)
    reg, k = 0.1, 2
    G_pot, log_pot = ot.smooth.smooth_ot_semi_dual(a, b, M, reg, reg_type="sparsity_constrained", max_nz=k,
                                                   log=True)
    G, log = ot_fast.smooth_ot_semi_dual(a, b, M, reg, reg_type="sparsity_constrained", max_nz=k, log=True)
    assert log["converged"], log["termination"]
    assert ((G > 0).sum(0) <= k).all()
    np.testing.assert_allclose(G.sum(0), b, atol=1e-9)
    # Both semi-duals are functions of alpha alone, maximised: ours is at least the value POT reached
    # (scipy minimises its negative).
    s_pot = -log_pot["res"].fun
    assert log["value"] >= s_pot - 1e-12 * abs(s_pot)


def test_kl_is_sinkhorn():
    a, b, M = problem()
    G = ot_fast.smooth_ot_dual(a, b, M, 0.5, reg_type="kl")
    np.testing.assert_allclose(G, ot_fast.sinkhorn_log(a, b, M, 0.5), atol=1e-9)


def test_empty_marginals_are_uniform():
    _, _, M = problem()
    G = ot_fast.emd([], [], M)
    np.testing.assert_allclose(G.sum(1), np.full(40, 1 / 40), atol=1e-15)
    np.testing.assert_allclose(G, ot.emd([], [], M), atol=1e-15)


def test_float32_and_lists_are_accepted():
    a, b, M = problem()
    G64 = ot_fast.emd(a, b, M)
    G32 = ot_fast.emd(a.astype(np.float32), b.astype(np.float32), M.astype(np.float32))
    assert G32.dtype == np.float64  # results are f64: the CPU solves in f64
    np.testing.assert_allclose(G32, G64, atol=1e-6)
    Gl = ot_fast.emd(list(a), list(b), M.tolist())
    np.testing.assert_array_equal(Gl, G64)
    # A strided view is read in place, with the same answer.
    big = np.zeros((80, 30))
    big[::2] = M
    np.testing.assert_array_equal(ot_fast.emd(a, b, big[::2]), G64)


def test_not_converging_warns_and_logs():
    a, b, M = problem()
    with pytest.warns(ot_fast.ConvergenceWarning, match="did not converge"):
        G, log = ot_fast.smooth_ot_dual(a, b, M, 0.01, reg_type="sparsity_constrained", max_nz=2, numItermax=3,
                                        log=True)
    assert not log["converged"] and log["termination_kind"] == "max_iterations" and log["niter"] <= 3
    with pytest.warns(ot_fast.ConvergenceWarning):
        ot_fast.sinkhorn_log(a, b, M, 0.001, numItermax=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ot_fast.sinkhorn_log(a, b, M, 0.001, numItermax=5, warn=False)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda a, b, M: ot_fast.emd(a, b, np.where(M > 0.5, np.nan, M)), "NaN"),
        (lambda a, b, M: ot_fast.emd(-a, b, M), "negative"),
        (lambda a, b, M: ot_fast.emd(a, 2 * b, M), "mass"),
        (lambda a, b, M: ot_fast.emd(a[:-1], b, M), "shape|length"),
        (lambda a, b, M: ot_fast.sinkhorn_log(a, b, M, 0.0), "epsilon|positive"),
        (lambda a, b, M: ot_fast.smooth_ot_dual(a, b, M, -1.0), "gamma|positive"),
        (lambda a, b, M: ot_fast.smooth_ot_dual(a, b, M, 0.1, reg_type="sparsity_constrained", max_nz=0), "k"),
        (lambda a, b, M: ot_fast.smooth_ot_dual(a, b, M, 0.1, reg_type="sparsity_constrained"), "max_nz"),
        (lambda a, b, M: ot_fast.solve(M, a, b, solver="sparse", reg=0.1), "k"),
        (lambda a, b, M: ot_fast.solve(M, a, b, solver="simplex"), "solver"),
        (lambda a, b, M: ot_fast.solve(M, a, b, solver="exact", device="tpu"), "device"),
        (lambda a, b, M: ot_fast.solve(M[0], a, b, solver="exact"), "2-D"),
        (lambda a, b, M: ot_fast.emd(a, b, M[:0]), "empty|shape|length"),
    ],
)
def test_bad_input_raises_value_error(call, message):
    a, b, M = problem()
    with pytest.raises(ValueError, match=f"(?i){message}"):
        call(a, b, M)


def test_unknown_regularisation_is_not_implemented():
    a, b, M = problem()
    with pytest.raises(NotImplementedError):
        ot_fast.smooth_ot_dual(a, b, M, 0.1, reg_type="group_lasso")


def test_solve_and_batches():
    a, b, M = problem()
    r = ot_fast.solve(M, a, b, solver="sparse", k=3, reg=0.1, device="cpu")
    assert r.converged and r.device == "cpu" and r.plan.shape == (40, 30)
    sp = ot_fast.solve(M, a, b, solver="sparse", k=3, reg=0.1, device="cpu", plan="sparse")
    np.testing.assert_array_equal(sp.plan.toarray(), r.plan)
    assert sp.plan.nnz <= 3 * 30
    # A batch equals the problems solved one by one, bit for bit (on the CPU).
    Ms = np.stack([M, M[::-1].copy(), np.sqrt(M)])
    batch = ot_fast.solve(Ms, a, b, solver="sparse", k=3, reg=0.1, device="cpu")
    for Mi, ri in zip(Ms, batch):
        one = ot_fast.solve(Mi, a, b, solver="sparse", k=3, reg=0.1, device="cpu")
        np.testing.assert_array_equal(ri.plan, one.plan)
        assert ri.value == one.value
    # An invalid problem in a batch names its index.
    Ms[1, 0, 0] = np.inf
    with pytest.raises(ValueError, match="batch entry 1"):
        ot_fast.solve(Ms, a, b, solver="sinkhorn", reg=0.1, device="cpu")


def test_gil_is_released():
    """Python code in a second thread runs while a solve is inside the extension."""
    a, b, M = problem(1000, 800, uniform=True)
    window = {}

    def solve():
        window["start"] = time.perf_counter()
        ot_fast.smooth_ot_dual(a, b, M, 0.01, reg_type="sparsity_constrained", max_nz=2, numItermax=400)
        window["end"] = time.perf_counter()

    ticks = []
    t = threading.Thread(target=solve)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t.start()
        while t.is_alive():
            ticks.append(time.perf_counter())
            time.sleep(0.001)
        t.join()
    inside = [x for x in ticks if window["start"] < x < window["end"]]
    assert window["end"] - window["start"] > 0.05, "the solve was too short to tell"
    assert len(inside) >= 5, f"{len(inside)} ticks of the other thread during a solve of " \
                             f"{window['end'] - window['start']:.3f} s: the GIL was held"


def test_two_threads_solve_concurrently():
    """Short solves in one thread finish while a long solve runs in another. A solve that held the GIL
    would keep the other thread from running any Python, so none could finish inside the long one."""
    a, b, M = problem(1000, 800, uniform=True)
    sa, sb, sM = problem(20, 15)
    window, finished = {}, []
    started = threading.Event()

    def long_solve():
        window["start"] = time.perf_counter()
        started.set()
        ot_fast.solve(M, a, b, solver="sparse", k=2, reg=0.01, device="cpu", max_iter=400)
        window["end"] = time.perf_counter()

    def short_solves():
        started.wait()
        while "end" not in window:
            ot_fast.solve(sM, sa, sb, solver="sparse", k=2, reg=0.1, device="cpu")
            finished.append(time.perf_counter())

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        threads = [threading.Thread(target=long_solve), threading.Thread(target=short_solves)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    # The middle 60% of the long solve's window: its Python before and after the extension call (where the
    # other thread may run either way) takes milliseconds of a window of tenths of a second.
    d = window["end"] - window["start"]
    inside = [x for x in finished if window["start"] + 0.2 * d < x < window["end"] - 0.2 * d]
    assert len(inside) >= 3, f"{len(inside)} short solves finished in the middle of a long one of " \
                             f"{d:.3f} s: the solves did not run concurrently"


def test_router_capacity():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(4, 64, 8)).astype(np.float32)
    dispatch, combine, info = ot_fast.route(logits, device="cpu")
    assert dispatch.shape == combine.shape == (4, 64, 8) and dispatch.dtype == bool
    assert info["capacity"] == 8
    assert (dispatch.sum(axis=1) <= info["capacity"]).all()
    assert (combine[~dispatch] == 0).all() and (combine[dispatch] > 0).all()
    assert info["dropped_tokens"] == int((dispatch.sum(axis=2) == 0).sum())
    with pytest.raises(ValueError, match="3-D"):
        ot_fast.route(logits[0])


def gpu_or_skip():
    try:
        return ot_fast.describe_device("gpu")
    except RuntimeError as e:
        if os.environ.get("SPARSE_OT_REQUIRE_GPU") == "1":
            raise
        pytest.skip(f"no GPU adapter: {e}")


def test_gpu_matches_cpu():
    """f32 on the GPU against the f64 CPU reference, compared by objective and marginals: plan entries of
    two rows whose scores tie to f32 rounding may swap between the devices. The GPU stops at half of
    tol = 1e-6 in its own f32 measure and is checked in f64; the values differ by the potentials' f32
    rounding (~1e-7 relative) plus both stopping errors times the potentials' size (~1e-6 x 1): 1e-6
    absolute is above both."""
    print(gpu_or_skip())
    a, b, M = problem()
    k = 3
    kw = dict(solver="sparse", k=k, reg=0.1, tol=1e-6)
    g = ot_fast.solve(M.astype(np.float32), a.astype(np.float32), b.astype(np.float32), device="gpu", **kw)
    c = ot_fast.solve(M, a, b, device="cpu", **kw)
    assert g.converged and c.converged and g.device != "cpu"
    assert abs(g.value - c.value) <= 1e-6
    assert ((g.plan > 0).sum(0) <= k).all()
    np.testing.assert_allclose(g.plan.sum(0), b, atol=1e-6)
    with pytest.raises(ValueError):
        ot_fast.solve(M, a, b, device="gpu", solver="sinkhorn", reg=-1.0)


POT_SCRIPT = """
import numpy as np
rng = np.random.RandomState(0)
xs, xt = rng.randn(50, 2), rng.randn(40, 2) + 1.0
M = ot.dist(xs, xt)
M /= M.max()
a, b = ot.unif(50), ot.unif(40)
G0 = ot.emd(a, b, M)
W = ot.emd2(a, b, M)
Gs = ot.sinkhorn(a, b, M, 0.05)
Gl, log_l = ot.bregman.sinkhorn_log(a, b, M, 0.05, log=True)
Ws = ot.sinkhorn2(a, b, M, 0.05)
Gq = ot.smooth.smooth_ot_dual(a, b, M, 0.1, reg_type="l2")
Gk, log_k = ot.smooth.smooth_ot_dual(a, b, M, 0.1, reg_type="sparsity_constrained", max_nz=2, log=True)
Gsd, log_sd = ot.smooth.smooth_ot_semi_dual(a, b, M, 0.1, reg_type="sparsity_constrained", max_nz=2, log=True)
out = dict(W=W, Ws=Ws, G0=G0, Gs=Gs, Gq=Gq, Gk=Gk, alpha=log_k["alpha"], beta=log_k["beta"], M=M, a=a, b=b)
"""


def test_a_pot_script_runs_unchanged():
    """A POT script, run once with ``ot`` = POT and once with ``ot`` = sparse_ot, unchanged."""
    results = {}
    for name, module in (("pot", ot), ("ours", ot_fast)):
        scope = {"ot": module}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exec(POT_SCRIPT, scope)
        results[name] = scope["out"]
    pot, ours = results["pot"], results["ours"]
    np.testing.assert_allclose(ours["M"], pot["M"], rtol=1e-12)
    assert abs(ours["W"] - pot["W"]) <= 1e-12
    np.testing.assert_allclose(ours["Gs"], pot["Gs"], atol=1e-7)
    assert abs(ours["Ws"] - pot["Ws"]) <= 1e-7
    np.testing.assert_allclose(ours["Gq"], pot["Gq"], atol=1e-4)
    a, b, M = pot["a"], pot["b"], pot["M"]
    d_pot = dual_objective(np.asarray(pot["alpha"]), np.asarray(pot["beta"]), a, b, M, 2, 0.1)
    d_ours = dual_objective(ours["alpha"], ours["beta"], a, b, M, 2, 0.1)
    assert d_ours >= d_pot - 1e-12 * abs(d_pot)


def test_dist_matches_pot():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(20, 3)), rng.normal(size=(15, 3))
    for metric in ("sqeuclidean", "euclidean", "cityblock"):
        np.testing.assert_allclose(ot_fast.dist(x, y, metric=metric), ot.dist(x, y, metric=metric), rtol=1e-12,
                                   atol=1e-12)
    np.testing.assert_allclose(ot_fast.dist(x, y, metric="minkowski", p=3), ot.dist(x, y, metric="minkowski", p=3),
                               rtol=1e-12)
    np.testing.assert_allclose(ot_fast.dist(x), ot.dist(x), atol=1e-12)
    with pytest.raises(ValueError, match="NaN"):
        ot_fast.dist(np.where(x > 2, np.nan, x), y)
    with pytest.raises(ValueError, match="metric"):
        ot_fast.dist(x, y, metric="cosine")


def test_plan_kinds():
    # 60 uniform points against 45, k = 2: a nonsmooth optimum, where the plan read off the potentials
    # misses a row marginal while the relaxed plan meets both.
    rng = np.random.default_rng(3)
    x, y = rng.random((60, 2)), rng.random((45, 2))
    M = ot_fast.dist(x, y)
    M /= M.max()
    a, b = np.full(60, 1 / 60), np.full(45, 1 / 45)
    grad = ot_fast.solve(M, a, b, solver="sparse", k=2, reg=0.1, device="cpu")
    assert grad.plan_kind == "gradient" and grad.plan_gap is None
    rel = ot_fast.solve(M, a, b, solver="sparse", k=2, reg=0.1, device="cpu", plan_kind="relaxed")
    assert rel.converged and rel.plan_kind == "relaxed"
    np.testing.assert_allclose(rel.plan.sum(axis=1), a, atol=1e-9)
    np.testing.assert_allclose(rel.plan.sum(axis=0), b, atol=1e-9)
    assert rel.plan_gap is not None and rel.plan_gap <= 1e-8
    np.testing.assert_array_equal(rel.alpha, grad.alpha)
    fea = ot_fast.solve(M, a, b, solver="sparse", k=3, reg=0.1, device="cpu", plan_kind="feasible")
    assert fea.plan_kind in ("feasible", "relaxed")
    if fea.plan_kind == "feasible":
        assert ((fea.plan > 0).sum(axis=0) <= 3).all()
    np.testing.assert_allclose(fea.plan.sum(axis=1), a, atol=1e-9)
    assert ot_fast.solve(M, a, b, solver="sinkhorn", reg=0.1, device="cpu").plan_kind is None
    with pytest.raises(ValueError, match="plan_kind"):
        ot_fast.solve(M, a, b, solver="sinkhorn", reg=0.1, device="cpu", plan_kind="relaxed")
    with pytest.raises(ValueError, match="plan_kind"):
        ot_fast.solve(M, a, b, solver="sparse", k=2, reg=0.1, device="cpu", plan_kind="best")
