//! The greedy top-k router under an expert capacity: the usual baseline the OT router is compared with.

use ndarray::{Array2, Array3, ArrayView2, ArrayView3, Axis};
use rayon::prelude::*;

use crate::error::{at_least_one, Error, Result};
use crate::moe::routing::{gates, Routing};

/// The usual greedy top-k router under an expert capacity, for comparison: every token ranks the experts by
/// gate (ties to the lower index); first every token's first choice is placed, in token order, then every
/// token's second choice, and so on; a choice whose expert already holds `capacity` tokens is dropped.
///
/// Errors: empty or non-finite logits, `experts_per_token` = 0 or above E, `capacity` = 0.
pub fn greedy_top_k(
    logits: ArrayView3<f64>,
    experts_per_token: usize,
    capacity: usize,
) -> Result<Routing> {
    let gates = gates(logits)?;
    let (g, s, e) = gates.dim();
    if experts_per_token == 0 || experts_per_token > e {
        return Err(Error::InvalidK {
            k: experts_per_token,
            max: e,
            axis: "experts",
        });
    }
    at_least_one("capacity", capacity)?;
    let mut dispatch = Array3::from_elem((g, s, e), false);
    dispatch
        .axis_iter_mut(Axis(0))
        .into_par_iter()
        .zip(gates.axis_iter(Axis(0)).into_par_iter())
        .for_each(|(mut d, grp)| {
            let choices = ranked_choices(grp, experts_per_token);
            let mut load = vec![0usize; e];
            for rank in 0..experts_per_token {
                for token in 0..s {
                    let expert = choices[[token, rank]];
                    if load[expert] < capacity {
                        load[expert] += 1;
                        d[[token, expert]] = true;
                    }
                }
            }
        });
    Ok(Routing::new(dispatch, &gates, capacity, Vec::new()))
}

/// S × k: each token's k best experts by gate, best first (tie rule of [`crate::ops`]).
fn ranked_choices(gates: ArrayView2<f64>, k: usize) -> Array2<usize> {
    let mut out = Array2::zeros((gates.nrows(), k));
    let mut row = Vec::with_capacity(gates.ncols());
    let mut idx = Vec::with_capacity(gates.ncols());
    for (t, g) in gates.outer_iter().enumerate() {
        row.clear();
        row.extend(g.iter().copied());
        crate::ops::top_k_into(&row, k, &mut idx);
        for (r, &j) in idx.iter().enumerate() {
            out[[t, r]] = j;
        }
    }
    out
}
