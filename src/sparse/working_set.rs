//! Working sets of the CPU column kernels: near a reference point, a column's selected rows are found among
//! [`WIDTH`] candidates instead of all m rows, with the same result as a scan of the whole column.
//!
//! At potentials α the rows selected in column j are the top k of the scores s_i = α_i − c_ij (β_j shifts a
//! column's scores alike and leaves the order). A working set keeps for every column the rows of its
//! [`WIDTH`] largest scores at a reference point α⁰, and a bound r_j on the score α⁰_i − c_ij of every other
//! row. At any α with rise δ⁺ = maxᵢ (αᵢ − α⁰ᵢ)₊ a row outside the set scores at most r_j + δ⁺ (a row whose
//! potential fell cannot score more than it did). So when the k-th largest score inside the set exceeds
//! r_j + δ⁺, the column's top k lie in the set; as both scans visit rows by increasing index, the tie rule
//! keeps the same rows in the same order and the column's terms are bit for bit those of a full scan. A
//! column that fails the test is scanned in full, and its set is rebuilt from that scan: the rows outside
//! score at most its (WIDTH + 1)-th score at α, so at α⁰ at most that plus the fall δ⁻ = maxᵢ (α⁰ᵢ − αᵢ)₊.
//! When many columns fail, the whole set is rebuilt at the next evaluation.
//!
//! The test leaves a margin for rounding: scores are computed in floating point, so "at most r_j + δ" holds
//! up to a few units in the last place of the scores.

use crate::ops::{top_k_among, top_k_buffered};

/// Candidate rows kept per column (at most 32: a column's lead is a bit mask of them).
pub(crate) const WIDTH: usize = 32;

/// A working set for an m × n problem with k selected rows per column.
#[derive(Debug, Clone)]
pub(crate) struct WorkingSet {
    /// α⁰, where the set was last rebuilt as a whole.
    reference: Vec<f64>,
    /// Column j's candidate rows, ascending: `rows[j·WIDTH..(j+1)·WIDTH]`.
    rows: Vec<usize>,
    /// Their cost entries C_ij, in the same places: an evaluation served by the set reads them in order
    /// instead of a scattered entry of the cost per row (or a cost computed from the points).
    costs: Vec<f64>,
    /// r_j: a bound on α⁰_i − c_ij over the rows outside column j's set.
    outside: Vec<f64>,
    /// Column j's lead: the positions in its set of the rows chosen last (by [`ColumnSet::select`] or a
    /// rebuild), one bit each.
    lead: Vec<u32>,
    /// Rebuild every column at the next evaluation.
    stale: bool,
    /// The current evaluation rebuilds every column.
    rebuilding: bool,
    /// Columns of the last evaluation answered from their sets.
    pub(crate) served: usize,
    /// Columns scanned in full since the set was last rebuilt as a whole.
    spent: usize,
}

/// What a column kernel gets for one column: its candidates and bound, and how the evaluation goes.
pub(crate) struct ColumnSet<'a> {
    /// The column's candidate rows (ascending).
    pub rows: &'a mut [usize],
    /// Their entries of the column's cost, C_ij for each row i of `rows`.
    pub costs: &'a mut [f64],
    /// r_j.
    pub outside: &'a mut f64,
    /// The positions in `rows` of the rows chosen last, one bit each.
    pub lead: &'a mut u32,
    /// The drift of this evaluation from α⁰, or `None` when every column is being rebuilt (scan in full).
    pub drift: Option<Drift>,
}

/// How far an evaluation point α is from the reference α⁰, one way and the other.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Drift {
    /// δ⁺ = maxᵢ (αᵢ − α⁰ᵢ)₊: what any row's score can have gained.
    pub rise: f64,
    /// δ⁻ = maxᵢ (α⁰ᵢ − αᵢ)₊: what any row's score can have lost.
    pub fall: f64,
}

