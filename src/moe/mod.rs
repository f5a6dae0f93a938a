//! Mixture-of-experts routing by sparsity-constrained OT (docs/MATH.md §7), and the greedy top-k baseline.
//!
//! Router logits come as G groups × S tokens × E experts. Per group, the gates are G = softmax(logits) over
//! experts, the cost is −G, every token carries mass 1 and every expert S/E (balanced load), γ = 1:
//!
//! * **experts choose tokens** ([`Router::experts_choose`]): rows are tokens, columns experts, and each expert
//!   (column) keeps at most k = capacity = ⌈S · capacity_factor / E⌉ tokens (optionally rounded up to a
//!   multiple, 4 in the paper). The k-sparse plan *guarantees* the capacity; a token whose row of the plan is
//!   empty is dropped.
//! * **tokens choose experts** ([`Router::tokens_choose`]): the same problem with the k limit on rows: each
//!   token goes to at most k experts (row sparsity, i.e. the transposed problem).
//!
//! Dispatch is the support of the plan; the combine weight of a routed (token, expert) pair is its gate.
//! Two solvers: the authors' recipe ([`RouterSolver::AUTHORS`]: semi-dual, Adam, learning rate 1e-2,
//! 20 steps from α = 0) and the accurate L-BFGS solver of [`SparseOt`]. Groups are independent problems of
//! one shape and are solved as a [`Batch`]: in parallel on the CPU; on a GPU ([`Router::route_on`]) the
//! authors' recipe runs the whole batch at once (each Adam step is a fixed number of dispatches covering
//! every group, see [`SparseOt::solve_batch_adam_on`]) and the accurate solver runs the L-BFGS phases of all
//! groups in lockstep, each round a fixed set of dispatches covering every group ([`SparseOt::solve_batch_on`]).
//!
//! ```
//! use ndarray::Array3;
//! use sparse_ot::moe::Router;
//!
//! let logits = Array3::from_shape_fn((2, 8, 4), |(g, s, e)| ((g + 3 * s + 5 * e) % 7) as f64 * 0.3);
//! let router = Router::experts_choose(1.0)?;
//! let routing = router.route(logits.view())?;
//! assert!(routing.load.tokens_per_expert.max <= routing.capacity as f64);
//! # Ok::<(), sparse_ot::Error>(())
//! ```

#[cfg(feature = "gpu")]
mod gpu;
mod greedy;
mod metrics;
mod routing;

use ndarray::{Array1, Array3, ArrayView3, Axis};

use crate::batch::Batch;
use crate::device::Device;
use crate::error::{at_least_one, positive, Error, Result};
use crate::monitor::Monitor;
use crate::solution::RanOn;
use crate::sparse::settings::SparseOt;

#[cfg(feature = "gpu")]
pub use gpu::GpuRouting;
pub use greedy::greedy_top_k;
pub use metrics::{GroupReport, LoadMetrics, Stats};
pub use routing::{gates, Routing};

/// Which side chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoutingMode {
    /// Each expert keeps at most `capacity` tokens (column sparsity).
    ExpertsChooseTokens,
    /// Each token goes to at most `experts_per_token` experts (row sparsity).
    TokensChooseExperts,
}

/// How the router's OT problems are solved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RouterSolver {
    /// Adam ascent on the semi-dual from α = 0 for a fixed number of steps (the paper's recipe).
    Adam {
        /// Step size.
        learning_rate: f64,
        /// Number of steps.
        steps: usize,
    },
    /// L-BFGS on the semi-dual ([`SparseOt`]) until the marginal error is ≤ `tol` or `max_iter` is reached.
    Accurate {
        /// Tolerance on the max-norm marginal violation.
        tol: f64,
        /// Iteration limit.
        max_iter: usize,
    },
}

impl RouterSolver {
    /// The paper's recipe: Adam, learning rate 1e-2, 20 steps.
    pub const AUTHORS: RouterSolver = RouterSolver::Adam {
        learning_rate: 1e-2,
        steps: 20,
    };

