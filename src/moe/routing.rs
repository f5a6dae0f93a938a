//! What routing produces ([`Routing`]: dispatch, combine weights, loads, per-group reports) and the gates
//! it starts from.

use ndarray::{Array3, ArrayView3, Axis, Zip};
use rayon::prelude::*;

use crate::error::{Error, Position, Result};
use crate::moe::metrics::{GroupReport, LoadMetrics};
use crate::solution::RanOn;

/// The result of routing G groups.
#[derive(Debug, Clone, PartialEq)]
pub struct Routing {
    /// G × S × E: `true` where token s of group g is sent to expert e.
    pub dispatch: Array3<bool>,
    /// G × S × E: the gate of each routed pair, 0 elsewhere.
    pub combine: Array3<f64>,
    /// The expert capacity used (experts-choose) or compared against (tokens-choose, greedy).
    pub capacity: usize,
    /// Load metrics of `dispatch`.
    pub load: LoadMetrics,
    /// One report per group for the OT router; empty for the greedy router.
    pub groups: Vec<GroupReport>,
    /// Where the groups were solved (the CPU for the greedy router).
    pub device: RanOn,
}

impl Routing {
    pub(crate) fn new(
        dispatch: Array3<bool>,
        gates: &Array3<f64>,
        capacity: usize,
        groups: Vec<GroupReport>,
    ) -> Self {
        let mut combine = Array3::zeros(dispatch.dim());
        Zip::from(&mut combine)
            .and(&dispatch)
            .and(gates)
            .par_for_each(|c, &d, &g| *c = if d { g } else { 0.0 });
        let load = LoadMetrics::of(dispatch.view(), capacity);
        Self {
            dispatch,
            combine,
            capacity,
            load,
            groups,
            device: RanOn::Cpu,
        }
    }

    /// Number of groups whose solver converged.
    pub fn converged_groups(&self) -> usize {
        self.groups
            .iter()
            .filter(|r| r.termination.converged())
            .count()
    }
}

/// Softmax over experts of every (group, token) row, f64. Errors: empty or non-finite logits.
pub fn gates(logits: ArrayView3<f64>) -> Result<Array3<f64>> {
    let (g, s, e) = logits.dim();
    if g == 0 || s == 0 || e == 0 {
        return Err(Error::Empty { what: "logits" });
    }
    for (index, grp) in logits.outer_iter().enumerate() {
        if let Some(((i, j), &v)) = grp.indexed_iter().find(|(_, v)| !v.is_finite()) {
            return Err(Error::InBatch {
                index,
                source: Box::new(Error::NonFinite {
                    what: "logits",
                    position: Position::Matrix(i, j),
                    value: v,
                }),
            });
        }
    }
    let mut out = logits.to_owned();
    out.axis_iter_mut(Axis(0))
        .into_par_iter()
        .for_each(|mut grp| {
            for mut row in grp.rows_mut() {
                let mx = row.fold(f64::NEG_INFINITY, |m, &x| m.max(x));
                row.mapv_inplace(|x| (x - mx).exp());
                let z = row.sum();
                row.mapv_inplace(|x| x / z);
            }
        });
    Ok(out)
}
