//! Exact unregularised OT by the network simplex method (primal simplex on the transportation network).
//!
//! The network has the m sources, the n targets and an artificial root R. Real arcs i → j carry cost C_ij;
//! artificial arcs i → R and R → j carry a big cost M, so that the initial basis (every node hung on the root
//! by its artificial arc, carrying its whole mass) is feasible and *strongly feasible*; M exceeds the cost of
//! any path, so at the optimum of a balanced problem the artificial arcs carry no flow.
//!
//! * **Basis**: a spanning tree rooted at R, stored as parent, predecessor arc, arc direction, depth, flow on
//!   the predecessor arc and doubly linked child lists. A pivot reverses the *stem* (the path from the
//!   entering arc's end to the leaving arc) and re-hangs that subtree; depths and potentials are updated on
//!   the moved subtree only.
//! * **Pricing**: block search (as in LEMON's network simplex): scan arcs cyclically in blocks of ⌈√arcs⌉ and
//!   take the most negative reduced cost of the first block that has one.
//! * **Degeneracy**: the leaving arc is chosen by the strongly-feasible-tree rule (the last blocking arc met
//!   walking the cycle from the join node in the direction of the entering arc), which prevents cycling.
//! * **Accuracy**: when pricing finds no candidate, potentials are recomputed from the tree (each component
//!   of real arcs relative to its attachment node, so the big M never enters the reported values) and pricing
//!   runs once more; flows are recomputed from the tree by peeling leaves, so the plan's marginals hold to
//!   rounding of one sum per node.
//!
//! Reduced cost of arc u → v: c + π_u − π_v (≥ 0 at the optimum). Reported potentials: α_i = −π_i,
//! β_j = π_j, so that α_i + β_j ≤ C_ij with equality on the basis.

use ndarray::Array1;

use crate::error::{Error, Result};
use crate::monitor::{Monitor, Progress};
use crate::problem::Problem;
use crate::solution::{
    plan_metrics, Criterion, Lanes, Method, Plan, RanOn, Solution, SparsePlan, Termination,
};

/// Pivots between two looks at the monitor (a report and a cancellation check).
const PIVOTS_PER_REPORT: usize = 4096;

const NONE: usize = usize::MAX;

/// Solves `problem` exactly (see the module documentation) in at most `max_iter` pivots; `monitor` hears of
/// the pivot count and can cancel.
pub(crate) fn solve(problem: &Problem, max_iter: usize, monitor: &Monitor) -> Result<Solution> {
    let (m, n) = (problem.m(), problem.n());
    let a = problem.a_slice();
    let b = problem.b_slice();
    let b_balanced = balanced_targets(a, b);
    let cost = problem.cost_slice();
    let cmax = cost.iter().fold(0.0_f64, |acc, c| acc.max(c.abs()));
    if !(artificial_cost(cmax, m + n + 1) * 4.0).is_finite() {
        return Err(Error::InvalidParameter {
            name: "cost",
            value: cmax,
            requirement: "max |C| times 8 (m + n + 1) must be finite for the network simplex",
        });
    }
    let mut net = Network::new(m, n, cost, cmax, a, &b_balanced);
    let (iterations, end) = net.run(max_iter, monitor);
    net.recompute_flows();
    let (alpha, beta) = net.reported_potentials();
    let plan = net.plan();
    let (transport_cost, err_rows, err_cols) =
        plan_metrics(plan.triplets(), |i, j| problem.cost()[[i, j]], a, b);
    let value = dot(&alpha, a) + dot(&beta, b);
    Ok(Solution {
        method: Method::Exact,
        device: RanOn::Cpu,
        plan: Plan::Sparse(plan),
        alpha: Array1::from(alpha),
        beta: Array1::from(beta),
        value,
        transport_cost,
        marginal_error_rows: err_rows,
        marginal_error_cols: err_cols,
        iterations,
        termination: end,
        gpu_work: None,
        plan_kind: None,
        plan_gap: None,
    })
}

/// b rescaled by Σa / Σb, so that the network is balanced (the problem admits a relative mismatch up to its
/// mass tolerance). Returned unchanged when the sums already agree.
fn balanced_targets(a: &[f64], b: &[f64]) -> Vec<f64> {
    let (sa, sb): (f64, f64) = (a.iter().sum(), b.iter().sum());
    if sa == sb {
        b.to_vec()
    } else {
        let r = sa / sb;
        b.iter().map(|&x| x * r).collect()
    }
}

/// Cost M of the artificial arcs: longer than any simple path of real arcs, M > (m + n) · max|C|.
fn artificial_cost(cmax: f64, nodes: usize) -> f64 {
    if cmax > 0.0 {
        2.0 * nodes as f64 * cmax
    } else {
        1.0
    }
}

