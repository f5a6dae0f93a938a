//! Deterministic data and closeness checks shared by the tests, the benches and the examples: the one
//! generator ([`Rng`], SplitMix64), random problems, point clouds, router logits, and [`assert_close`] with its
//! slice and matrix forms.
//!
//! Tests include it as `#[path = "common/data.rs"] mod data;`, benches and examples as
//! `#[path = "../tests/common/data.rs"] mod data;`.
//!
//! `tests/fingerprint.rs` draws its inputs from here, and `tests/data/fingerprints*.txt` hold the results on
//! those inputs: a change to what these functions produce must re-record those files on the library as it was
//! before (see that test's docs), or the fingerprints no longer prove anything.
#![allow(dead_code)] // each test, bench and example binary uses some of them

use ndarray::{Array1, Array2, Array3};
use sparse_ot::Problem;

/// SplitMix64: a tiny deterministic generator, the same sequence on every machine.
pub struct Rng(u64);

impl Rng {
    /// The generator whose first output follows state `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1): the top 53 bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in (0, 1): the top 53 bits, centred in their interval (never 0, so its logarithm is finite).
    pub fn next_open(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next_f64()
    }

    /// Standard normal (Box–Muller, cosine branch; two uniforms per draw).
    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.next_open(), self.next_open());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// How [`random_problem_from`] draws the marginals.
#[derive(Debug, Clone, Copy)]
pub enum Masses {
    /// 0.05 + U[0, 1) per entry, each side scaled to total 1, and b's first entry corrected so that the totals
    /// are equal exactly: marginals can be checked to 1e-12 against both vectors.
    Unit,
    /// U[lo, hi) per entry, not normalised; b rescaled to a's total (equal up to rounding).
    Range(f64, f64),
}

/// A random problem drawn from `rng`: a (m entries), then b (n), by `masses`, then the cost uniform in [0, 1)
/// in row-major order.
pub fn random_problem_from(rng: &mut Rng, m: usize, n: usize, masses: Masses) -> Problem {
    let (a, b) = match masses {
        Masses::Unit => {
            let mut unit = |len: usize| {
                let v: Vec<f64> = (0..len).map(|_| 0.05 + rng.next_f64()).collect();
                let total: f64 = v.iter().sum();
                Array1::from_iter(v.into_iter().map(|x| x / total))
            };
            let a = unit(m);
            let mut b = unit(n);
            let (sa, sb): (f64, f64) = (a.iter().sum(), b.iter().sum());
            b[0] += sa - sb;
            (a, b)
        }
        Masses::Range(lo, hi) => {
            let a = Array1::from_shape_fn(m, |_| rng.uniform(lo, hi));
            let mut b = Array1::from_shape_fn(n, |_| rng.uniform(lo, hi));
            b *= a.sum() / b.sum();
            (a, b)
        }
    };
    let cost = Array2::from_shape_fn((m, n), |_| rng.next_f64());
    Problem::new(a.view(), b.view(), cost.view()).expect("a valid random problem")
}

/// An m × n random problem from seed `seed`: [`Masses::Unit`] marginals, cost uniform in [0, 1).
pub fn random_problem(m: usize, n: usize, seed: u64) -> Problem {
    random_problem_from(&mut Rng::new(seed), m, n, Masses::Unit)
}

/// How a point-cloud cost is scaled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CostScale {
    /// Squared distances as they are (points in the unit square: at most 2).
    Raw,
    /// Divided by the largest entry, so the cost's maximum is 1.
    MaxOne,
}

/// m sources and n targets uniform in the unit square, squared Euclidean cost scaled to max 1, uniform
/// marginals.
pub fn point_cloud_problem(m: usize, n: usize, seed: u64) -> Problem {
    point_cloud_problem_with(m, n, seed, CostScale::MaxOne)
}

/// [`point_cloud_problem`] with the cost scaled as `scale` says.
pub fn point_cloud_problem_with(m: usize, n: usize, seed: u64, scale: CostScale) -> Problem {
    let mut rng = Rng::new(seed);
    let x: Vec<[f64; 2]> = (0..m).map(|_| [rng.next_f64(), rng.next_f64()]).collect();
    let y: Vec<[f64; 2]> = (0..n).map(|_| [rng.next_f64(), rng.next_f64()]).collect();
    let mut cost = Array2::from_shape_fn((m, n), |(i, j)| {
        (x[i][0] - y[j][0]).powi(2) + (x[i][1] - y[j][1]).powi(2)
    });
    if scale == CostScale::MaxOne {
        let cmax = cost.iter().cloned().fold(0.0, f64::max);
        cost /= cmax;
    }
    let a = Array1::from_elem(m, 1.0 / m as f64);
    let b = Array1::from_elem(n, 1.0 / n as f64);
    Problem::new(a.view(), b.view(), cost.view()).expect("a valid point-cloud problem")
}

