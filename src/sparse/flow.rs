//! Whether a plan on a given support can meet the marginals: a maximum flow from the rows (supplies a_i)
//! through the support's entries (unbounded) to the columns (demands b_j). A plan T ≥ 0 with T1 = a,
//! Tᵀ1 = b and zeros off the support exists exactly when this flow carries the whole mass; when it does
//! not, the flow says which rows are left with mass to send and which columns still take mass, which is
//! where the feasible-plan repair (`sparse::plans`) opens the support.
//!
//! Dinic's algorithm: breadth-first levels on the residual graph, then blocking flows along level-increasing
//! paths. Residual capacities below `eps` count as zero, so the floating-point sums cannot make it cycle.

/// The nodes: source 0, rows 1..=m, columns m+1..=m+n, sink m+n+1.
struct Graph {
    /// Per node, its edges (indices into `to`, `cap`).
    adj: Vec<Vec<usize>>,
    to: Vec<usize>,
    cap: Vec<f64>,
}

impl Graph {
    fn new(nodes: usize) -> Self {
        Self {
            adj: vec![Vec::new(); nodes],
            to: Vec::new(),
            cap: Vec::new(),
        }
    }

    /// An edge u → v of capacity `cap` and its reverse (capacity 0): edge e's reverse is e ^ 1.
    fn edge(&mut self, u: usize, v: usize, cap: f64) -> usize {
        let e = self.to.len();
        self.adj[u].push(e);
        self.to.push(v);
        self.cap.push(cap);
        self.adj[v].push(e + 1);
        self.to.push(u);
        self.cap.push(0.0);
        e
    }

    /// Breadth-first levels from `s` over edges with residual capacity above `eps`.
    fn levels(&self, s: usize, eps: f64) -> Vec<usize> {
        let mut level = vec![usize::MAX; self.adj.len()];
        level[s] = 0;
        let mut queue = std::collections::VecDeque::from([s]);
        while let Some(u) = queue.pop_front() {
            for &e in &self.adj[u] {
                let v = self.to[e];
                if self.cap[e] > eps && level[v] == usize::MAX {
                    level[v] = level[u] + 1;
                    queue.push_back(v);
                }
            }
        }
        level
    }

    /// The nodes from which `t` can be reached over edges with residual capacity above `eps`.
    fn reaching(&self, t: usize, eps: f64) -> Vec<bool> {
        let mut seen = vec![false; self.adj.len()];
        seen[t] = true;
        let mut queue = std::collections::VecDeque::from([t]);
        while let Some(v) = queue.pop_front() {
            // Edge e = u → v has its reverse e ^ 1 listed at v.
            for &r in &self.adj[v] {
                let (u, e) = (self.to[r], r ^ 1);
                if self.cap[e] > eps && !seen[u] {
                    seen[u] = true;
                    queue.push_back(u);
                }
            }
        }
        seen
    }

    /// A blocking flow from `s` to `t` on the level graph `level` (edges to the next level with residual
    /// capacity above `eps`), found path by path without recursion; returns its value.
    fn blocking(&mut self, (s, t): (usize, usize), level: &mut [usize], eps: f64) -> f64 {
        let mut next = vec![0; self.adj.len()];
        let mut path: Vec<usize> = Vec::new();
        let mut carried = 0.0;
        let mut u = s;
        loop {
            if u == t {
                let f = path
                    .iter()
                    .map(|&e| self.cap[e])
                    .fold(f64::INFINITY, f64::min);
                for &e in &path {
                    self.cap[e] -= f;
                    self.cap[e ^ 1] += f;
                }
                carried += f;
                path.clear();
                u = s;
                continue;
            }
            let mut advanced = false;
            while next[u] < self.adj[u].len() {
                let e = self.adj[u][next[u]];
                let v = self.to[e];
                if self.cap[e] > eps && level[v] == level[u] + 1 {
                    path.push(e);
                    u = v;
                    advanced = true;
                    break;
                }
                next[u] += 1;
            }
            if advanced {
                continue;
            }
            // A dead end: no path to t goes through u any more.
            if u == s {
                return carried;
            }
            level[u] = usize::MAX;
            let e = path
                .pop()
                .expect("a node other than the source was reached by an edge");
            u = self.to[e ^ 1];
            next[u] += 1;
        }
    }
}