fn dot(x: &[f64], y: &[f64]) -> f64 {
    x.iter().zip(y).map(|(p, q)| p * q).sum()
}

/// The transportation network and its spanning-tree basis.
struct Network<'c> {
    m: usize,
    n: usize,
    cost: &'c [f64],
    /// Cost of the artificial arcs.
    big: f64,
    /// Reduced costs above −tol count as nonnegative.
    tol: f64,
    /// Net supply per node: a_i, −b_j, 0 at the root.
    supply: Vec<f64>,
    // --- tree, one entry per node (0..m sources, m..m+n targets, m+n root) ---
    parent: Vec<usize>,
    pred: Vec<usize>,
    /// `true` when the predecessor arc points from the node to its parent.
    up: Vec<bool>,
    depth: Vec<usize>,
    /// Flow on the predecessor arc.
    flow: Vec<f64>,
    first_child: Vec<usize>,
    next_sib: Vec<usize>,
    prev_sib: Vec<usize>,
    pi: Vec<f64>,
    // --- arcs: real i*n + j, then artificial i → R (m), then R → j (n) ---
    in_tree: Vec<bool>,
    next_arc: usize,
    block: usize,
    stack: Vec<usize>,
    stem: Vec<usize>,
}

impl<'c> Network<'c> {
    fn new(m: usize, n: usize, cost: &'c [f64], cmax: f64, a: &[f64], b: &[f64]) -> Self {
        let nodes = m + n + 1;
        let root = m + n;
        let big = artificial_cost(cmax, nodes);
        let arcs = m * n + m + n;
        let mut net = Self {
            m,
            n,
            cost,
            big,
            tol: 64.0 * f64::EPSILON * (big + cmax),
            supply: a
                .iter()
                .copied()
                .chain(b.iter().map(|&x| -x))
                .chain([0.0])
                .collect(),
            parent: vec![root; nodes],
            pred: vec![NONE; nodes],
            up: vec![false; nodes],
            depth: vec![1; nodes],
            flow: vec![0.0; nodes],
            first_child: vec![NONE; nodes],
            next_sib: vec![NONE; nodes],
            prev_sib: vec![NONE; nodes],
            pi: vec![0.0; nodes],
            in_tree: vec![false; arcs],
            next_arc: 0,
            block: ((arcs as f64).sqrt().ceil() as usize).max(10),
            stack: Vec::new(),
            stem: Vec::new(),
        };
        net.parent[root] = NONE;
        net.depth[root] = 0;
        for x in 0..root {
            let e = net.artificial_arc(x);
            net.pred[x] = e;
            net.in_tree[e] = true;
            net.up[x] = x < m;
            net.flow[x] = net.supply[x].abs();
            net.pi[x] = if x < m { -big } else { big };
            net.attach(x, root);
        }
        net
    }

    fn root(&self) -> usize {
        self.m + self.n
    }

    fn artificial_arc(&self, x: usize) -> usize {
        self.m * self.n + x
    }

    /// (tail, head, cost) of arc `e`.
    fn arc(&self, e: usize) -> (usize, usize, f64) {
        let mn = self.m * self.n;
        if e < mn {
            (e / self.n, self.m + e % self.n, self.cost[e])
        } else if e < mn + self.m {
            (e - mn, self.root(), self.big)
        } else {
            (self.root(), e - mn, self.big)
        }
    }

    fn reduced_cost(&self, e: usize) -> f64 {
        let (u, v, c) = self.arc(e);
        c + self.pi[u] - self.pi[v]
    }

    /// Pivots until optimal, `max_iter` pivots, or a cancelled `monitor` (which hears of the pivot count
    /// every [`PIVOTS_PER_REPORT`] pivots). Returns (pivots, termination).
    fn run(&mut self, max_iter: usize, monitor: &Monitor) -> (usize, Termination) {
        let mut pivots = 0;
        let mut clean = false;
        loop {
            if pivots % PIVOTS_PER_REPORT == 0 && pivots > 0 {
                monitor.step(&Progress {
                    iteration: pivots,
                    value: f64::NAN,
                    marginal_error: f64::NAN,
                    stage: "network simplex",
                });
            }
            if monitor.is_cancelled() {
                return (pivots, Termination::Cancelled);
            }
            match self.find_entering() {
                Some(_) if pivots >= max_iter => return (pivots, Termination::MaxIterations),
                Some(e) => {
                    self.pivot(e);
                    pivots += 1;
                    clean = false;
                }
                None if clean => return (pivots, Termination::Converged(Criterion::Exact)),
                None => {
                    self.recompute_potentials();
                    clean = true;
                }
            }
        }
    }

