//! Independent references by an interior-point conic solver (clarabel, dev-dependency only):
//!
//! * exact OT as an LP, against the network simplex;
//! * quadratic OT, min ⟨T,C⟩ + γ/2‖T‖² over U(a,b), as a QP, against `SparseOt::quadratic`;
//! * the k-sparse dual D_k in epigraph form, against the golden values of docs/MATH.md §8 and `SparseOt::new(k, γ)`:
//!   maximise α·a + β·b − Σ_j τ_j subject to τ_j ≥ (1/2γ) Σ_{i∈S} u_ij² for every column j and every
//!   k-subset S, u_ij ≥ 0, u_ij ≥ α_i + β_j − C_ij. (The sum of the k largest [s]_+² is the largest sum
//!   over k-subsets, so the epigraph optimum is D_k*.)
//!
//! Clarabel's standard form: minimise ½xᵀPx + qᵀx subject to Ax + s = b, s ∈ K.

#[path = "common/data.rs"]
mod data;

use clarabel::algebra::CscMatrix;
use clarabel::solver::{
    DefaultSettings, DefaultSolver, IPSolver, SolverStatus, SupportedConeT,
    SupportedConeT::{NonnegativeConeT, SecondOrderConeT, ZeroConeT},
};
use data::{assert_close, random_problem};
use sparse_ot::{golden_problem, ExactOt, Formulation, Problem, SparseOt};

/// Sparse matrix assembled from (row, column, value) triplets.
struct Triplets {
    rows: Vec<usize>,
    cols: Vec<usize>,
    vals: Vec<f64>,
}

impl Triplets {
    fn new() -> Self {
        Self {
            rows: Vec::new(),
            cols: Vec::new(),
            vals: Vec::new(),
        }
    }
    fn push(&mut self, r: usize, c: usize, v: f64) {
        self.rows.push(r);
        self.cols.push(c);
        self.vals.push(v);
    }
    fn csc(self, m: usize, n: usize) -> CscMatrix<f64> {
        CscMatrix::new_from_triplets(m, n, self.rows, self.cols, self.vals)
    }
}

/// Solves a conic program with tight tolerances; returns (optimal objective, x).
fn clarabel_solve(
    p: &CscMatrix<f64>,
    q: &[f64],
    a: &CscMatrix<f64>,
    b: &[f64],
    cones: &[SupportedConeT<f64>],
) -> (f64, Vec<f64>) {
    let settings = DefaultSettings {
        verbose: false,
        max_iter: 500,
        tol_gap_abs: 1e-11,
        tol_gap_rel: 1e-11,
        tol_feas: 1e-11,
        tol_ktratio: 1e-9,
        ..DefaultSettings::default()
    };
    let mut solver =
        DefaultSolver::new(p, q, a, b, cones, settings).expect("well-formed conic program");
    solver.solve();
    let sol = &solver.solution;
    assert!(
        matches!(
            sol.status,
            SolverStatus::Solved | SolverStatus::AlmostSolved
        ),
        "clarabel: {:?}",
        sol.status
    );
    // At tolerances this tight clarabel may stop at "almost solved": accept it only with a certified small
    // primal-dual objective gap and small residuals.
    let gap = (sol.obj_val - sol.obj_val_dual).abs();
    assert!(
        gap <= 1e-9 * (1.0 + sol.obj_val.abs()) && sol.r_prim <= 1e-6 && sol.r_dual <= 1e-6,
        "clarabel {:?}: gap {gap:e}, residuals {:e} {:e}",
        sol.status,
        sol.r_prim,
        sol.r_dual
    );
    (sol.obj_val, sol.x.clone())
}

/// The transportation polytope U(a, b) on x = vec(T) (row-major): m + n − 1 equalities (the last column sum
/// is implied by the others when the masses balance) and T ≥ 0.
fn transport_constraints(pr: &Problem) -> (CscMatrix<f64>, Vec<f64>, Vec<SupportedConeT<f64>>) {
    let (m, n) = (pr.m(), pr.n());
    let eq = m + n - 1;
    let mut t = Triplets::new();
    let mut rhs: Vec<f64> = pr.a().to_vec();
    rhs.extend(pr.b().iter().take(n - 1));
    for i in 0..m {
        for j in 0..n {
            let x = i * n + j;
            t.push(i, x, 1.0);
            if j < n - 1 {
                t.push(m + j, x, 1.0);
            }
            t.push(eq + x, x, -1.0);
        }
    }
    rhs.resize(rhs.len() + m * n, 0.0);
    (
        t.csc(eq + m * n, m * n),
        rhs,
        vec![ZeroConeT(eq), NonnegativeConeT(m * n)],
    )
}

/// min ⟨T, C⟩ + γ/2 ‖T‖² over U(a, b) (γ = 0: the exact OT linear program).
pub fn reference_transport(pr: &Problem, gamma: f64) -> f64 {
    let mn = pr.m() * pr.n();
    let q: Vec<f64> = pr.cost().iter().copied().collect();
    let p = if gamma > 0.0 {
        let mut t = Triplets::new();
        (0..mn).for_each(|x| t.push(x, x, gamma));
        t.csc(mn, mn)
    } else {
        CscMatrix::zeros((mn, mn))
    };
    let (a, b, cones) = transport_constraints(pr);
    clarabel_solve(&p, &q, &a, &b, &cones).0
}