/// A maximum flow on a support, and what it leaves.
pub(crate) struct SupportFlow {
    /// Mass the flow could not carry: Σa − (the flow's value).
    pub shortfall: f64,
    /// Per row, the mass it could not send (a_i minus its flow).
    pub row_left: Vec<f64>,
    /// Per column, the mass it still takes (b_j minus its flow).
    pub col_left: Vec<f64>,
    /// Per column, the flow on each of its support's entries (in the support's order).
    pub entry_flow: Vec<Vec<f64>>,
    /// Per column, whether it can still pass mass on to the sink in the residual graph (it takes mass
    /// itself, or a row that sends to it can send to another column that can): an entry from a row left
    /// short into such a column lets the flow grow.
    pub col_open: Vec<bool>,
}

/// The maximum flow from rows (supplies `a`) to columns (demands `b`) through `support` (column j may take
/// mass from the rows `support[j]`), residual capacities below `eps` counted as zero.
pub(crate) fn max_flow(a: &[f64], b: &[f64], support: &[Vec<usize>], eps: f64) -> SupportFlow {
    let (m, n) = (a.len(), b.len());
    let (s, t) = (0, m + n + 1);
    let mut g = Graph::new(m + n + 2);
    let total: f64 = a.iter().sum();
    let sources: Vec<usize> = (0..m).map(|i| g.edge(s, 1 + i, a[i])).collect();
    let entries: Vec<Vec<usize>> = support
        .iter()
        .enumerate()
        .map(|(j, rows)| {
            rows.iter()
                .map(|&i| g.edge(1 + i, 1 + m + j, 2.0 * total))
                .collect()
        })
        .collect();
    let sinks: Vec<usize> = (0..n).map(|j| g.edge(1 + m + j, t, b[j])).collect();
    let mut carried = 0.0;
    loop {
        let mut level = g.levels(s, eps);
        if level[t] == usize::MAX {
            break;
        }
        let got = g.blocking((s, t), &mut level, eps);
        if got <= eps {
            break;
        }
        carried += got;
    }
    let to_sink = g.reaching(t, eps);
    SupportFlow {
        col_open: (0..n).map(|j| to_sink[1 + m + j]).collect(),
        shortfall: (total - carried).max(0.0),
        row_left: sources.iter().map(|&e| g.cap[e]).collect(),
        col_left: sinks.iter().map(|&e| g.cap[e]).collect(),
        entry_flow: entries
            .iter()
            .map(|col| col.iter().map(|&e| g.cap[e ^ 1]).collect())
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two rows of mass 1/2, two columns of mass 1/2: the diagonal support carries everything; a support
    /// that sends both columns to row 0 leaves row 1's half behind.
    #[test]
    fn the_flow_finds_what_a_support_cannot_carry() {
        let (a, b) = ([0.5, 0.5], [0.5, 0.5]);
        let ok = max_flow(&a, &b, &[vec![0], vec![1]], 1e-15);
        assert!(ok.shortfall <= 1e-15);
        assert_eq!(ok.entry_flow, vec![vec![0.5], vec![0.5]]);
        let short = max_flow(&a, &b, &[vec![0], vec![0]], 1e-15);
        assert!((short.shortfall - 0.5).abs() <= 1e-15);
        assert!((short.row_left[1] - 0.5).abs() <= 1e-15 && short.row_left[0] <= 1e-15);
        assert!((short.col_left.iter().sum::<f64>() - 0.5).abs() <= 1e-15);
    }

    /// Uniform 6 × 4 masses on the north-west corner support (each column's interval of mass meets at most
    /// two rows' intervals): the flow carries all of it, with each entry's overlap.
    #[test]
    fn the_north_west_corner_support_carries_the_whole_mass() {
        let a = [1.0 / 6.0; 6];
        let b = [0.25; 4];
        let support = vec![vec![0, 1], vec![1, 2], vec![3, 4], vec![4, 5]];
        let f = max_flow(&a, &b, &support, 1e-15);
        assert!(f.shortfall <= 1e-14, "{}", f.shortfall);
        for (j, col) in f.entry_flow.iter().enumerate() {
            assert!((col.iter().sum::<f64>() - b[j]).abs() <= 1e-14);
        }
    }
}