    /// Block search pricing: the most negative reduced cost in the first block that has a negative one.
    /// Real arcs are scanned in runs along one row of the cost matrix (contiguous costs and potentials).
    fn find_entering(&mut self) -> Option<usize> {
        let total = self.in_tree.len();
        let (m, n) = (self.m, self.n);
        let mn = m * n;
        let mut best = NONE;
        let mut min = -self.tol;
        let mut left = self.block;
        let mut e = self.next_arc;
        let mut scanned = 0;
        while scanned < total {
            let run_end = if e < mn { (e / n + 1) * n } else { total };
            let len = (run_end - e).min(left).min(total - scanned);
            if e < mn {
                let i = e / n;
                let j0 = e - i * n;
                let pi_i = self.pi[i];
                let run = self.cost[e..e + len]
                    .iter()
                    .zip(&self.pi[m + j0..m + j0 + len])
                    .zip(&self.in_tree[e..e + len]);
                for (t, ((&c, &pi_j), &tree)) in run.enumerate() {
                    let rc = c + pi_i - pi_j;
                    if rc < min && !tree {
                        min = rc;
                        best = e + t;
                    }
                }
            } else {
                for x in e..e + len {
                    if !self.in_tree[x] {
                        let rc = self.reduced_cost(x);
                        if rc < min {
                            min = rc;
                            best = x;
                        }
                    }
                }
            }
            e += len;
            if e == total {
                e = 0;
            }
            scanned += len;
            left -= len;
            if left == 0 {
                if best != NONE {
                    break;
                }
                left = self.block;
            }
        }
        self.next_arc = e;
        (best != NONE).then_some(best)
    }

    fn join(&self, mut u: usize, mut v: usize) -> usize {
        while u != v {
            if self.depth[u] >= self.depth[v] {
                u = self.parent[u];
            } else {
                v = self.parent[v];
            }
        }
        u
    }

    /// One pivot on entering arc `e` (reduced cost < 0).
    fn pivot(&mut self, e: usize) {
        let (first, second, c) = self.arc(e);
        let rc = c + self.pi[first] - self.pi[second];
        let join = self.join(first, second);
        // Blocking arcs: on the first side those pointing up (flow runs down them, against the arc), on the
        // second side those pointing down. Strongly feasible rule: strict on the first side, ties go to the
        // second side, scanning each side from its end towards the join node.
        let mut delta = f64::INFINITY;
        let mut out = NONE;
        let mut out_first = true;
        let mut u = first;
        while u != join {
            if self.up[u] && self.flow[u] < delta {
                delta = self.flow[u];
                out = u;
            }
            u = self.parent[u];
        }
        let mut u = second;
        while u != join {
            if !self.up[u] && self.flow[u] <= delta {
                delta = self.flow[u];
                out = u;
                out_first = false;
            }
            u = self.parent[u];
        }
        debug_assert!(
            out != NONE,
            "a balanced transportation network has no unbounded cycle"
        );
        let delta = delta.max(0.0);
        if delta > 0.0 {
            for (start, forward_up) in [(first, false), (second, true)] {
                let mut u = start;
                while u != join {
                    if self.up[u] == forward_up {
                        self.flow[u] += delta;
                    } else {
                        self.flow[u] = (self.flow[u] - delta).max(0.0);
                    }
                    u = self.parent[u];
                }
            }
        }
        let (u_in, v_in) = if out_first {
            (first, second)
        } else {
            (second, first)
        };
        let shift = if u_in == first { -rc } else { rc };
        self.in_tree[self.pred[out]] = false;
        self.in_tree[e] = true;
        self.rehang(u_in, v_in, out, e, delta);
        self.update_subtree(u_in, shift);
    }

    /// Reverses the stem u_in → … → out and hangs it on v_in by the entering arc `e` carrying `flow`.
    fn rehang(&mut self, u_in: usize, v_in: usize, out: usize, e: usize, flow: f64) {
        let mut stem = std::mem::take(&mut self.stem);
        stem.clear();
        let mut u = u_in;
        loop {
            stem.push(u);
            if u == out {
                break;
            }
            u = self.parent[u];
        }
        for &w in &stem {
            self.detach(w);
        }
        for t in (0..stem.len() - 1).rev() {
            let (w, p) = (stem[t + 1], stem[t]);
            self.parent[w] = p;
            self.pred[w] = self.pred[p];
            self.up[w] = !self.up[p];
            self.flow[w] = self.flow[p];
            self.attach(w, p);
        }
        self.parent[u_in] = v_in;
        self.pred[u_in] = e;
        self.up[u_in] = self.arc(e).0 == u_in;
        self.flow[u_in] = flow;
        self.attach(u_in, v_in);
        self.stem = stem;
    }

