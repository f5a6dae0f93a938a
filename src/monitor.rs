//! Watching and stopping long solves: one [`Monitor`] for single solves, batches and the router.
//!
//! A monitor is set once on a solver configuration ([`crate::SparseOt::monitor`],
//! [`crate::Sinkhorn::monitor`], [`crate::ExactOt::monitor`], [`crate::Router::monitor`]); every entry point
//! of that configuration then reports to it, so observation needs no entry points of its own.
//!
//! * **Events.** A single solve reports an [`Event::Step`] after every iteration (every marginal-error check
//!   for Sinkhorn); a batch or a routing reports an [`Event::Finished`] each time one more problem (group) has
//!   its result. Events may come from worker threads.
//! * **Cancellation.** [`Monitor::cancel`] (from any thread, through a clone) asks every solve watched by the
//!   monitor to stop at its next iteration. A stopped solve is not an error: it returns its current state
//!   (the last accepted potentials and their plan) with [`crate::Termination::Cancelled`]. A monitor stays
//!   cancelled; start the next solve with a new one.
//!
//! ```
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::sync::Arc;
//! use sparse_ot::{golden_problem, Event, Monitor, SparseOt, Termination};
//!
//! let steps = Arc::new(AtomicUsize::new(0));
//! let seen = steps.clone();
//! let monitor = Monitor::new().on_event(move |e| {
//!     if let Event::Step(_) = e {
//!         seen.fetch_add(1, Ordering::Relaxed);
//!     }
//! });
//! let sol = SparseOt::quadratic(0.1)?.monitor(monitor.clone()).solve(&golden_problem())?;
//! assert!(sol.converged() && steps.load(Ordering::Relaxed) > 0);
//!
//! monitor.cancel(); // e.g. from a UI thread; here before the solve starts
//! let sol = SparseOt::quadratic(0.1)?.monitor(monitor).solve(&golden_problem())?;
//! assert_eq!(sol.termination, Termination::Cancelled);
//! # Ok::<(), sparse_ot::Error>(())
//! ```

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// A snapshot of a running solve, carried by [`Event::Step`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Iterations done so far (all stages together).
    pub iteration: usize,
    /// Current objective of the formulation being solved (for Sinkhorn: NaN between error checks).
    pub value: f64,
    /// Current max-norm marginal violation (the gradient's max-norm).
    pub marginal_error: f64,
    /// A short name of the current stage (`"lbfgs"`, `"smoothing newton"`, `"sinkhorn"`, …).
    pub stage: &'static str,
}

/// What a [`Monitor`] hears of.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Event<'a> {
    /// A single solve made a step.
    Step(&'a Progress),
    /// One more problem of a batch (or group of a routing) has its result: `done` of `total`, rejected
    /// problems and problems ended by a device failure included.
    Finished {
        /// Problems with a result so far.
        done: usize,
        /// Problems in the batch.
        total: usize,
    },
}

type Observer = dyn Fn(&Event<'_>) + Send + Sync;

/// Observes and cancels solves; cheap to clone (clones share the observer and the cancellation flag).
///
/// Set once on a solver configuration, it sees every entry point of that configuration: an [`Event::Step`]
/// after every iteration of a single solve (every marginal-error check for Sinkhorn), an
/// [`Event::Finished`] each time one more problem of a batch (or group of a routing) has its result.
/// [`Monitor::cancel`] stops every solve it watches at the next iteration; a stopped solve is not an error
/// but returns its current state with [`crate::Termination::Cancelled`].
#[derive(Clone, Default)]
pub struct Monitor {
    observer: Option<Arc<Observer>>,
    cancelled: Arc<AtomicBool>,
}

impl Monitor {
    /// A monitor that observes nothing and is not cancelled (what every configuration starts with).
    pub fn new() -> Self {
        Self::default()
    }

    /// Calls `observer` with every event (from the solving threads; keep it short).
    pub fn on_event(mut self, observer: impl Fn(&Event<'_>) + Send + Sync + 'static) -> Self {
        self.observer = Some(Arc::new(observer));
        self
    }

    /// Asks every solve watched by this monitor (or a clone) to stop at its next iteration.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    /// Whether [`Monitor::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Reports a step of a single solve.
    pub(crate) fn step(&self, progress: &Progress) {
        if let Some(o) = &self.observer {
            o(&Event::Step(progress));
        }
    }

    /// The same cancellation flag without the observer: for the problems of a batch, whose progress is
    /// reported per problem ([`Tally`]) rather than per step.
    pub(crate) fn quiet(&self) -> Monitor {
        Monitor {
            observer: None,
            cancelled: self.cancelled.clone(),
        }
    }
}

impl fmt::Debug for Monitor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Monitor")
            .field("observes", &self.observer.is_some())
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

impl PartialEq for Monitor {
    /// Two monitors are equal when they are clones of one another (same observer, same flag).
    fn eq(&self, other: &Self) -> bool {
        let same_observer = match (&self.observer, &other.observer) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        same_observer && Arc::ptr_eq(&self.cancelled, &other.cancelled)
    }
}

/// Counts the problems of a batch as their results become ready and reports each to the monitor as
/// [`Event::Finished`]; shared by every batched solver (CPU, GPU, router).
pub(crate) struct Tally<'m> {
    monitor: &'m Monitor,
    total: usize,
    done: AtomicUsize,
}

impl<'m> Tally<'m> {
    /// Nothing done yet of `total` problems.
    pub(crate) fn new(monitor: &'m Monitor, total: usize) -> Self {
        Self {
            monitor,
            total,
            done: AtomicUsize::new(0),
        }
    }

    /// One more problem has its result (from any thread).
    pub(crate) fn tick(&self) {
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(o) = &self.monitor.observer {
            o(&Event::Finished {
                done,
                total: self.total,
            });
        }
    }

    /// Reports every problem not reported yet (after a failure that ends them all).
    #[cfg(feature = "gpu")]
    pub(crate) fn complete(&self) {
        while self.done.load(Ordering::Relaxed) < self.total {
            self.tick();
        }
    }
}