/// All k-subsets of 0..m in lexicographic order.
fn subsets(m: usize, k: usize) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    let mut s: Vec<usize> = (0..k).collect();
    loop {
        out.push(s.clone());
        let Some(pos) = (0..k).rev().find(|&p| s[p] < m - k + p) else {
            return out;
        };
        s[pos] += 1;
        for q in pos + 1..k {
            s[q] = s[q - 1] + 1;
        }
    }
}

/// D_k* of docs/MATH.md §2.1 by the epigraph form of the dual (see the module documentation). For small m only:
/// one second-order cone per column and k-subset. Variables x = (α, β, τ, u). Returns D_k evaluated exactly
/// at the conic solver's (α, β) after checking it against the solver's objective (1e-9).
pub fn reference_sparse_dual(pr: &Problem, k: usize, gamma: f64) -> f64 {
    let (m, n) = (pr.m(), pr.n());
    let c = pr.cost();
    let (ia, ib, it, iu) = (0, m, m + n, m + 2 * n);
    let nvar = m + 2 * n + m * n;
    let mut q = vec![0.0; nvar];
    q[ia..ib].iter_mut().zip(pr.a()).for_each(|(q, &a)| *q = -a);
    q[ib..it].iter_mut().zip(pr.b()).for_each(|(q, &b)| *q = -b);
    q[it..iu].iter_mut().for_each(|q| *q = 1.0);
    let mut t = Triplets::new();
    let mut rhs = Vec::new();
    // u_ij ≥ 0 and u_ij ≥ α_i + β_j − C_ij.
    for i in 0..m {
        for j in 0..n {
            let u = iu + i * n + j;
            t.push(rhs.len(), u, -1.0);
            rhs.push(0.0);
            t.push(rhs.len(), ia + i, 1.0);
            t.push(rhs.len(), ib + j, 1.0);
            t.push(rhs.len(), u, -1.0);
            rhs.push(c[[i, j]]);
        }
    }
    let mut cones = vec![NonnegativeConeT(rhs.len())];
    // (α + c, β − c) has the same objective: pin β_0 = 0 so that the optimal set is bounded.
    t.push(rhs.len(), ib, 1.0);
    rhs.push(0.0);
    cones.push(ZeroConeT(1));
    // ‖u_S‖² ≤ 2γτ_j = 2·x·y with x = γτ_j/σ, y = σ, as the second-order cone
    // ‖(x − y, √2 u_S)‖ ≤ x + y. σ ≈ γ · (a typical plan entry) keeps x and y of one size.
    let sigma = gamma * pr.b().sum() / (n as f64 * k as f64);
    for j in 0..n {
        for s in subsets(m, k) {
            t.push(rhs.len(), it + j, -gamma / sigma);
            rhs.push(sigma);
            t.push(rhs.len(), it + j, -gamma / sigma);
            rhs.push(-sigma);
            for &i in &s {
                t.push(rhs.len(), iu + i * n + j, -std::f64::consts::SQRT_2);
                rhs.push(0.0);
            }
            cones.push(SecondOrderConeT(k + 2));
        }
    }
    let a = t.csc(rhs.len(), nvar);
    let p = CscMatrix::zeros((nvar, nvar));
    let (obj, x) = clarabel_solve(&p, &q, &a, &rhs, &cones);
    // Certify the interior-point answer: D_k evaluated exactly at its (α, β) is a lower bound on D_k*, and
    // it must agree with the solver's objective.
    let exact = dual_value(pr, k, gamma, &x[ia..ib], &x[ib..it]);
    assert_close("D_k at the conic solver's potentials", exact, -obj, 1e-9);
    exact
}

/// D_k(α, β) of docs/MATH.md §2.1, evaluated directly: α·a + β·b − Σ_j (1/2γ) Σ_{top k} [α_i + β_j − C_ij]_+².
fn dual_value(pr: &Problem, k: usize, gamma: f64, alpha: &[f64], beta: &[f64]) -> f64 {
    let c = pr.cost();
    let mut value: f64 = alpha.iter().zip(pr.a()).map(|(x, y)| x * y).sum::<f64>()
        + beta.iter().zip(pr.b()).map(|(x, y)| x * y).sum::<f64>();
    for (j, &bj) in beta.iter().enumerate() {
        let mut sq: Vec<f64> = (0..pr.m())
            .map(|i| (alpha[i] + bj - c[[i, j]]).max(0.0).powi(2))
            .collect();
        sq.sort_by(|x, y| y.total_cmp(x));
        value -= sq.iter().take(k).sum::<f64>() / (2.0 * gamma);
    }
    value
}

