//! Network simplex timing: uniform 2-D points in the unit square, squared Euclidean cost, uniform marginals.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ndarray::{Array1, Array2};
use sparse_ot::{ExactOt, Problem};

/// splitmix64 in [0, 1): a fixed, dependency-free point generator.
struct SplitMix(u64);
impl SplitMix {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn points_problem(n: usize, seed: u64) -> Problem {
    let mut r = SplitMix(seed);
    let mut pts = |k: usize| -> Vec<(f64, f64)> { (0..k).map(|_| (r.next(), r.next())).collect() };
    let (x, y) = (pts(n), pts(n));
    let cost = Array2::from_shape_fn((n, n), |(i, j)| {
        let (dx, dy) = (x[i].0 - y[j].0, x[i].1 - y[j].1);
        dx * dx + dy * dy
    });
    let w = Array1::from_elem(n, 1.0 / n as f64);
    Problem::new(w.view(), w.view(), cost.view()).expect("valid problem")
}

fn network_simplex(c: &mut Criterion) {
    let mut group = c.benchmark_group("exact_network_simplex");
    group.sample_size(10);
    for n in [100, 500, 2000] {
        let p = points_problem(n, 42);
        group.throughput(Throughput::Elements((n * n) as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &p, |bench, p| {
            bench.iter(|| {
                let sol = ExactOt::new().solve(p).expect("solves");
                assert!(sol.converged());
                sol.transport_cost
            })
        });
    }
    group.finish();
}

criterion_group!(benches, network_simplex);
criterion_main!(benches);
