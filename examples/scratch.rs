use sparse_ot::*;
fn main() -> Result<()> {
    let p = golden_problem();
    for gamma in [0.1, 0.01] {
        for k in [1usize, 2, 3, 5, 8] {
            for f in [Formulation::SemiDual, Formulation::Dual] {
                let s = SparseOt::new(k, gamma)?.formulation(f).solve(&p)?;
                let gold = match (k, gamma == 0.1) {
                    (1, true) => 0.2694249433,
                    (2, true) => 0.26469768,
                    (3, true) => 0.26401290,
                    (1, false) => 0.2601392290,
                    (2, false) => 0.25966650,
                    (3, false) => 0.25960037,
                    (_, true) => 0.26363790,
                    (_, false) => 0.25957848,
                };
                println!(
                    "g={gamma} k={k} {f}: {:.12} diff {:.2e} it={} {} err {:.1e} {:.1e}",
                    s.value,
                    s.value - gold,
                    s.iterations,
                    s.termination,
                    s.marginal_error_rows,
                    s.marginal_error_cols
                );
            }
        }
    }
    for eps in [0.1, 0.01] {
        let s = Sinkhorn::new(eps)?.tol(1e-13)?.solve(&p)?;
        println!(
            "eps={eps}: tc {:.12} value {:.12} it={} {}",
            s.transport_cost, s.value, s.iterations, s.termination
        );
    }
    Ok(())
}
