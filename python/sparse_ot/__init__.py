"""sparse_ot: sparsity-constrained, quadratic, entropic and exact optimal transport, on the CPU (float64)
and on any GPU (float32, through wgpu: Vulkan, Metal, DX12).

The functions below keep the names, argument positions, defaults and return shapes of POT (the Python
Optimal Transport library), so a POT script can switch by changing its import::

    import sparse_ot as ot
    G = ot.emd(a, b, M)
    G, log = ot.smooth.smooth_ot_dual(a, b, M, reg, reg_type="sparsity_constrained", max_nz=k, log=True)

The problem is always: transport plans T >= 0 with row sums a (sources, length m) and column sums b (targets,
length n), cost M (m x n);

* ``emd``: min <T, M> (exact, network simplex);
* ``sinkhorn_log``: min <T, M> + reg * sum T (log T - 1) (entropic, log-domain Sinkhorn);
* ``smooth_ot_dual`` / ``smooth_ot_semi_dual`` with ``reg_type="l2"``: min <T, M> + (reg / 2) ||T||^2;
  with ``reg_type="sparsity_constrained"``: the same with at most ``max_nz`` nonzeros in each column of T.

Beyond POT: ``solve`` (one entry point for every solver, batches of problems, the GPU) and ``route`` (the
mixture-of-experts router: each expert takes at most its capacity of tokens).

Not converging is never silent: the functions warn (``ConvergenceWarning``, a ``UserWarning``) and their log
says ``converged``, ``termination`` and ``niter``. Bad input raises ``ValueError`` with a message that says
what is wrong; a device failure (no GPU adapter, a device limit) raises ``RuntimeError``. Every solve
releases the GIL, so threads solve concurrently.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Dict, List, Optional, Tuple, Union

import os

import numpy as np
from numpy.typing import ArrayLike


def _quiet_device_select_layer():
    """Keeps a Vulkan layer's notice off stderr.

    Mesa's Vulkan drivers install an implicit layer (``VK_LAYER_MESA_device_select``) that asks the display
    server which GPU drives the display whenever the adapters are listed. Without a display session
    (``XDG_RUNTIME_DIR`` unset, as in containers, under sudo and over plain ssh) it prints
    ``error: XDG_RUNTIME_DIR is invalid or not set in the environment.`` twice per GPU probe, even when the
    solve then runs on the CPU. With no display to ask the layer only reorders the adapters, which the
    solver ranks itself, so it is turned off (``NODEVICE_SELECT=1``) unless one of its variables is set.
    Runs at import, before the extension lists any adapter.
    """
    env = os.environ
    runtime_dir = env.get("XDG_RUNTIME_DIR", "")
    display = (runtime_dir and os.path.isdir(runtime_dir)) or any(
        env.get(v) for v in ("WAYLAND_DISPLAY", "WAYLAND_SOCKET", "DISPLAY"))
    configured = any(v in env for v in ("NODEVICE_SELECT", "MESA_VK_DEVICE_SELECT", "DRI_PRIME"))
    if not display and not configured:
        env["NODEVICE_SELECT"] = "1"


_quiet_device_select_layer()

from . import _native  # noqa: E402  (after the environment is set)

__version__ = _native.__version__

__all__ = [
    "ConvergenceWarning",
    "OTResult",
    "bregman",
    "describe_device",
    "dist",
    "emd",
    "emd2",
    "route",
    "sinkhorn",
    "sinkhorn2",
    "sinkhorn_log",
    "smooth",
    "smooth_ot_dual",
    "smooth_ot_semi_dual",
    "solve",
    "unif",
]


class ConvergenceWarning(UserWarning):
    """A solver stopped before its tolerance (iteration limit, stall, or a tolerance below the precision)."""


# ----------------------------------------------------------------------------------------------------------
# Inputs


def _float_arrays(*arrays):
    """The arrays as NumPy arrays of one float type: float32 when all are float32, else float64.

    A float64 array (C-contiguous or strided) is passed on as it is, without a copy; other dtypes (ints,
    float16, lists) are converted.
    """
    arrays = [np.asarray(x) for x in arrays]
    dtype = np.float32 if all(x.dtype == np.float32 for x in arrays) else np.float64
    return [x if x.dtype == dtype else x.astype(dtype) for x in arrays]


def _marginals(a, b, M):
    """POT's convention: an empty (or missing) ``a`` or ``b`` means uniform weights."""
    M = np.asarray(M)
    if M.ndim < 2:
        raise ValueError(f"M must be a 2-D cost matrix (or 3-D: a batch), got {M.ndim} dimension(s)")
    m, n = M.shape[-2], M.shape[-1]
    a = unif(m) if a is None or np.size(a) == 0 else a
    b = unif(n) if b is None or np.size(b) == 0 else b
    return a, b, M


