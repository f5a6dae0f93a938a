//! L-BFGS with a strong-Wolfe line search, written as a backend-agnostic state machine.
//!
//! The driver holds only scalars: it decides *what* to do next (evaluate at x + t·d, accept the last trial,
//! compute a new direction, restart with steepest descent, stop). A backend owns the vectors (host `Vec`s
//! on the CPU, buffers on the GPU) and does it. This keeps the logic of stopping, restarting and line
//! searching identical across devices, and lets a batch of problems run one driver each in lockstep.
//!
//! The objective is *minimised* (the solvers pass −S or −D). The line search is Nocedal & Wright's
//! Algorithm 3.5/3.6 (bracketing, then zoom by safeguarded cubic interpolation).

use crate::solution::{Criterion, Termination};

#[cfg(feature = "gpu")]
pub(crate) mod gpu;
pub(crate) mod host;

/// Settings of one L-BFGS run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    /// Stop when the gradient's max-norm is at most this (0 disables the test).
    pub tol: f64,
    /// Iteration limit (accepted steps).
    pub max_iter: usize,
    /// Sufficient-decrease constant.
    pub c1: f64,
    /// Curvature constant.
    pub c2: f64,
    /// Evaluations per line search before it is declared failed.
    pub max_evals: usize,
    /// Consecutive iterations with negligible decrease after which the run counts as stalled.
    pub stall_window: usize,
    /// The run also counts as stalled when the best gradient max-norm has not dropped by 20% over this many
    /// iterations (zig-zagging on the kinks of a nonsmooth objective).
    pub progress_window: usize,
    /// Relative rounding noise of objective values (1e-14 for f64 evaluations; larger for f32 devices).
    /// Below it values cannot be compared and line searches decide by the slope.
    pub value_noise: f64,
}

impl Settings {
    pub(crate) fn new(tol: f64, max_iter: usize) -> Self {
        Self {
            tol,
            max_iter,
            c1: 1e-4,
            c2: 0.9,
            max_evals: 30,
            stall_window: 10,
            progress_window: 100,
            value_noise: 1e-14,
        }
    }
}

/// What the backend reports after evaluating at a trial point x + t·d.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Eval {
    /// Objective (to minimise).
    pub value: f64,
    /// Directional derivative ∇f(x + t d) · d.
    pub slope: f64,
    /// Max-norm of the gradient at the trial point.
    pub grad_norm: f64,
}

/// What the driver asks the backend to do next.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Action {
    /// Evaluate at x + t·d and call [`Driver::on_eval`].
    Evaluate(f64),
    /// Make the last trial point the iterate (updating the memory), then call [`Driver::on_accept`].
    Accept,
    /// Compute d = −H·g from the memory and call [`Driver::on_direction`] with g·d.
    Direction,
    /// Clear the memory, set d = −g and call [`Driver::on_direction`] with g·d.
    Steepest,
    /// Stop.
    Stop(Termination),
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Start,
    /// Bracketing phase: `prev` is the previous trial (t, f, slope).
    Bracket {
        prev: (f64, f64, f64),
        evals: usize,
    },
    /// Zoom phase between `lo` (best, satisfies sufficient decrease) and `hi`.
    Zoom {
        lo: (f64, f64, f64),
        hi: (f64, f64, f64),
        evals: usize,
    },
    /// Re-evaluating the best point of a failed search, to accept it.
    Reevaluate,
    Idle,
}

/// The L-BFGS state machine for one problem.
#[derive(Debug, Clone)]
pub(crate) struct Driver {
    s: Settings,
    phase: Phase,
    /// f and slope at t = 0 of the current line search.
    f0: f64,
    slope0: f64,
    /// Objective and gradient norm at the current iterate.
    pub value: f64,
    pub grad_norm: f64,
    /// Accepted iterations.
    pub iterations: usize,
    last_trial: Option<Eval>,
    last_t: f64,
    steepest: bool,
    small_steps: usize,
    starting: bool,
    best_grad: f64,
    checkpoint_grad: f64,
}