    /// L-BFGS (with the nonsmooth stage of [`SparseOt`]) to tolerance 1e-6, at most [`crate::DEFAULT_MAX_ITER`] iterations.
    pub const ACCURATE: RouterSolver = RouterSolver::Accurate {
        tol: 1e-6,
        max_iter: crate::sparse::settings::DEFAULT_MAX_ITER,
    };
}

/// A validated router configuration. See the [module docs](self).
#[derive(Debug, Clone, PartialEq)]
pub struct Router {
    mode: RoutingMode,
    capacity_factor: f64,
    experts_per_token: usize,
    capacity_multiple: usize,
    solver: RouterSolver,
    monitor: Monitor,
}

impl Router {
    /// Experts choose tokens with capacity ⌈S · `capacity_factor` / E⌉ per expert; solver
    /// [`RouterSolver::AUTHORS`]. Errors: a capacity factor that is not finite and > 0.
    pub fn experts_choose(capacity_factor: f64) -> Result<Self> {
        Ok(Self {
            mode: RoutingMode::ExpertsChooseTokens,
            capacity_factor: positive("capacity_factor", capacity_factor)?,
            experts_per_token: 1,
            capacity_multiple: 1,
            solver: RouterSolver::AUTHORS,
            monitor: Monitor::new(),
        })
    }

    /// Tokens choose at most `experts_per_token` experts each; solver [`RouterSolver::AUTHORS`].
    /// Errors: 0 ([`Error::InvalidK`]); a value above E is reported when routing.
    pub fn tokens_choose(experts_per_token: usize) -> Result<Self> {
        if experts_per_token == 0 {
            return Err(Error::InvalidK {
                k: 0,
                max: usize::MAX,
                axis: "experts",
            });
        }
        Ok(Self {
            mode: RoutingMode::TokensChooseExperts,
            capacity_factor: 1.0,
            experts_per_token,
            capacity_multiple: 1,
            solver: RouterSolver::AUTHORS,
            monitor: Monitor::new(),
        })
    }

    /// Rounds the capacity up to a multiple of `q` (the paper uses 4). Errors: 0.
    pub fn capacity_multiple(mut self, q: usize) -> Result<Self> {
        self.capacity_multiple = at_least_one("capacity_multiple", q)?;
        Ok(self)
    }

    /// Chooses the solver. Errors: a learning rate that is not finite and > 0, a negative or non-finite tol.
    pub fn solver(mut self, solver: RouterSolver) -> Result<Self> {
        match solver {
            RouterSolver::Adam { learning_rate, .. } => {
                positive("learning_rate", learning_rate)?;
            }
            RouterSolver::Accurate { tol, .. } => {
                crate::error::nonnegative("tol", tol)?;
            }
        }
        self.solver = solver;
        Ok(self)
    }

    /// The routing mode.
    pub fn mode(&self) -> RoutingMode {
        self.mode
    }

    /// The solver.
    pub fn current_solver(&self) -> RouterSolver {
        self.solver
    }

    /// Sets the capacity factor (default 1 for tokens-choose). Errors: not finite and > 0.
    pub fn capacity_factor(mut self, capacity_factor: f64) -> Result<Self> {
        self.capacity_factor = positive("capacity_factor", capacity_factor)?;
        Ok(self)
    }

    /// Experts per token: k of tokens-choose, 1 for experts-choose.
    pub fn experts_per_token(&self) -> usize {
        self.experts_per_token
    }

    /// Expert capacity for S tokens and E experts: ⌈K · S · capacity_factor / E⌉ (K = experts per token,
    /// 1 when experts choose) rounded up to the capacity multiple. Experts-choose enforces it (a capacity
    /// of S or more places no limit); tokens-choose and the greedy router report experts above it.
    pub fn capacity(&self, tokens: usize, experts: usize) -> usize {
        let slots = (self.experts_per_token * tokens) as f64 * self.capacity_factor;
        // `as` saturates; so do the rounding steps, so a huge factor gives a huge capacity (no limit).
        let raw = (slots / experts.max(1) as f64).ceil() as usize;
        raw.div_ceil(self.capacity_multiple)
            .saturating_mul(self.capacity_multiple)
    }