def unif(n: int) -> np.ndarray:
    """Uniform weights 1/n of length n (POT's ``ot.unif``)."""
    if n < 1:
        raise ValueError(f"unif needs n >= 1, got {n}")
    return np.full(n, 1.0 / n)


def dist(x1: ArrayLike, x2: Optional[ArrayLike] = None, metric: str = "sqeuclidean", p: float = 2.0,
         **kwargs) -> np.ndarray:
    """The cost matrix between the rows of ``x1`` (m x d) and of ``x2`` (n x d; ``x1`` when None), POT's
    ``ot.dist``: ``metric`` is ``"sqeuclidean"`` (the default), ``"euclidean"``, ``"cityblock"`` or
    ``"minkowski"`` (the p-norm). Bad points (NaN/inf, d = 0, different d) raise ``ValueError``."""
    x1 = np.asarray(x1)
    x2 = x1 if x2 is None else np.asarray(x2)
    x1, x2 = _float_arrays(x1, x2)
    if x1.ndim != 2 or x2.ndim != 2:
        raise ValueError(f"x1 and x2 must be 2-D (points x coordinates), got shapes {x1.shape} and {x2.shape}")
    metrics = {"sqeuclidean": (None, None), "euclidean": (2.0, 1.0), "cityblock": (1.0, 1.0),
               "minkowski": (float(p), 1.0)}
    if metric not in metrics:
        raise ValueError(f"metric must be one of {sorted(metrics)}, not {metric!r}")
    pp, qq = metrics[metric]
    return _native.pairwise_cost(x1, x2, p=pp, q=qq)


# ----------------------------------------------------------------------------------------------------------
# Results


@dataclass
class OTResult:
    """The result of :func:`solve`.

    Attributes:
        plan: the transport plan, a dense (m, n) array, or a ``scipy.sparse.coo_array`` for
            ``plan="sparse"``.
        alpha, beta: the potentials (lengths m and n); for the semi-dual, beta is the best one for alpha.
        value: the objective of the formulation solved (maximised), at the returned potentials. For Sinkhorn
            it is the dual value alpha.a + beta.b - reg * sum exp((alpha_i + beta_j - M_ij) / reg) + reg
            * mass; for exact OT it equals the transport cost at the optimum.
        transport_cost: <T, M> of the returned plan (POT's ``emd2`` and ``sinkhorn2``).
        marginal_error_rows, marginal_error_cols: max |T 1 - a| and max |T^T 1 - b|.
        iterations: iterations of all stages together.
        converged: whether the solver met its tolerance (or certified the optimum).
        termination: why it stopped, as a sentence.
        termination_kind: ``"converged"``, ``"max_iterations"``, ``"stalled"``, ``"cancelled"`` or
            ``"unverified"``.
        device: where it ran (``"cpu"`` or the GPU adapter's name).
        plan_kind: which plan a sparse or quadratic solve returned (``"gradient"``, ``"relaxed"`` or
            ``"feasible"``; None for sinkhorn and exact).
        plan_gap: for a relaxed or feasible plan, its objective minus the dual value (how far from optimal
            it can be); None otherwise.
    """

    plan: Any
    alpha: np.ndarray
    beta: np.ndarray
    value: float
    transport_cost: float
    marginal_error_rows: float
    marginal_error_cols: float
    iterations: int
    converged: bool
    termination: str
    termination_kind: str
    device: str
    plan_kind: Optional[str] = None
    plan_gap: Optional[float] = None

    @property
    def status(self) -> str:
        """The termination sentence (the same as ``termination``)."""
        return self.termination


def _plan(d: Dict[str, Any], kind: str = "dense"):
    shape = tuple(d["shape"])
    if "plan" in d:
        dense = d["plan"]
        if kind == "sparse":
            from scipy import sparse

            return sparse.coo_array(dense)
        return dense
    rows, cols, vals = d["plan_rows"], d["plan_cols"], d["plan_values"]
    if kind == "sparse":
        from scipy import sparse

        return sparse.coo_array((vals, (rows, cols)), shape=shape)
    dense = np.zeros(shape)
    np.add.at(dense, (rows, cols), vals)
    return dense