impl Driver {
    pub(crate) fn new(s: Settings) -> Self {
        Self {
            s,
            phase: Phase::Start,
            f0: 0.0,
            slope0: 0.0,
            value: f64::NAN,
            grad_norm: f64::NAN,
            iterations: 0,
            last_trial: None,
            last_t: 0.0,
            steepest: false,
            small_steps: 0,
            starting: false,
            best_grad: f64::INFINITY,
            checkpoint_grad: f64::INFINITY,
        }
    }

    /// The first request: evaluate at the starting point.
    pub(crate) fn start(&self) -> Action {
        Action::Evaluate(0.0)
    }

    fn converged(&self, g: f64) -> bool {
        self.s.tol > 0.0 && g <= self.s.tol
    }

    fn after_iterate(&mut self) -> Action {
        if self.converged(self.grad_norm) {
            return Action::Stop(Termination::Converged(Criterion::MarginalError {
                tol: self.s.tol,
            }));
        }
        if self.iterations >= self.s.max_iter {
            return Action::Stop(Termination::MaxIterations);
        }
        if self.s.tol > 0.0 && self.small_steps >= self.s.stall_window {
            return Action::Stop(Termination::Stalled);
        }
        if self.iterations.is_multiple_of(self.s.progress_window) {
            if self.s.tol > 0.0 && self.best_grad > 0.8 * self.checkpoint_grad {
                return Action::Stop(Termination::Stalled);
            }
            self.checkpoint_grad = self.best_grad;
        }
        Action::Direction
    }

    /// Feed the evaluation requested by the last [`Action::Evaluate`].
    pub(crate) fn on_eval(&mut self, e: Eval) -> Action {
        let t = self.last_t;
        self.last_trial = Some(e);
        match self.phase {
            Phase::Start => {
                // The starting point becomes the iterate without a step.
                self.phase = Phase::Idle;
                self.starting = true;
                Action::Accept
            }
            Phase::Bracket { prev, evals } => {
                let cur = (t, e.value, e.slope);
                let evals = evals + 1;
                if !self.armijo(t, &e) || (evals > 1 && self.not_better(&e, prev.1)) {
                    return self.zoom(prev, cur, evals);
                }
                if e.slope.abs() <= -self.s.c2 * self.slope0 {
                    return self.accept();
                }
                if e.slope >= 0.0 {
                    return self.zoom(cur, prev, evals);
                }
                if evals >= self.s.max_evals {
                    return self.fail();
                }
                let next = t * 4.0;
                self.phase = Phase::Bracket { prev: cur, evals };
                self.request(next)
            }
            Phase::Zoom { lo, hi, evals } => {
                let cur = (t, e.value, e.slope);
                let evals = evals + 1;
                if !self.armijo(t, &e) || self.not_better(&e, lo.1) {
                    return self.zoom(lo, cur, evals);
                }
                if e.slope.abs() <= -self.s.c2 * self.slope0 {
                    return self.accept();
                }
                let hi = if e.slope * (hi.0 - lo.0) >= 0.0 {
                    lo
                } else {
                    hi
                };
                self.zoom(cur, hi, evals)
            }
            Phase::Reevaluate => self.accept(),
            Phase::Idle => Action::Stop(Termination::Stalled),
        }
    }

    /// Rounding noise of objective values near f0: below it, values cannot be compared, but slopes still can.
    fn noise(&self) -> f64 {
        self.s.value_noise * self.f0.abs().max(f64::MIN_POSITIVE)
    }

    /// Sufficient decrease. Within rounding noise of f0, a still-negative slope proves decrease, since the
    /// objectives minimised here are convex along lines.
    fn armijo(&self, t: f64, e: &Eval) -> bool {
        e.value.is_finite()
            && (e.value <= self.f0 + self.s.c1 * t * self.slope0
                || (e.value <= self.f0 + self.noise() && e.slope <= 0.0))
    }

    /// `e` is no better than a point of value `f_ref` (values within noise are told apart by the slope).
    fn not_better(&self, e: &Eval, f_ref: f64) -> bool {
        let noise = self.noise();
        e.value > f_ref + noise || (e.value >= f_ref - noise && e.slope > 0.0)
    }

    fn request(&mut self, t: f64) -> Action {
        self.last_t = t;
        Action::Evaluate(t)
    }

