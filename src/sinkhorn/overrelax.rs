//! Over-relaxed Sinkhorn for the slow regime (small ε relative to the cost range): each update moves a
//! potential ω times as far as Sinkhorn's own, x ← x + ω (x' − x), with ω ∈ [1, 2).
//!
//! Near its fixed point Sinkhorn converges linearly with a rate ρ per iteration that tends to 1 as ε shrinks
//! (e.g. ρ ≈ 0.999 needs ~20 000 iterations for nine digits). Linearised there, the alternating updates are
//! a block Gauss–Seidel sweep on a symmetric positive semidefinite system, and successive over-relaxation
//! with ω* = 2 / (1 + √(1 − ρ)) turns the rate into about ω* − 1 (ρ = 0.999 gives ω* ≈ 1.94 and a rate near
//! 0.94): the classical SOR result for consistently ordered systems, which the bipartite row/column
//! structure of the kernel makes this one.
//!
//! The policy is conservative, because the linearisation holds only near the fixed point and a wrong ω can
//! slow or stall the iteration:
//! * only the last ε stage of a solve with a tolerance is relaxed (fixed-iteration runs are plain Sinkhorn);
//! * ω stays 1 until two consecutive checks measure nearly the same rate ρ ≥ [`SLOW_RATE`] (the iteration is
//!   in its asymptotic regime and slow enough to gain), then is set to min(ω*, [`OMEGA_MAX`]);
//! * where the error still falls slowly (small ε with very uneven masses decays sublinearly, like 1/t, before
//!   the linear regime: there is no single rate to tune to), ω moves towards 2 check by check;
//! * where the measured error grows, ω − 1 is halved;
//! * the updates just before and at a check are plain, so the state a check measures (and may return) has
//!   exact column marginals and the check's row error is Sinkhorn's own estimate.

/// Rates (error factor per iteration) below this converge fast enough as they are.
pub(crate) const SLOW_RATE: f64 = 0.9;
/// The largest first ω.
pub(crate) const OMEGA_MAX: f64 = 1.9;
/// While the relaxed iteration stays slow, each check moves ω this fraction of the way to 2, up to
/// [`OMEGA_CAP`].
pub(crate) const RAISE: f64 = 0.25;
/// The largest ω ever used.
pub(crate) const OMEGA_CAP: f64 = 1.99;

/// The relaxation state of one solve's last stage.
#[derive(Debug, Clone)]
pub(crate) struct Overrelaxation {
    omega: f64,
    /// The error and rate at the previous check.
    last: Option<(f64, Option<f64>)>,
    /// ω has left 1 (it is adapted from then on).
    decided: bool,
}

impl Overrelaxation {
    /// A relaxation that starts at ω = 1.
    pub(crate) fn new() -> Self {
        Self {
            omega: 1.0,
            last: None,
            decided: false,
        }
    }

    /// The ω of an update.
    pub(crate) fn omega(&self) -> f64 {
        self.omega
    }

    /// Takes the row error `err` measured at a check, `every` iterations after the previous one.
    pub(crate) fn observe(&mut self, err: f64, every: usize) {
        let Some((prev, prev_rate)) = self.last else {
            self.last = Some((err, None));
            return;
        };
        let rate = (err > 0.0 && prev > 0.0).then(|| (err / prev).powf(1.0 / every as f64));
        if self.decided {
            if err > prev {
                self.omega = 1.0 + 0.5 * (self.omega - 1.0);
            } else if rate.is_some_and(|r| r >= SLOW_RATE) {
                self.omega = (self.omega + RAISE * (2.0 - self.omega)).min(OMEGA_CAP);
            }
        } else if let (Some(r), Some(q)) = (rate, prev_rate) {
            let steady = (r - q).abs() <= 0.1 * (1.0 - r);
            if (SLOW_RATE..1.0).contains(&r) && steady {
                self.omega = (2.0 / (1.0 + (1.0 - r).sqrt())).min(OMEGA_MAX);
                self.decided = true;
            }
        }
        self.last = Some((err, rate));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn omega_is_set_on_a_steady_slow_rate_then_adapted() {
        let mut r = Overrelaxation::new();
        r.observe(1.0, 10);
        assert_eq!(r.omega(), 1.0);
        // Rate 0.99 per iteration, twice.
        r.observe(0.99f64.powi(10), 10);
        assert_eq!(r.omega(), 1.0, "one rate is not yet steady");
        r.observe(0.99f64.powi(20), 10);
        let first = 2.0 / (1.0 + 0.01f64.sqrt());
        assert!((r.omega() - first).abs() < 1e-9, "{}", r.omega());
        // Fast progress keeps it.
        r.observe(0.5f64.powi(10) * 0.99f64.powi(20), 10);
        assert!((r.omega() - first).abs() < 1e-9, "{}", r.omega());
        // Growth halves ω − 1.
        r.observe(1e-2, 10);
        assert!((r.omega() - (1.0 + 0.5 * (first - 1.0))).abs() < 1e-9);
        // Slow progress moves ω a quarter of the way to 2, never past the cap.
        let before = r.omega();
        r.observe(0.999e-2, 10);
        assert!((r.omega() - (before + RAISE * (2.0 - before))).abs() < 1e-9);
        for k in 0..100 {
            r.observe(0.999e-2 * 0.9999f64.powi(k), 10);
        }
        assert_eq!(r.omega(), OMEGA_CAP);
    }

    #[test]
    fn fast_or_unsteady_rates_leave_plain_sinkhorn() {
        let mut r = Overrelaxation::new();
        for k in 0..5 {
            r.observe(0.5f64.powi(10 * k), 10);
        }
        assert_eq!(r.omega(), 1.0);
        let mut r = Overrelaxation::new();
        for (k, e) in [1.0, 0.9, 0.3, 0.29, 0.05].into_iter().enumerate() {
            r.observe(e, 10);
            assert_eq!(r.omega(), 1.0, "check {k}");
        }
    }
}