def _result(d: Dict[str, Any], plan: str) -> OTResult:
    return OTResult(
        plan=_plan(d, plan),
        alpha=d["alpha"],
        beta=d["beta"],
        value=d["value"],
        transport_cost=d["transport_cost"],
        marginal_error_rows=d["marginal_error_rows"],
        marginal_error_cols=d["marginal_error_cols"],
        iterations=d["iterations"],
        converged=d["converged"],
        termination=d["termination"],
        termination_kind=d["termination_kind"],
        device=d["device"],
        plan_kind=d["plan_kind"],
        plan_gap=d["plan_gap"],
    )


def _warn_unless_converged(d: Dict[str, Any], what: str, hint: str, warn: bool = True, stacklevel: int = 3):
    if warn and not d["converged"]:
        warnings.warn(
            f"{what} did not converge: {d['termination']} (marginal errors: rows "
            f"{d['marginal_error_rows']:.2e}, columns {d['marginal_error_cols']:.2e}). {hint}",
            ConvergenceWarning,
            stacklevel=stacklevel,
        )


def _log_common(d: Dict[str, Any]) -> Dict[str, Any]:
    """The keys every log holds besides POT's own."""
    return {
        "converged": d["converged"],
        "termination": d["termination"],
        "termination_kind": d["termination_kind"],
        "value": d["value"],
        "cost": d["transport_cost"],
        "niter": d["iterations"],
        "err": [max(d["marginal_error_rows"], d["marginal_error_cols"])],
        "marginal_error_rows": d["marginal_error_rows"],
        "marginal_error_cols": d["marginal_error_cols"],
        "device": d["device"],
    }


def _solve_one(a, b, M, solver, **kw) -> Dict[str, Any]:
    a, b, M = _marginals(a, b, M)
    a, b, M = _float_arrays(a, b, M)
    if M.ndim != 2:
        raise ValueError(f"M must be a 2-D cost matrix, got shape {M.shape}")
    if a.ndim != 1 or b.ndim != 1:
        raise ValueError(
            f"a and b must be 1-D (got shapes {a.shape} and {b.shape}); for a batch use sparse_ot.solve"
        )
    return _native.solve(a, b, M, solver, **kw)


# ----------------------------------------------------------------------------------------------------------
# POT's functions


def emd(a: ArrayLike, b: ArrayLike, M: ArrayLike, numItermax: int = 100000, log: bool = False, **kwargs):
    """Exact OT by the network simplex (POT's ``ot.emd``): the plan T minimising <T, M>.

    With ``log=True`` returns ``(G, log)`` where log holds POT's ``cost``, ``u``, ``v`` (the potentials),
    ``warning`` (None when optimal) and ``result_code`` (1 optimal, 3 iteration limit), plus
    ``converged``, ``termination``, ``value`` and ``niter``. Other POT keyword arguments (``center_dual``,
    ``numThreads``, ``check_marginals``) are accepted and have no effect here.
    """
    d = _solve_one(a, b, M, "exact", max_iter=int(numItermax))
    _warn_unless_converged(d, "emd", "Try to increase numItermax.")
    G = _plan(d)
    if not log:
        return G
    return G, _emd_log(d)


def _emd_log(d):
    out = _log_common(d)
    out.update(
        u=d["alpha"],
        v=d["beta"],
        warning=None if d["converged"] else d["termination"],
        result_code=1 if d["converged"] else 3,
    )
    return out


def emd2(a: ArrayLike, b: ArrayLike, M: ArrayLike, processes: int = 1, numItermax: int = 100000, log: bool = False, return_matrix: bool = False,
         **kwargs):
    """The exact OT cost min <T, M> (POT's ``ot.emd2``); with ``log=True`` returns ``[cost, log]`` (and
    ``log["G"]``, the plan, with ``return_matrix=True``)."""
    d = _solve_one(a, b, M, "exact", max_iter=int(numItermax))
    _warn_unless_converged(d, "emd2", "Try to increase numItermax.")
    cost = d["transport_cost"]
    if not (log or return_matrix):
        return cost
    lg = _emd_log(d)
    if return_matrix:
        lg["G"] = _plan(d)
    return [cost, lg]