    /// Next trial inside [lo, hi] by safeguarded cubic interpolation.
    fn zoom(&mut self, lo: (f64, f64, f64), hi: (f64, f64, f64), evals: usize) -> Action {
        if evals >= self.s.max_evals
            || (hi.0 - lo.0).abs() <= 1e-16 * lo.0.abs().max(hi.0.abs()).max(1e-300)
        {
            // Accept the best point if it decreased the objective at all; otherwise the search failed.
            if lo.0 > 0.0 && lo.1 < self.f0 {
                return self.request_accept(lo);
            }
            return self.fail();
        }
        let t = cubic_min(lo, hi);
        let (a, b) = if lo.0 < hi.0 {
            (lo.0, hi.0)
        } else {
            (hi.0, lo.0)
        };
        let w = b - a;
        let t = if t.is_finite() && t > a + 0.1 * w && t < b - 0.1 * w {
            t
        } else {
            0.5 * (a + b)
        };
        self.phase = Phase::Zoom { lo, hi, evals };
        self.request(t)
    }

    /// The best point of a failed zoom is not the last evaluated one: re-evaluate it, then accept it.
    fn request_accept(&mut self, lo: (f64, f64, f64)) -> Action {
        self.phase = Phase::Reevaluate;
        self.request(lo.0)
    }

    fn accept(&mut self) -> Action {
        self.phase = Phase::Idle;
        Action::Accept
    }

    fn fail(&mut self) -> Action {
        self.phase = Phase::Idle;
        if !self.steepest {
            // Discard the curvature memory and retry along the steepest descent.
            return Action::Steepest;
        }
        if self.s.tol == 0.0 {
            // A fixed iteration budget was asked for: count the iteration without a move.
            self.iterations += 1;
            return self.after_iterate();
        }
        Action::Stop(Termination::Stalled)
    }

    /// Call after the backend accepted the last trial point.
    pub(crate) fn on_accept(&mut self) -> Action {
        let Some(e) = self.last_trial else {
            return Action::Stop(Termination::Stalled);
        };
        if self.starting {
            self.starting = false;
            self.best_grad = e.grad_norm;
            self.value = e.value;
            self.grad_norm = e.grad_norm;
            if !e.value.is_finite() {
                return Action::Stop(Termination::Stalled);
            }
            if self.converged(e.grad_norm) {
                return Action::Stop(Termination::Converged(Criterion::MarginalError {
                    tol: self.s.tol,
                }));
            }
            if self.s.max_iter == 0 {
                return Action::Stop(Termination::MaxIterations);
            }
            return Action::Direction;
        }
        // No progress: neither the objective (beyond rounding) nor the gradient's best max-norm improved.
        let decrease = self.value - e.value;
        if decrease <= 1e-15 * self.value.abs().max(1e-300) && e.grad_norm >= self.best_grad {
            self.small_steps += 1;
        } else {
            self.small_steps = 0;
        }
        self.best_grad = self.best_grad.min(e.grad_norm);
        self.value = e.value;
        self.grad_norm = e.grad_norm;
        self.iterations += 1;
        self.steepest = false;
        self.after_iterate()
    }

    /// Call with g·d after [`Action::Direction`] or [`Action::Steepest`]. `steepest` tells which it was.
    pub(crate) fn on_direction(&mut self, slope: f64, steepest: bool, initial_step: f64) -> Action {
        self.steepest = steepest;
        if slope.is_nan() || slope >= 0.0 {
            if steepest {
                // Zero gradient (or NaN): nothing more to do.
                return if slope == 0.0 {
                    Action::Stop(Termination::Converged(Criterion::MarginalError {
                        tol: self.s.tol,
                    }))
                } else {
                    Action::Stop(Termination::Stalled)
                };
            }
            return Action::Steepest;
        }
        self.f0 = self.value;
        self.slope0 = slope;
        self.phase = Phase::Bracket {
            prev: (0.0, self.value, slope),
            evals: 0,
        };
        self.request(initial_step)
    }
}