/// n points uniform in the unit cube of dimension d, drawn from seed `seed` point by point.
pub fn cloud(n: usize, d: usize, seed: u64) -> Array2<f64> {
    let mut rng = Rng::new(seed);
    Array2::from_shape_fn((n, d), |_| rng.next_f64())
}

/// n masses 0.2 + U[0, 1) drawn from seed `seed`, scaled to total 1.
pub fn cloud_masses(n: usize, seed: u64) -> Array1<f64> {
    let mut rng = Rng::new(seed);
    let w = Array1::from_shape_fn(n, |_| 0.2 + rng.next_f64());
    let total = w.sum();
    w / total
}

/// The stored 300 × 200 problem with Dirichlet masses (tests/data/dirichlet_300x200.npz: 5-D points uniform
/// in the unit cube, Dirichlet(1) masses down to ~1e-5), squared distances scaled to max 1.
pub fn dirichlet_problem() -> Problem {
    use ndarray_npy::NpzReader;
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/dirichlet_300x200.npz"
    );
    let mut npz = NpzReader::new(std::fs::File::open(path).unwrap()).unwrap();
    let x: Array2<f64> = npz.by_name("x").unwrap();
    let y: Array2<f64> = npz.by_name("y").unwrap();
    let a: Array1<f64> = npz.by_name("a").unwrap();
    let b: Array1<f64> = npz.by_name("b").unwrap();
    let mut cost = sparse_ot::pairwise(&x, &y, sparse_ot::GroundCost::SqEuclidean).unwrap();
    let max = cost.fold(0.0f64, |m, &c| m.max(c));
    cost /= max;
    Problem::new(&a, &b, &cost).expect("the stored Dirichlet problem is valid")
}

/// Router logits, g groups × s tokens × e experts, uniform in [-2, 2).
pub fn logits(g: usize, s: usize, e: usize, seed: u64) -> Array3<f64> {
    let mut rng = Rng::new(seed);
    Array3::from_shape_simple_fn((g, s, e), || 4.0 * rng.next_f64() - 2.0)
}

/// Logits of a trained-looking router: expert j has a popularity bias N(0, 0.5²) shared by all tokens (a few
/// experts are strongly favoured), and every token adds its own N(0, 1) preference per expert.
pub fn skewed_logits(g: usize, s: usize, e: usize, seed: u64) -> Array3<f64> {
    let mut rng = Rng::new(seed);
    let popularity: Vec<f64> = (0..e).map(|_| 0.5 * rng.normal()).collect();
    let mut out = Array3::zeros((g, s, e));
    for ((_, _, j), x) in out.indexed_iter_mut() {
        *x = popularity[j] + rng.normal();
    }
    out
}

/// Whether `actual` is within `tol` of `expected`: |actual − expected| ≤ tol, or the same bits (a NaN
/// expected is matched only by that NaN; a NaN where a number is expected is never close).
pub fn is_close(actual: f64, expected: f64, tol: f64) -> bool {
    actual.to_bits() == expected.to_bits() || (actual - expected).abs() <= tol
}

/// Fails, naming the quantity, both values and their difference, unless |actual − expected| ≤ tol (absolute;
/// see [`is_close`] for NaN).
#[track_caller]
pub fn assert_close(what: &str, actual: f64, expected: f64, tol: f64) {
    let diff = (actual - expected).abs();
    assert!(
        is_close(actual, expected, tol),
        "{what}: actual {actual:.15e}, expected {expected:.15e}, difference {diff:.3e} > tolerance {tol:.1e}"
    );
}

/// Element-wise [`assert_close`] of equal-length slices, naming the first offending index.
#[track_caller]
pub fn assert_all_close(what: &str, actual: &[f64], expected: &[f64], tol: f64) {
    assert_eq!(actual.len(), expected.len(), "{what}: lengths differ");
    for (i, (&x, &y)) in actual.iter().zip(expected).enumerate() {
        if !is_close(x, y, tol) {
            assert_close(&format!("{what}[{i}]"), x, y, tol);
        }
    }
}

/// Element-wise [`assert_close`] of equal-shape matrices, naming the first offending (row, column).
#[track_caller]
pub fn assert_matrix_close(what: &str, actual: &Array2<f64>, expected: &Array2<f64>, tol: f64) {
    assert_eq!(actual.dim(), expected.dim(), "{what}: shapes");
    for ((i, j), &y) in expected.indexed_iter() {
        let x = actual[(i, j)];
        if !is_close(x, y, tol) {
            assert_close(&format!("{what}[{i}, {j}]"), x, y, tol);
        }
    }
}