def sinkhorn_log(a: ArrayLike, b: ArrayLike, M: ArrayLike, reg: float, numItermax: int = 1000, stopThr: float = 1e-9, verbose: bool = False,
                 log: bool = False, warn: bool = True, warmstart=None, **kwargs):
    """Entropic OT by log-domain Sinkhorn (POT's ``ot.bregman.sinkhorn_log``): the plan minimising
    <T, M> + reg * sum T (log T - 1), T_ij = exp((f_i + g_j - M_ij) / reg).

    ``stopThr`` bounds the largest marginal violation max(|T 1 - a|_inf, |T^T 1 - b|_inf) (POT checks the
    2-norm of the column error; the max-norm here is at most that). ``numItermax`` counts the iterations of
    all stages (the solver warm-starts from a larger reg when that helps). With ``log=True`` returns
    ``(G, log)``: POT's ``log_u = f / reg``, ``log_v = g / reg``, ``u``, ``v``, ``niter``, ``err``, plus
    ``alpha`` = f, ``beta`` = g, ``converged``, ``termination``, ``value``, ``cost``.
    ``warmstart`` = (log_u, log_v) as POT's.
    """
    if warmstart is not None:
        raise ValueError("warmstart is not supported by sparse_ot.sinkhorn_log yet; pass warmstart=None")
    d = _solve_one(a, b, M, "sinkhorn", reg=float(reg), max_iter=int(numItermax), tol=float(stopThr))
    _warn_unless_converged(
        d, "Sinkhorn", "You might want to increase the number of iterations `numItermax` or the "
        "regularization parameter `reg`.", warn=warn)
    G = _plan(d)
    if not log:
        return G
    return G, _sinkhorn_log_dict(d, reg)


def _sinkhorn_log_dict(d, reg):
    out = _log_common(d)
    log_u, log_v = d["alpha"] / reg, d["beta"] / reg
    out.update(alpha=d["alpha"], beta=d["beta"], log_u=log_u, log_v=log_v, u=np.exp(log_u), v=np.exp(log_v))
    return out


def sinkhorn(a: ArrayLike, b: ArrayLike, M: ArrayLike, reg: float, method: str = "sinkhorn", numItermax: int = 1000, stopThr: float = 1e-9,
             verbose: bool = False, log: bool = False, warn: bool = True, warmstart=None, **kwargs):
    """Entropic OT (POT's ``ot.sinkhorn``). Every ``method`` ("sinkhorn", "sinkhorn_log",
    "sinkhorn_stabilized", ...) is solved by the log-domain iteration of :func:`sinkhorn_log`, which does not
    overflow at small reg."""
    return sinkhorn_log(a, b, M, reg, numItermax=numItermax, stopThr=stopThr, verbose=verbose, log=log,
                        warn=warn, warmstart=warmstart)


def sinkhorn2(a: ArrayLike, b: ArrayLike, M: ArrayLike, reg: float, method: str = "sinkhorn", numItermax: int = 1000, stopThr: float = 1e-9,
              verbose: bool = False, log: bool = False, warn: bool = True, warmstart=None, **kwargs):
    """The transport cost <T, M> of the entropic plan (POT's ``ot.sinkhorn2``); with ``log=True`` returns
    ``(cost, log)``. Unlike POT (whose ``warn`` defaults to False here), not converging warns unless
    ``warn=False`` is passed."""
    out = sinkhorn_log(a, b, M, reg, numItermax=numItermax, stopThr=stopThr, verbose=verbose, log=True,
                       warn=warn, warmstart=warmstart)
    G, lg = out
    cost = lg["cost"]
    return (cost, lg) if log else cost


def _smooth_solver(reg_type: str, max_nz) -> Tuple[str, Optional[int]]:
    r = reg_type.lower()
    if r in ("l2", "squaredl2"):
        return "quadratic", None
    if r in ("sparsity_constrained", "sparsity-constrained"):
        if isinstance(max_nz, bool) or not isinstance(max_nz, (int, np.integer)):
            raise ValueError(f"max_nz {max_nz} must be an integer")
        return "sparse", int(max_nz)
    if r in ("kl", "entropic", "negentropy"):
        return "sinkhorn", None
    raise NotImplementedError("Unknown regularization")


def _smooth(a, b, M, reg, reg_type, max_nz, stopThr, numItermax, formulation, what, log):
    """The smooth solvers' common body: solve, warn unless converged, return G or (G, log)."""
    solver, k = _smooth_solver(reg_type, max_nz)
    if solver == "sinkhorn":
        d = _solve_one(a, b, M, "sinkhorn", reg=float(reg), max_iter=int(numItermax), tol=float(stopThr))
    else:
        d = _solve_one(a, b, M, solver, reg=float(reg), k=k, formulation=formulation,
                       max_iter=int(numItermax), tol=float(stopThr))
    # stacklevel 4: the warning names the user's call, two frames above this one.
    _warn_unless_converged(d, what, "Try to increase numItermax.", stacklevel=4)
    G = _plan(d)
    if not log:
        return G
    out = _log_common(d)
    out.update(alpha=d["alpha"], beta=d["beta"])
    return G, out