/// Minimiser of the cubic interpolating (t, f, f') at two points; NaN if it does not exist.
fn cubic_min(p: (f64, f64, f64), q: (f64, f64, f64)) -> f64 {
    let (t0, f0, g0) = p;
    let (t1, f1, g1) = q;
    let d1 = g0 + g1 - 3.0 * (f0 - f1) / (t0 - t1);
    let disc = d1 * d1 - g0 * g1;
    if disc < 0.0 {
        return f64::NAN;
    }
    let d2 = (t1 - t0).signum() * disc.sqrt();
    t1 - (t1 - t0) * (g1 + d2 - d1) / (g1 - g0 + 2.0 * d2)
}

/// The vector side of L-BFGS: owns x, g, d, the trial point and the curvature memory.
pub(crate) trait Backend {
    /// Evaluate the objective (to minimise) at x + t·d; keep the trial point and its gradient.
    fn evaluate(&mut self, t: f64) -> Eval;
    /// Make the last trial the iterate and push (s, y) into the memory (skipping pairs with s·y ≤ 0).
    fn accept(&mut self);
    /// d = −H g by the two-loop recursion; returns (g·d, suggested first step).
    fn direction(&mut self) -> (f64, f64);
    /// Clear the memory and set d = −g scaled; returns (g·d, suggested first step).
    fn steepest(&mut self) -> (f64, f64);
}

/// What one problem of a lockstep batch asks its device to do in one round, in this order: accept the last
/// trial point, then compute a new direction, or evaluate at a trial point.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Step {
    /// Make the last trial the iterate ([`Backend::accept`]).
    pub accept: bool,
    /// Compute a direction: `Some(false)` by the two-loop recursion, `Some(true)` steepest descent.
    pub direction: Option<bool>,
    /// Evaluate at x + t·d.
    pub evaluate: Option<f64>,
    /// With a direction: also evaluate at its suggested first step, in the same round (see
    /// [`Lockstep::speculates`]).
    pub first_trial: bool,
}

impl Step {
    /// Nothing to do: the problem has finished.
    pub(crate) fn is_idle(&self) -> bool {
        !self.accept && self.direction.is_none() && self.evaluate.is_none()
    }

    /// Whether the round evaluates the objective for this problem.
    #[cfg(feature = "gpu")]
    pub(crate) fn evaluates(&self) -> bool {
        self.evaluate.is_some() || self.first_trial
    }
}

/// What the device reports for one problem after a round: the evaluation or the direction asked for.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Reply {
    /// The evaluation, when the step asked for one (or for a first trial).
    pub eval: Option<Eval>,
    /// (g·d, suggested first step), when the step asked for a direction.
    pub direction: Option<(f64, f64)>,
}

/// The vector side of a batch of L-BFGS runs: one round serves every problem's [`Step`] at once (a device
/// backend records it as a fixed set of batched dispatches).
pub(crate) trait Lockstep {
    /// Performs `steps[p]` for every problem p and returns one reply per problem.
    fn round(&mut self, steps: &[Step]) -> Vec<Reply>;

    /// Whether a round that computes a direction should also evaluate its first trial point x + t₀·d
    /// ([`Step::first_trial`], t₀ the direction's suggested first step, chosen by the backend). The driver
    /// asks for exactly that point whenever the direction descends, so a backend for which a round is
    /// expensive (a blocking device readback) saves one round per iteration; when the direction does not
    /// descend the evaluation is discarded. Host backends compute on demand and say no.
    fn speculates(&self) -> bool {
        false
    }
}

/// A single-problem [`Backend`] as a batch of one.
struct One<'a, B: Backend>(&'a mut B);

impl<B: Backend> Lockstep for One<'_, B> {
    fn round(&mut self, steps: &[Step]) -> Vec<Reply> {
        steps
            .iter()
            .map(|s| {
                if s.accept {
                    self.0.accept();
                }
                Reply {
                    direction: s.direction.map(|steepest| {
                        if steepest {
                            self.0.steepest()
                        } else {
                            self.0.direction()
                        }
                    }),
                    eval: s.evaluate.map(|t| self.0.evaluate(t)),
                }
            })
            .collect()
    }
}