impl ColumnSet<'_> {
    /// Whether `level` (a score computed like the column's scores) is above every row outside the set:
    /// r_j + δ⁺ + `shift` (β_j, for scores that include it) plus a rounding margin.
    pub(crate) fn clears(&self, level: f64, shift: f64) -> bool {
        let Some(Drift { rise: drift, .. }) = self.drift else {
            return false;
        };
        let bound = *self.outside + drift + shift;
        let margin = 64.0 * f64::EPSILON * (level.abs() + self.outside.abs() + drift + shift.abs());
        level > bound + margin
    }

    /// The candidate rows with their cost entries, (i, C_ij) by ascending i.
    pub(crate) fn entries(&self) -> impl Iterator<Item = (usize, f64)> + '_ {
        self.rows.iter().copied().zip(self.costs.iter().copied())
    }

    /// Column j's top k rows at α among the set's rows, by the tie rule, into `idx` (in rank order), each
    /// set row's score α_i − C_ij written to `s`: what [`top_k_buffered`] over the set's rows gives.
    ///
    /// When at least k rows were chosen last time, the lowest of their scores at α is at most the k-th
    /// largest: only the set's rows scoring at least that level can be chosen, and the insertion pass runs
    /// over those few (still by increasing row) instead of all [`WIDTH`]. With a NaN score (a NaN α) every
    /// row goes through the pass.
    pub(crate) fn select(&mut self, alpha: &[f64], k: usize, s: &mut [f64], idx: &mut Vec<usize>) {
        let mut v = [0.0; WIDTH];
        for ((vq, &i), &c) in v.iter_mut().zip(self.rows.iter()).zip(self.costs.iter()) {
            *vq = alpha[i] - c;
            s[i] = *vq;
        }
        let lead = *self.lead;
        // NaN scores have no rank, and the pass over every row treats them in its own way: with any NaN
        // the level is not used and every row is passed, as there.
        let nan = v.iter().fold(false, |any, x| any | x.is_nan());
        let level = if !nan && lead.count_ones() as usize >= k {
            (0..WIDTH)
                .filter(|&q| lead >> q & 1 == 1)
                .fold(f64::INFINITY, |l, q| l.min(v[q]))
        } else {
            f64::NEG_INFINITY
        };
        // The positions not below the level as a bit mask, built without branches, then walked by
        // increasing position.
        let passing = v.iter().enumerate().fold(0u32, |mask, (q, &vq)| {
            let below = vq.partial_cmp(&level) == Some(std::cmp::Ordering::Less);
            mask | (u32::from(!below) << q)
        });
        let positions = std::iter::successors((passing != 0).then_some(passing), |&rest| {
            let rest = rest & (rest - 1);
            (rest != 0).then_some(rest)
        })
        .map(|rest| rest.trailing_zeros() as usize);
        top_k_buffered(&v, positions, k, idx);
        *self.lead = 0;
        for q in idx.iter_mut() {
            *self.lead |= 1 << *q;
            *q = self.rows[*q];
        }
    }

    /// Rebuilds the set from the scores `s` of the whole column at the current point, whose cost entries
    /// are `c` (the whole column); `scratch` is reused. The column's `lead` best rows (at most WIDTH) become
    /// its lead.
    ///
    /// The new set is the column's top WIDTH + 1 by the tie rule. Its old rows usually still score near
    /// the top, so the rows scoring at least a level a little below the old rows' lowest score are gathered
    /// first (at least the WIDTH old rows pass), and the top WIDTH + 1 is selected among them when there are
    /// enough: every row tying with the (WIDTH + 1)-th is then among them, so the selection is the one of a
    /// scan of the whole column. Otherwise, and for a set never built (whose placeholder rows say nothing,
    /// so that the level would keep about half the column), the whole column is scanned.
    pub(crate) fn rebuild(&mut self, s: &[f64], c: &[f64], lead: usize, scratch: &mut Vec<usize>) {
        if self.outside.is_infinite() {
            // Never built: r_j is +∞ until the first build (a built bound is a finite score).
            top_k_buffered(s, 0..s.len(), WIDTH + 1, scratch);
            self.keep(s, c, lead, scratch);
            return;
        }
        let (lo, hi) = self
            .rows
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &i| {
                (lo.min(s[i]), hi.max(s[i]))
            });
        let level = lo - (hi - lo) / 8.0;
        scratch.clear();
        scratch.extend((0..s.len()).filter(|&i| s[i] >= level));
        if scratch.len() > WIDTH {
            top_k_among(s, WIDTH + 1, scratch);
        } else {
            top_k_buffered(s, 0..s.len(), WIDTH + 1, scratch);
        }
        self.keep(s, c, lead, scratch);
    }

    /// Keeps the column's top WIDTH + 1 `top` (by the tie rule): the first WIDTH as the set, the last as
    /// the bound on the others, with the set's cost entries from `c` and the first `lead` as its lead.
    fn keep(&mut self, s: &[f64], c: &[f64], lead: usize, top: &[usize]) {
        *self.outside = s[top[WIDTH]] + self.drift.map_or(0.0, |d| d.fall);
        self.rows.copy_from_slice(&top[..WIDTH]);
        self.rows.sort_unstable();
        *self.lead = top[..lead.min(WIDTH)]
            .iter()
            .filter_map(|i| self.rows.binary_search(i).ok())
            .fold(0, |l, q| l | 1 << q);
        for (cost, &i) in self.costs.iter_mut().zip(self.rows.iter()) {
            *cost = c[i];
        }
    }
}