#[test]
fn network_simplex_matches_lp() {
    for (m, n, seed) in [
        (2, 3, 1),
        (5, 4, 2),
        (7, 7, 3),
        (10, 6, 4),
        (12, 15, 5),
        (20, 20, 6),
    ] {
        let p = random_problem(m, n, seed);
        let lp = reference_transport(&p, 0.0);
        let sol = ExactOt::new().solve(&p).unwrap();
        assert!(sol.converged(), "{sol}");
        assert_close(
            &format!("{m}x{n} seed {seed}: cost"),
            sol.transport_cost,
            lp,
            1e-9,
        );
        assert_close(
            &format!("{m}x{n} seed {seed}: dual value"),
            sol.value,
            lp,
            1e-9,
        );
        let worst = p
            .cost()
            .indexed_iter()
            .map(|((i, j), &c)| sol.alpha[i] + sol.beta[j] - c)
            .fold(f64::NEG_INFINITY, f64::max);
        assert!(
            worst <= 1e-12,
            "{m}x{n} seed {seed}: dual infeasible by {worst:e}"
        );
    }
    let g = golden_problem();
    assert_close(
        "golden LP",
        reference_transport(&g, 0.0),
        0.2591074830,
        1e-9,
    );
}

#[test]
fn quadratic_ot_matches_qp() {
    for (m, n, seed, gamma) in [
        (4, 3, 1, 0.1),
        (6, 5, 2, 1.0),
        (8, 8, 3, 0.05),
        (10, 7, 4, 0.5),
    ] {
        let p = random_problem(m, n, seed);
        let qp = reference_transport(&p, gamma);
        for f in [Formulation::SemiDual, Formulation::Dual] {
            let sol = SparseOt::quadratic(gamma)
                .unwrap()
                .formulation(f)
                .solve(&p)
                .unwrap();
            assert_close(&format!("{m}x{n} gamma {gamma} {f}"), sol.value, qp, 1e-7);
        }
    }
}

#[test]
fn epigraph_dual_at_k_equal_m_is_the_qp() {
    let p = random_problem(5, 4, 8);
    for gamma in [0.1, 1.0] {
        let qp = reference_transport(&p, gamma);
        assert_close(
            &format!("gamma {gamma}"),
            reference_sparse_dual(&p, 5, gamma),
            qp,
            1e-8,
        );
    }
}

/// docs/MATH.md §8's table, checked independently of every solver of the crate.
#[test]
fn golden_values_match_epigraph_reference() {
    let g = golden_problem();
    let table: [(f64, usize, f64, f64); 8] = [
        (0.1, 1, 0.2694249433, 1e-9),
        (0.1, 2, 0.26469768, 6e-9),
        (0.1, 3, 0.26401290, 6e-9),
        (0.1, 5, 0.26363790, 6e-9),
        (0.01, 1, 0.2601392290, 1e-9),
        (0.01, 2, 0.25966650, 6e-9),
        (0.01, 3, 0.25960037, 6e-9),
        (0.01, 5, 0.25957848, 6e-9),
    ];
    for (gamma, k, expected, tol) in table {
        let found = reference_sparse_dual(&g, k, gamma);
        assert_close(
            &format!("golden D_{k}, gamma {gamma}"),
            found,
            expected,
            tol,
        );
    }
    // k >= 5 is quadratic OT: the same value for every k up to m.
    for k in 6..=8 {
        assert_close(
            &format!("golden D_{k}"),
            reference_sparse_dual(&g, k, 0.1),
            0.26363790,
            6e-9,
        );
    }
}

/// The sparse solvers (semi-dual and dual) reach D_k* of the epigraph reference for every k < m.
#[test]
fn sparse_solvers_reach_epigraph_optimum() {
    for (m, n, seed, gamma) in [
        (5, 4, 1, 0.1),
        (5, 4, 2, 0.5),
        (5, 4, 3, 0.05),
        (6, 5, 4, 0.01),
        (6, 3, 5, 1.0),
    ] {
        let p = random_problem(m, n, seed);
        for k in 1..m {
            let reference = reference_sparse_dual(&p, k, gamma);
            for f in [Formulation::SemiDual, Formulation::Dual] {
                let sol = SparseOt::new(k, gamma)
                    .unwrap()
                    .formulation(f)
                    .solve(&p)
                    .unwrap();
                let what = format!("{m}x{n} seed {seed} gamma {gamma} k {k} {f}");
                assert!(sol.converged(), "{what}: {sol}");
                assert_close(&what, sol.value, reference, 1e-7);
            }
        }
    }
}

/// docs/MATH.md §2.3: D_1* = OT(a, b) + γ/2 ‖b‖², linking the epigraph reference to the LP and the network simplex.
#[test]
fn epigraph_dual_at_k_one_is_ot_plus_constant() {
    for (m, n, seed, gamma) in [(5, 4, 11, 0.1), (6, 3, 12, 0.02)] {
        let p = random_problem(m, n, seed);
        let ot = ExactOt::new().solve(&p).unwrap().transport_cost;
        let expected = ot + 0.5 * gamma * p.b().dot(&p.b());
        assert_close(
            &format!("seed {seed}"),
            reference_sparse_dual(&p, 1, gamma),
            expected,
            1e-9,
        );
    }
}