/// Runs one driver against one backend to the end; `observe` sees (driver) after every accepted step, and
/// `cancelled` is asked before every round (see [`run_lockstep`]).
pub(crate) fn run<B: Backend>(
    settings: Settings,
    backend: &mut B,
    mut observe: impl FnMut(&Driver),
    cancelled: &dyn Fn() -> bool,
) -> (Termination, Driver) {
    let mut out = run_lockstep(
        &[settings],
        &mut One(backend),
        |_, d| observe(d),
        |_, _| {},
        cancelled,
    );
    out.swap_remove(0)
}

/// Runs one driver per problem in lockstep until every problem has finished: each round collects every
/// unfinished problem's next [`Step`], has the backend perform them all, and feeds each reply to its own
/// driver, so every problem takes exactly the decisions it would take alone. `observe(p, driver)` sees
/// problem p after each of its accepted steps, `finished(p, termination)` when it stops. When `cancelled()`
/// turns true, every unfinished problem stops before the next round with [`Termination::Cancelled`], its
/// iterate the last accepted point (a pending trial is dropped). Returns (termination, driver) per problem.
///
/// With a speculating backend ([`Lockstep::speculates`]) a round that computes a direction also evaluates
/// its first trial point; the driver's request for that point is then answered from the same reply, so an
/// iteration whose first trial is accepted costs one round instead of two, and every decision is the one the
/// driver would take without speculation.
pub(crate) fn run_lockstep<L: Lockstep>(
    settings: &[Settings],
    backend: &mut L,
    mut observe: impl FnMut(usize, &Driver),
    mut finished_hook: impl FnMut(usize, Termination),
    cancelled: &dyn Fn() -> bool,
) -> Vec<(Termination, Driver)> {
    let mut drivers: Vec<Driver> = settings.iter().map(|&s| Driver::new(s)).collect();
    let mut pending: Vec<Option<Action>> = drivers.iter().map(|d| Some(d.start())).collect();
    let mut finished = vec![Termination::Stalled; drivers.len()];
    loop {
        if cancelled() {
            for (p, action) in pending.iter_mut().enumerate() {
                if action.take().is_some() {
                    finished[p] = Termination::Cancelled;
                    finished_hook(p, Termination::Cancelled);
                }
            }
            break;
        }
        let mut steps = vec![Step::default(); drivers.len()];
        for (p, step) in steps.iter_mut().enumerate() {
            let mut action = pending[p].take();
            // Accepting needs no device answer (the driver decides from the trial already reported), so an
            // accept and the direction after it share a round.
            while let Some(a) = action.take() {
                match a {
                    Action::Evaluate(t) => step.evaluate = Some(t),
                    Action::Direction => step.direction = Some(false),
                    Action::Steepest => step.direction = Some(true),
                    Action::Stop(t) => {
                        finished[p] = t;
                        finished_hook(p, t);
                    }
                    Action::Accept => {
                        step.accept = true;
                        let next = drivers[p].on_accept();
                        observe(p, &drivers[p]);
                        action = Some(next);
                    }
                }
            }
        }
        if steps.iter().all(Step::is_idle) {
            break;
        }
        if backend.speculates() {
            for step in steps.iter_mut() {
                step.first_trial = step.direction.is_some() && step.evaluate.is_none();
            }
        }
        let replies = backend.round(&steps);
        for (p, (step, reply)) in steps.iter().zip(replies).enumerate() {
            pending[p] = match (step.direction, reply.direction, step.evaluate, reply.eval) {
                (Some(steepest), Some((slope, t0)), _, eval) => {
                    let next = drivers[p].on_direction(slope, steepest, t0);
                    match (next, eval) {
                        // The point the driver asks for was evaluated in this round already.
                        (Action::Evaluate(t), Some(e)) if step.first_trial && t == t0 => {
                            Some(drivers[p].on_eval(e))
                        }
                        _ => Some(next),
                    }
                }
                (_, _, Some(_), Some(e)) => Some(drivers[p].on_eval(e)),
                // No answer where one was asked for (a device error, kept by the backend): the problem
                // stops here.
                _ if step.direction.is_some() || step.evaluate.is_some() => {
                    finished_hook(p, Termination::Stalled);
                    None
                }
                _ => None,
            };
        }
    }
    finished.into_iter().zip(drivers).collect()
}
