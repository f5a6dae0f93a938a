//! Network simplex timing: uniform 2-D points in the unit square, squared Euclidean cost, uniform
//! marginals (`point_cloud_problem_with` in tests/common/data.rs).

#[path = "../tests/common/data.rs"]
mod data;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use data::{point_cloud_problem_with, CostScale};
use sparse_ot::ExactOt;

fn network_simplex(c: &mut Criterion) {
    let mut group = c.benchmark_group("exact_network_simplex");
    group.sample_size(10);
    for n in [100, 500, 2000] {
        let p = point_cloud_problem_with(n, n, 42, CostScale::Raw);
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
