"""Type stubs of the compiled module ``sparse_ot._native`` (see ``python/src/lib.rs``)."""

from typing import Any, Dict, List, Optional, Union

import numpy as np
import numpy.typing as npt

__version__: str

# A solution dict: "shape" (m, n); "plan" (dense float64 m x n) or "plan_rows", "plan_cols" (int64) and
# "plan_values" (float64) for a sparse plan; "alpha", "beta" (float64); "value", "transport_cost",
# "marginal_error_rows", "marginal_error_cols" (float); "iterations" (int); "converged" (bool);
# "termination", "termination_kind", "device" (str); "plan_kind" (str: "gradient", "relaxed" or "feasible"; None
# for sinkhorn and exact) and "plan_gap" (float or None: the plan's objective minus the dual value).
Solution = Dict[str, Any]

def solve(
    a: npt.NDArray[Union[np.float64, np.float32]],
    b: npt.NDArray[Union[np.float64, np.float32]],
    cost: npt.NDArray[Union[np.float64, np.float32]],
    solver: str,
    reg: Optional[float] = None,
    k: Optional[int] = None,
    formulation: str = "semi-dual",
    max_iter: Optional[int] = None,
    tol: Optional[float] = None,
    device: str = "auto",
    plan_kind: str = "gradient",
) -> Solution: ...
def solve_batch(
    a: npt.NDArray[Union[np.float64, np.float32]],
    b: npt.NDArray[Union[np.float64, np.float32]],
    cost: npt.NDArray[Union[np.float64, np.float32]],
    solver: str,
    reg: Optional[float] = None,
    k: Optional[int] = None,
    formulation: str = "semi-dual",
    max_iter: Optional[int] = None,
    tol: Optional[float] = None,
    device: str = "auto",
    plan_kind: str = "gradient",
) -> List[Union[Solution, Exception]]: ...
def route(
    logits: npt.NDArray[Union[np.float64, np.float32]],
    mode: str = "experts-choose",
    capacity_factor: float = 1.0,
    experts_per_token: int = 1,
    capacity_multiple: int = 1,
    solver: str = "adam",
    device: str = "auto",
) -> Dict[str, Any]: ...
def describe_device(device: str = "auto") -> str: ...
def pairwise_cost(
    x: npt.NDArray[Union[np.float64, np.float32]],
    y: npt.NDArray[Union[np.float64, np.float32]],
    p: Optional[float] = None,
    q: Optional[float] = None,
) -> npt.NDArray[np.float64]: ...