impl WorkingSet {
    /// Whether a working set can help: k + 1 selected rows (the most a kernel inspects) well inside the
    /// set, and columns much longer than it.
    pub(crate) fn applies(m: usize, k: usize) -> bool {
        k < WIDTH / 2 && m > 4 * WIDTH
    }

    /// An empty set for an m × n problem; the first evaluation builds it.
    pub(crate) fn new(m: usize, n: usize) -> Self {
        Self {
            reference: vec![0.0; m],
            rows: vec![0; n * WIDTH],
            costs: vec![0.0; n * WIDTH],
            outside: vec![f64::INFINITY; n],
            lead: vec![0; n],
            stale: true,
            rebuilding: false,
            served: 0,
            spent: 0,
        }
    }

    /// Starts an evaluation at `alpha`: its drift, or `None` when the whole set is rebuilt now (α becomes α⁰).
    pub(crate) fn begin(&mut self, alpha: &[f64]) -> Option<Drift> {
        self.rebuilding = self.stale;
        if self.stale {
            self.reference.copy_from_slice(alpha);
            self.stale = false;
            return None;
        }
        let (rise, fall) = alpha
            .iter()
            .zip(&self.reference)
            .fold((0.0f64, 0.0f64), |(r, f), (x, y)| {
                (r.max(x - y), f.max(y - x))
            });
        Some(Drift { rise, fall })
    }

    /// Ends an evaluation in which `fallbacks` of the n columns were scanned in full: when more than an
    /// eighth were, or the columns scanned in full since the last rebuild add up to half the matrix (a few
    /// columns whose margin the drift has used up fail at every evaluation, and a rebuild at the current
    /// point restores it for all), the next evaluation rebuilds the whole set.
    pub(crate) fn end(&mut self, fallbacks: usize) {
        let n = self.outside.len();
        self.served = if self.rebuilding { 0 } else { n - fallbacks };
        self.spent = if self.rebuilding {
            0
        } else {
            self.spent + fallbacks
        };
        if fallbacks * 8 > n || self.spent * 2 > n {
            self.stale = true;
        }
    }

    /// The per-column parts, in chunks of `chunk` columns (for parallel loops over column chunks).
    pub(crate) fn chunks_mut(&mut self, chunk: usize) -> impl Iterator<Item = Part<'_>> {
        self.rows
            .chunks_mut(chunk * WIDTH)
            .zip(self.costs.chunks_mut(chunk * WIDTH))
            .zip(self.outside.chunks_mut(chunk))
            .zip(self.lead.chunks_mut(chunk))
            .map(|(((rows, costs), outside), lead)| Part {
                rows,
                costs,
                outside,
                lead,
            })
    }
}

/// A chunk of columns' part of a working set: their candidate rows and cost entries (`WIDTH` per column)
/// and their bounds.
pub(crate) struct Part<'a> {
    rows: &'a mut [usize],
    costs: &'a mut [f64],
    outside: &'a mut [f64],
    lead: &'a mut [u32],
}