    /// Reports each solved group to `monitor` ([`crate::Event::Finished`]), which can also cancel the
    /// routing: the groups not solved yet then end `Cancelled` (see [`Monitor`]).
    pub fn monitor(mut self, monitor: Monitor) -> Self {
        self.monitor = monitor;
        self
    }

    /// Routes f64 logits (G × S × E) on the CPU.
    ///
    /// Errors: empty logits, NaN/inf in a group ([`Error::InBatch`] naming the group), experts per token
    /// above E, or a group whose solve fails (also [`Error::InBatch`]).
    pub fn route(&self, logits: ArrayView3<f64>) -> Result<Routing> {
        self.route_on(logits, &Device::Cpu)
    }

    /// Routes f32 logits (widened to f64) on the CPU.
    pub fn route_f32(&self, logits: ArrayView3<f32>) -> Result<Routing> {
        self.route(logits.mapv(f64::from).view())
    }

    /// Routes f64 logits (G × S × E) on `device`. On a GPU the authors' recipe solves all G groups as one
    /// batch (f32, one fixed set of dispatches per Adam step whatever G is); the accurate solver runs all
    /// groups' L-BFGS in lockstep (one fixed set of dispatches per round whatever G is). [`Routing::device`]
    /// says where it ran. The monitor hears of each group as it is solved: on the CPU as each finishes; on
    /// a GPU the recipe's groups are all ready at once (their steps are one submission), the accurate
    /// solver's as each group's L-BFGS (or CPU continuation) ends.
    ///
    /// Errors: as [`Router::route`].
    pub fn route_on(&self, logits: ArrayView3<f64>, device: &Device) -> Result<Routing> {
        let gates = gates(logits)?;
        let (_, s, e) = gates.dim();
        if self.mode == RoutingMode::TokensChooseExperts && self.experts_per_token > e {
            return Err(Error::InvalidK {
                k: self.experts_per_token,
                max: e,
                axis: "experts",
            });
        }
        let capacity = self.capacity(s, e);
        let cfg = self.sparse_config(s, e)?;
        let cost = gates.mapv(|x| -x);
        let batch = Batch::shared_marginals(
            Array1::from_elem(s, 1.0).view(),
            Array1::from_elem(e, s as f64 / e as f64).view(),
            cost.view(),
        )?;
        let results = match self.solver {
            RouterSolver::Adam {
                learning_rate,
                steps,
            } => cfg.solve_batch_adam_on(&batch, learning_rate, steps, device)?,
            RouterSolver::Accurate { .. } => cfg.solve_batch_on(&batch, device),
        };
        let mut ran_on = RanOn::Cpu;
        let (g, s, e) = gates.dim();
        let mut dispatch = Array3::from_elem((g, s, e), false);
        let mut reports = Vec::with_capacity(g);
        for (index, result) in results.into_iter().enumerate() {
            let sol = result.map_err(|source| Error::InBatch {
                index,
                source: Box::new(source),
            })?;
            let mut d = dispatch.index_axis_mut(Axis(0), index);
            for (i, j, _) in sol.plan.triplets() {
                d[[i, j]] = true;
            }
            reports.push(GroupReport::from(&sol));
            ran_on = sol.device;
        }
        let mut routing = Routing::new(dispatch, &gates, capacity, reports);
        routing.device = ran_on;
        Ok(routing)
    }