def smooth_ot_dual(a: ArrayLike, b: ArrayLike, M: ArrayLike, reg: float, reg_type: str = "l2", method: str = "L-BFGS-B", stopThr: float = 1e-9,
                   numItermax: int = 500, verbose: bool = False, log: bool = False, max_nz: Optional[int] = None):
    """Regularised OT through its dual (POT's ``ot.smooth.smooth_ot_dual``).

    ``reg_type="l2"``: min <T, M> + (reg / 2) ||T||^2; ``"sparsity_constrained"``: the same with at most
    ``max_nz`` nonzeros per column; ``"kl"``: entropic OT (solved by Sinkhorn). The dual
    max alpha.a + beta.b - sum_j Omega*_j(alpha + beta_j - M_:j) is maximised to a marginal violation
    (the dual's gradient) of at most ``stopThr``, and for the sparse case to a certified duality gap where
    the plan is not smooth. ``method`` is accepted for compatibility (the solver is the crate's own).
    With ``log=True`` returns ``(G, log)``: ``alpha``, ``beta`` (POT's), ``converged``, ``termination``,
    ``value`` (the dual objective, >= POT's at its optimum), ``cost``, ``niter``, ``err``.
    """
    return _smooth(a, b, M, reg, reg_type, max_nz, stopThr, numItermax, "dual", "smooth_ot_dual", log)


def smooth_ot_semi_dual(a: ArrayLike, b: ArrayLike, M: ArrayLike, reg: float, reg_type: str = "l2", max_nz: Optional[int] = None,
                        method: str = "L-BFGS-B", stopThr: float = 1e-9, numItermax: int = 500,
                        verbose: bool = False, log: bool = False):
    """Regularised OT through its semi-dual in alpha (POT's ``ot.smooth.smooth_ot_semi_dual``); the
    regularisations as in :func:`smooth_ot_dual`. With ``log=True`` returns ``(G, log)``: ``alpha``
    (POT's), ``beta`` (the best beta for alpha), ``converged``, ``termination``, ``value``, ``cost``,
    ``niter``, ``err``."""
    return _smooth(a, b, M, reg, reg_type, max_nz, stopThr, numItermax, "semi-dual", "smooth_ot_semi_dual", log)


#: POT keeps the smooth solvers in ``ot.smooth``; ``sparse_ot.smooth.smooth_ot_dual`` works the same way.
smooth = SimpleNamespace(smooth_ot_dual=smooth_ot_dual, smooth_ot_semi_dual=smooth_ot_semi_dual)
#: POT's ``ot.bregman`` names of the Sinkhorn functions.
bregman = SimpleNamespace(sinkhorn=sinkhorn, sinkhorn_log=sinkhorn_log, sinkhorn2=sinkhorn2)


# ----------------------------------------------------------------------------------------------------------
# Beyond POT


