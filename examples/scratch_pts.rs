use sparse_ot::*;
fn main() {
    let n: usize = std::env::args().nth(1).unwrap().parse().unwrap();
    let mut s = 1u64;
    let mut r = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f64 / (1u64 << 53) as f64
    };
    let x = ndarray::Array2::from_shape_fn((n, 2), |_| r());
    let y = ndarray::Array2::from_shape_fn((n, 2), |_| r());
    let p = PointProblem::uniform(&x, &y, GroundCost::SqEuclidean).unwrap();
    for it in [1usize, 2, 12] {
        let cfg = Sinkhorn::new(0.01).unwrap().tol(0.0).unwrap().max_iter(it);
        let a = cfg.solve_points(&p).unwrap();
        let d = cfg.solve(&p.to_problem(1 << 34).unwrap()).unwrap();
        println!(
            "{it}: points tc {} rows {:.2e} f0 {} | dense tc {} rows {:.2e} f0 {}",
            a.transport_cost,
            a.marginal_error_rows,
            a.alpha[0],
            d.transport_cost,
            d.marginal_error_rows,
            d.alpha[0]
        );
    }
}