impl Part<'_> {
    /// Column `off` of the chunk, for an evaluation with this drift.
    pub(crate) fn column(&mut self, off: usize, drift: Option<Drift>) -> ColumnSet<'_> {
        let slots = off * WIDTH..(off + 1) * WIDTH;
        ColumnSet {
            rows: &mut self.rows[slots.clone()],
            costs: &mut self.costs[slots],
            outside: &mut self.outside[off],
            lead: &mut self.lead[off],
            drift,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The gathered selection equals the insertion scan over the whole column, ties included, whether the
    /// old rows are still near the top, far from it, or unset.
    #[test]
    fn a_rebuild_selects_what_a_whole_scan_selects() {
        let mut state = 5u64;
        let mut rnd = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as usize
        };
        for trial in 0..200 {
            let m = 40 + rnd() % 300;
            // Coarse values: many exact ties.
            let s: Vec<f64> = (0..m).map(|_| (rnd() % 25) as f64 * 0.5).collect();
            let mut rows: Vec<usize> = match trial % 3 {
                0 => vec![0; WIDTH],
                1 => (0..WIDTH).collect(),
                _ => {
                    let mut r: Vec<usize> = (0..m).collect();
                    r.sort_by(|&x, &y| s[y].total_cmp(&s[x]).then(x.cmp(&y)));
                    let mut r: Vec<usize> = r[..WIDTH].to_vec();
                    r.sort_unstable();
                    r
                }
            };
            let c: Vec<f64> = (0..m).map(|i| i as f64 * 0.25).collect();
            let (mut outside, mut costs, mut lead) = (0.0, vec![0.0; WIDTH], 0);
            let mut set = ColumnSet {
                rows: &mut rows,
                costs: &mut costs,
                outside: &mut outside,
                lead: &mut lead,
                drift: None,
            };
            let mut got = Vec::new();
            set.rebuild(&s, &c, 5, &mut got);
            let mut want = Vec::new();
            top_k_buffered(&s, 0..m, WIDTH + 1, &mut want);
            assert_eq!(got, want, "trial {trial}");
            let mut sorted = want[..WIDTH].to_vec();
            sorted.sort_unstable();
            assert_eq!(rows, sorted);
            assert!(rows.iter().zip(&costs).all(|(&i, &ci)| ci == c[i]));
            assert_eq!(outside, s[want[WIDTH]]);
            let lead: Vec<usize> = (0..WIDTH).filter(|&q| lead >> q & 1 == 1).collect();
            let mut best = want[..5].to_vec();
            best.sort_unstable();
            assert_eq!(lead.iter().map(|&q| rows[q]).collect::<Vec<_>>(), best);
        }
    }

    #[test]
    fn a_rebuilt_column_bounds_every_other_row() {
        let s: Vec<f64> = (0..200).map(|i| ((i * 37) % 101) as f64 * 0.01).collect();
        let (mut rows, mut costs, mut outside) = (vec![0; WIDTH], vec![0.0; WIDTH], 0.0);
        let mut lead = 0;
        let mut set = ColumnSet {
            rows: &mut rows,
            costs: &mut costs,
            outside: &mut outside,
            lead: &mut lead,
            drift: Some(Drift {
                rise: 0.25,
                fall: 0.25,
            }),
        };
        set.rebuild(&s, &vec![0.0; s.len()], 3, &mut Vec::new());
        let r = *set.outside;
        assert!(set.rows.windows(2).all(|w| w[0] < w[1]));
        for (i, &v) in s.iter().enumerate() {
            if !set.rows.contains(&i) {
                assert!(
                    v + 0.25 <= r,
                    "row {i} scores {v}, above the bound {r} less the drift"
                );
            }
        }
        // A level above the bound, this evaluation's drift and the shift clears it; the sum itself does not.
        assert!(set.clears(r + 0.25 + 0.5 + 1e-9, 0.5));
        assert!(!set.clears(r + 0.25 + 0.5, 0.5));
    }
}
