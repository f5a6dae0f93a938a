//! What a routing reports: per-group solver reports and load metrics of the dispatch.

use ndarray::{ArrayView3, Axis};

use crate::solution::{Solution, Termination};

/// How one group's OT problem was solved.
///
/// The mass errors are measured on the returned k-sparse plan. When the accurate solver certifies optimality
/// by a duality gap at a point with ties (e.g. identical gates), the optimum is a mix of tied plans and the
/// one plan returned can miss the token masses; the capacity (k limit) holds in every case.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroupReport {
    /// Why the solver stopped.
    pub termination: Termination,
    /// Iterations (Adam steps or L-BFGS iterations).
    pub iterations: usize,
    /// max over tokens of |routed mass − 1| in the plan.
    pub token_mass_error: f64,
    /// max over experts of |routed mass − S/E| in the plan.
    pub expert_mass_error: f64,
}

impl From<&Solution> for GroupReport {
    fn from(sol: &Solution) -> Self {
        Self {
            termination: sol.termination,
            iterations: sol.iterations,
            token_mass_error: sol.marginal_error_rows,
            expert_mass_error: sol.marginal_error_cols,
        }
    }
}

/// min / mean / max of a count over a population.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    /// Smallest value.
    pub min: f64,
    /// Mean value.
    pub mean: f64,
    /// Largest value.
    pub max: f64,
}

impl Stats {
    fn of(values: impl Iterator<Item = usize>) -> Self {
        let (mut min, mut max, mut sum, mut count) = (usize::MAX, 0, 0usize, 0usize);
        for v in values {
            min = min.min(v);
            max = max.max(v);
            sum += v;
            count += 1;
        }
        if count == 0 {
            return Self {
                min: 0.0,
                mean: 0.0,
                max: 0.0,
            };
        }
        Self {
            min: min as f64,
            mean: sum as f64 / count as f64,
            max: max as f64,
        }
    }
}

/// Load metrics of a dispatch (over all groups).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadMetrics {
    /// Tokens routed to each expert, over all (group, expert) pairs.
    pub tokens_per_expert: Stats,
    /// Experts each token is routed to, over all (group, token) pairs.
    pub experts_per_token: Stats,
    /// Tokens routed to no expert.
    pub dropped_tokens: usize,
    /// All tokens (G · S).
    pub tokens: usize,
    /// (group, expert) pairs holding more tokens than the capacity (0 whenever experts choose).
    pub experts_over_capacity: usize,
}

impl LoadMetrics {
    /// Computes the metrics of a G × S × E dispatch mask against an expert capacity.
    pub fn of(dispatch: ArrayView3<bool>, capacity: usize) -> Self {
        let count = |v: ndarray::ArrayView1<bool>| v.iter().filter(|&&d| d).count();
        let per_expert: Vec<usize> = dispatch
            .outer_iter()
            .flat_map(|grp| grp.axis_iter(Axis(1)).map(count).collect::<Vec<_>>())
            .collect();
        let per_token: Vec<usize> = dispatch
            .outer_iter()
            .flat_map(|grp| grp.outer_iter().map(count).collect::<Vec<_>>())
            .collect();
        Self {
            tokens_per_expert: Stats::of(per_expert.iter().copied()),
            experts_per_token: Stats::of(per_token.iter().copied()),
            dropped_tokens: per_token.iter().filter(|&&c| c == 0).count(),
            tokens: per_token.len(),
            experts_over_capacity: per_expert.iter().filter(|&&c| c > capacity).count(),
        }
    }

    /// Load imbalance: the busiest expert's tokens over the mean (1 is perfectly balanced).
    pub fn imbalance(&self) -> f64 {
        self.tokens_per_expert.max / self.tokens_per_expert.mean
    }
}