    /// Routes f32 logits that already live in a GPU buffer, without any host round trip: softmax gates, the G
    /// OT problems, the recipe's Adam steps and the routing run on the device in one submission, and the
    /// result stays in new GPU buffers ([`GpuRouting`]: per group and expert, the
    /// tokens it takes and their combine weights). This is the path for training loops whose router logits
    /// are on the GPU; it gives the routing of [`Router::route_on`] with the same GPU (up to f32 rounding
    /// of the gates, computed here from f32 logits).
    ///
    /// `logits` holds G × S × E f32 row-major from offset 0 (`shape` = (G, S, E); the buffer may be larger)
    /// with `STORAGE` usage on `ctx`'s device. The values are not checked (that would need a readback): they
    /// must be finite.
    ///
    /// The call returns once the work is submitted, not when it is done: the results are ordered before any
    /// later work on `ctx`'s queue, and reading them on the host means mapping them (which waits). Logits
    /// written by the application's own commands must be submitted before the call. Errors the device raises
    /// while executing (out of memory, device lost) surface later, at the next library call on `ctx` or in
    /// the application's error handler for an adopted device.
    ///
    /// Errors: a mode other than experts choose tokens or a solver other than the Adam recipe
    /// ([`Error::Unavailable`]), an empty shape ([`Error::Empty`]), a buffer smaller than the shape
    /// ([`Error::ShapeMismatch`]), sizes beyond the device's limits ([`Error::DeviceLimit`]), a buffer the
    /// device rejects, e.g. without `STORAGE` usage or from another device ([`Error::Gpu`]).
    #[cfg(feature = "gpu")]
    pub fn route_buffers(
        &self,
        ctx: &crate::gpu::context::GpuContext,
        logits: &wgpu::Buffer,
        shape: (usize, usize, usize),
    ) -> Result<GpuRouting> {
        self.route_buffer_at(ctx, logits, 0, shape)
    }

    /// [`Router::route_buffers`] for logits that start `offset` bytes into `logits` (e.g. a tensor that
    /// is a slice of a framework's pooled allocation). The offset must be a multiple of the device's
    /// `min_storage_buffer_offset_alignment`, and the buffer must hold G × S × E f32 after it.
    ///
    /// Errors: as [`Router::route_buffers`], and a misaligned offset ([`Error::InvalidParameter`]).
    #[cfg(feature = "gpu")]
    pub fn route_buffer_at(
        &self,
        ctx: &crate::gpu::context::GpuContext,
        logits: &wgpu::Buffer,
        offset: u64,
        shape: (usize, usize, usize),
    ) -> Result<GpuRouting> {
        let (_, s, e) = shape;
        if self.mode != RoutingMode::ExpertsChooseTokens {
            return Err(Error::Unavailable {
                what: "tokens-choose routing on GPU buffers",
                why: "route_buffers implements experts choose tokens; use route_on".into(),
            });
        }
        let RouterSolver::Adam {
            learning_rate,
            steps,
        } = self.solver
        else {
            return Err(Error::Unavailable {
                what: "the accurate solver on GPU buffers",
                why: "route_buffers runs the Adam recipe; use route_on for the accurate solver"
                    .into(),
            });
        };
        if s == 0 || e == 0 {
            return Err(Error::Empty { what: "logits" });
        }
        let cfg = self.sparse_config(s, e)?;
        let adam = crate::sparse::adam::Adam::new(learning_rate, steps)?;
        let capacity = self.capacity(s, e).min(s);
        gpu::route(ctx, &cfg, adam, (logits, offset), shape, capacity)
    }

    /// The column- or row-sparse solver configuration for S tokens.
    fn sparse_config(&self, tokens: usize, experts: usize) -> Result<SparseOt> {
        let cfg = match self.mode {
            // A capacity of S or more is no limit: k = S (quadratic OT over each expert's column).
            RoutingMode::ExpertsChooseTokens => {
                SparseOt::new(self.capacity(tokens, experts).min(tokens), 1.0)?
            }
            RoutingMode::TokensChooseExperts => {
                SparseOt::new(self.experts_per_token, 1.0)?.row_sparsity()
            }
        };
        let cfg = cfg.monitor(self.monitor.clone());
        Ok(match self.solver {
            RouterSolver::Adam { .. } => cfg,
            RouterSolver::Accurate { tol, max_iter } => cfg.tol(tol)?.max_iter(max_iter),
        })
    }
}
