use sparse_ot::*;
fn main() -> Result<()> {
    let p = golden_problem();
    for gamma in [0.1, 0.01] {
        for k in [1usize, 2, 3, 5, 8] {
            for f in [Formulation::SemiDual, Formulation::Dual] {
                let s = SparseOt::new(k, gamma)?.formulation(f).solve(&p)?;
                println!("g={gamma} k={k} {f}: {:.12} it={} {} err {:.1e} {:.1e}", s.value, s.iterations, s.termination, s.marginal_error_rows, s.marginal_error_cols);
            }
        }
    }
    for eps in [0.1, 0.01] {
        let s = Sinkhorn::new(eps)?.tol(1e-13)?.solve(&p)?;
        println!("eps={eps}: tc {:.12} value {:.12} it={} {}", s.transport_cost, s.value, s.iterations, s.termination);
    }
    Ok(())
}