    /// Depths below `top` from its parent's, potentials of the subtree moved by `shift`.
    fn update_subtree(&mut self, top: usize, shift: f64) {
        let mut stack = std::mem::take(&mut self.stack);
        stack.clear();
        stack.push(top);
        while let Some(x) = stack.pop() {
            self.depth[x] = self.depth[self.parent[x]] + 1;
            self.pi[x] += shift;
            let mut c = self.first_child[x];
            while c != NONE {
                stack.push(c);
                c = self.next_sib[c];
            }
        }
        self.stack = stack;
    }

    fn detach(&mut self, x: usize) {
        let p = self.parent[x];
        let (prev, next) = (self.prev_sib[x], self.next_sib[x]);
        if prev == NONE {
            self.first_child[p] = next;
        } else {
            self.next_sib[prev] = next;
        }
        if next != NONE {
            self.prev_sib[next] = prev;
        }
        self.prev_sib[x] = NONE;
        self.next_sib[x] = NONE;
    }

    fn attach(&mut self, x: usize, p: usize) {
        let head = self.first_child[p];
        self.next_sib[x] = head;
        self.prev_sib[x] = NONE;
        if head != NONE {
            self.prev_sib[head] = x;
        }
        self.first_child[p] = x;
    }

    /// Nodes in preorder from the root (parents before children).
    fn preorder(&self) -> Vec<usize> {
        let mut order = Vec::with_capacity(self.pi.len());
        let mut stack = vec![self.root()];
        while let Some(x) = stack.pop() {
            order.push(x);
            let mut c = self.first_child[x];
            while c != NONE {
                stack.push(c);
                c = self.next_sib[c];
            }
        }
        order
    }

    /// (offset, local) per node: π = offset + local, where offset = ±M is the potential of the node's
    /// attachment to the root and local sums real arc costs along the tree from the attachment node.
    fn split_potentials(&self) -> (Vec<f64>, Vec<f64>) {
        let nodes = self.pi.len();
        let (mut offset, mut local) = (vec![0.0; nodes], vec![0.0; nodes]);
        let root = self.root();
        for x in self.preorder().into_iter().skip(1) {
            let p = self.parent[x];
            let c = self.arc(self.pred[x]).2;
            // Tree arcs have zero reduced cost: x → p gives π_x = π_p − c, p → x gives π_x = π_p + c.
            let step = if self.up[x] { -c } else { c };
            if p == root {
                offset[x] = step;
            } else {
                offset[x] = offset[p];
                local[x] = local[p] + step;
            }
        }
        (offset, local)
    }

    /// Recomputes π from the tree, removing the drift of incremental updates.
    fn recompute_potentials(&mut self) {
        let (offset, local) = self.split_potentials();
        for (p, (o, l)) in self.pi.iter_mut().zip(offset.iter().zip(&local)) {
            *p = o + l;
        }
    }

    /// Flows recomputed from the tree by peeling leaves: the predecessor arc of x carries the net supply of
    /// the subtree of x.
    fn recompute_flows(&mut self) {
        let order = self.preorder();
        let mut net = self.supply.clone();
        for &x in order.iter().skip(1).rev() {
            let s = net[x];
            net[self.parent[x]] += s;
            self.flow[x] = if self.up[x] { s } else { -s };
        }
    }

    /// (α, β) with the big M removed from the components attached like the first child of the root.
    fn reported_potentials(&self) -> (Vec<f64>, Vec<f64>) {
        let (offset, local) = self.split_potentials();
        let base = offset[self.first_child[self.root()]];
        let pot = |x: usize| (offset[x] - base) + local[x];
        let alpha = (0..self.m).map(|i| -pot(i)).collect();
        let beta = (0..self.n).map(|j| pot(self.m + j)).collect();
        (alpha, beta)
    }

    /// The real arcs of the tree with positive flow, compressed by column.
    fn plan(&self) -> SparsePlan {
        let mn = self.m * self.n;
        let mut entries: Vec<(usize, usize, f64)> = (0..self.root())
            .filter(|&x| self.pred[x] < mn && self.flow[x] > 0.0)
            .map(|x| (self.pred[x] % self.n, self.pred[x] / self.n, self.flow[x]))
            .collect();
        entries.sort_unstable_by_key(|&(j, i, _)| (j, i));
        let mut ptr = vec![0; self.n + 1];
        for &(j, _, _) in &entries {
            ptr[j + 1] += 1;
        }
        for j in 0..self.n {
            ptr[j + 1] += ptr[j];
        }
        let (indices, values) = entries.iter().map(|&(_, i, v)| (i, v)).unzip();
        SparsePlan::from_parts((self.m, self.n), Lanes::Columns, ptr, indices, values)
    }
}