def solve(M: ArrayLike, a: Optional[ArrayLike] = None, b: Optional[ArrayLike] = None, *, solver: str = "sparse", k: Optional[int] = None, reg: Optional[float] = None,
          formulation: str = "semi-dual", device: str = "auto", plan: str = "dense", tol: Optional[float] = None,
          max_iter: Optional[int] = None, plan_kind: str = "gradient") -> Union[OTResult, List[OTResult]]:
    """Solves one problem (M of shape (m, n)) or a batch (M of shape (B, m, n)).

    Args:
        M: the cost, (m, n) or (B, m, n); float64 is read in place, float32 kept as float32 (all inputs
            float32: the GPU's precision), anything else converted to float64.
        a, b: the marginals, (m,) and (n,), or (B, m) and (B, n) for a batch (shared when 1-D); None or
            empty: uniform.
        solver: ``"sparse"`` (at most ``k`` nonzeros per column, regularisation ``reg`` = gamma),
            ``"quadratic"`` (``reg`` = gamma), ``"sinkhorn"`` (``reg`` = epsilon) or ``"exact"``.
        formulation: ``"semi-dual"`` or ``"dual"`` (sparse and quadratic).
        device: ``"auto"`` (a hardware GPU when there is one, else the CPU), ``"cpu"`` (float64) or ``"gpu"``
            (float32; ``RuntimeError`` without an adapter).
        plan: ``"dense"`` (an (m, n) array) or ``"sparse"`` (a ``scipy.sparse.coo_array``).
        tol: the marginal tolerance (default: the solver's, which depends on the device's precision).
        max_iter: the iteration limit (default: the solver's).
        plan_kind: sparse and quadratic solvers: ``"gradient"`` (the k-sparse plan read off the potentials;
            at a nonsmooth optimum it can miss a row marginal), ``"relaxed"`` (the relaxation's optimal plan:
            both marginals met, possibly more than k entries where supports tie) or ``"feasible"`` (at most k
            per column and both marginals met, else the relaxed plan); ``result.plan_kind`` says which came
            back and ``result.plan_gap`` its objective minus the dual value.

    Returns an :class:`OTResult`, or for a batch a list of them. Not converging warns
    (``ConvergenceWarning``) and is in ``result.converged`` / ``result.termination``. In a batch, a
    problem that is invalid raises its ``ValueError`` naming its index.
    """
    if plan not in ("dense", "sparse"):
        raise ValueError(f'plan must be "dense" or "sparse", not {plan!r}')
    if solver not in ("exact", "sinkhorn", "quadratic", "sparse"):
        raise ValueError(f'solver must be "exact", "sinkhorn", "quadratic" or "sparse", not {solver!r}')
    kw = dict(reg=None if reg is None else float(reg), k=None if k is None else int(k),
              formulation=formulation, max_iter=None if max_iter is None else int(max_iter),
              tol=None if tol is None else float(tol), device=device, plan_kind=plan_kind)
    a, b, M = _marginals(a, b, M)
    if M.ndim == 2:
        d = _solve_one(a, b, M, solver, **kw)
        _warn_unless_converged(d, f"{solver} solve", "See result.termination.")
        return _result(d, plan)
    if M.ndim != 3:
        raise ValueError(f"M must have 2 dimensions (one problem) or 3 (a batch), got shape {M.shape}")
    nb, m, n = M.shape
    a, b, M = _float_arrays(a, b, M)
    a = np.broadcast_to(a, (nb, m)) if a.ndim == 1 else a
    b = np.broadcast_to(b, (nb, n)) if b.ndim == 1 else b
    out = []
    for i, d in enumerate(_native.solve_batch(a, b, M, solver, **kw)):
        if isinstance(d, BaseException):
            raise type(d)(f"batch entry {i}: {d}") from d
        _warn_unless_converged(d, f"{solver} solve of batch entry {i}", "See result.termination.")
        out.append(_result(d, plan))
    return out


def route(logits: ArrayLike, mode: str = "experts-choose", capacity_factor: float = 1.0, experts_per_token: int = 1,
          capacity_multiple: int = 1, solver: str = "adam", device: str = "auto"):
    """Routes tokens to experts by sparsity-constrained OT.

    Args:
        logits: router logits, shape (groups, tokens, experts), float64 or float32.
        mode: ``"experts-choose"`` (each expert takes at most its capacity of tokens) or ``"tokens-choose"``
            (each token goes to at most ``experts_per_token`` experts).
        capacity_factor: expert capacity = ceil(experts_per_token * tokens * capacity_factor / experts),
            rounded up to a multiple of ``capacity_multiple``.
        solver: ``"adam"`` (the fixed 20-step recipe of the paper that introduced the router: fast,
            approximate; groups report not converged by design) or ``"accurate"`` (L-BFGS to 1e-6).
        device: ``"auto"``, ``"cpu"`` or ``"gpu"``.

    Returns ``(dispatch, combine, info)``: dispatch (bool, groups x tokens x experts: token routed to
    expert), combine (float64, the softmax gate of each routed pair, 0 elsewhere), and a dict with
    ``capacity``, ``dropped_tokens`` (routed to no expert), ``converged_groups`` and ``device``.
    """
    logits = np.asarray(logits)
    if logits.dtype not in (np.float32, np.float64):
        logits = logits.astype(np.float64)
    d = _native.route(logits, mode=mode, capacity_factor=float(capacity_factor),
                      experts_per_token=int(experts_per_token), capacity_multiple=int(capacity_multiple),
                      solver=solver, device=device)
    dispatch, combine = d.pop("dispatch"), d.pop("combine")
    return dispatch, combine, d


def describe_device(device: str = "auto") -> str:
    """One line saying where solves on ``device`` run and, for ``"auto"``, why."""
    return _native.describe_device(device)
