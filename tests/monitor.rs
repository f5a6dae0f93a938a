//! One monitor for every solver: progress events and cancellation (a status, not an error).

#[path = "common/data.rs"]
mod data;
#[path = "common/gpu.rs"]
mod gpu_common;
#[path = "common/monitor.rs"]
mod monitor_common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use ndarray::{Array1, Array3};
use sparse_ot::{
    golden_problem, Batch, Device, Event, ExactOt, Formulation, Monitor, Precision, Router,
    RouterSolver, Sinkhorn, SparseOt, Termination,
};

fn cancelled() -> Monitor {
    let m = Monitor::new();
    m.cancel();
    m
}

/// A single solve reports its steps (the start point, then one per accepted L-BFGS iteration or Newton
/// step) with increasing iteration counts up to the total, and no `Finished` event.
#[test]
fn single_solves_report_their_steps() {
    let (monitor, steps) = monitor_common::step_recorder();
    let (fin, finished) = monitor_common::finished_recorder();
    let p = golden_problem();
    let sol = SparseOt::quadratic(0.1)
        .unwrap()
        .monitor(monitor)
        .solve(&p)
        .unwrap();
    let steps = steps.lock().unwrap();
    assert!(
        steps
            .iter()
            .all(|s| s.stage == "lbfgs" || s.stage == "newton"),
        "{sol}"
    );
    assert_eq!(steps[0].stage, "lbfgs");
    assert_eq!(steps.len(), sol.iterations + 1, "{sol}");
    assert!(steps.iter().enumerate().all(|(i, s)| s.iteration == i));
    assert_eq!(
        steps.last().unwrap().marginal_error,
        sol.marginal_error_rows
    );
    let sol = Sinkhorn::new(0.1).unwrap().monitor(fin).solve(&p).unwrap();
    assert!(sol.converged());
    assert!(finished.lock().unwrap().is_empty());
}

/// A Sinkhorn solve whose tolerance f32 cannot reach hands over to Newton's method ("sinkhorn newton" steps,
/// each one iteration, after the loop's checks) and converges; cancelled at the first of its Newton steps,
/// it says `Cancelled`.
#[test]
fn the_newton_finish_reports_its_steps_and_can_be_cancelled() {
    let p = data::point_cloud_problem(60, 40, 3);
    let cfg = Sinkhorn::new(3e-4).unwrap().precision(Precision::F32);
    let (monitor, steps) = monitor_common::step_recorder();
    let sol = cfg.clone().monitor(monitor).solve(&p).unwrap();
    assert!(sol.converged(), "{sol}");
    let steps = steps.lock().unwrap();
    let newton: Vec<_> = steps
        .iter()
        .filter(|s| s.stage == "sinkhorn newton")
        .collect();
    assert!(
        !newton.is_empty() && newton.len() < 50,
        "{} Newton steps",
        newton.len()
    );
    assert_eq!(newton.last().unwrap().iteration, sol.iterations, "{sol}");
    assert!(steps.windows(2).all(|w| w[0].iteration < w[1].iteration));

    let stop = Monitor::new();
    let on_step = stop.clone();
    let stop = stop.on_event(move |e| {
        if matches!(e, Event::Step(s) if s.stage == "sinkhorn newton") {
            on_step.cancel();
        }
    });
    let sol = cfg.monitor(stop).solve(&p).unwrap();
    assert_eq!(sol.termination, Termination::Cancelled, "{sol}");
}

/// A monitor cancelled before the solve starts: every solver returns its starting state, `Cancelled`.
#[test]
fn a_cancelled_monitor_stops_every_solver_at_once() {
    let p = golden_problem();
    for formulation in [Formulation::SemiDual, Formulation::Dual] {
        for k in [1, 2] {
            let sol = SparseOt::new(k, 0.1)
                .unwrap()
                .formulation(formulation)
                .monitor(cancelled())
                .solve(&p)
                .unwrap();
            assert_eq!(sol.termination, Termination::Cancelled, "k = {k}: {sol}");
            assert_eq!(sol.iterations, 0, "k = {k}");
            assert!(!sol.converged());
        }
    }
    // Sinkhorn checks the monitor at its marginal-error checks: the first one ends it.
    let sol = Sinkhorn::new(0.01)
        .unwrap()
        .check_every(5)
        .unwrap()
        .monitor(cancelled())
        .solve(&p)
        .unwrap();
    assert_eq!(sol.termination, Termination::Cancelled, "{sol}");
    assert_eq!(sol.iterations, 5);
    let sol = ExactOt::new().monitor(cancelled()).solve(&p).unwrap();
    assert_eq!(sol.termination, Termination::Cancelled);
    assert_eq!(sol.iterations, 0);
    assert!(sol.to_string().contains("cancelled"), "{sol}");
}

/// Cancelling from the observer after the third accepted step returns that iterate, with its plan and value.
#[test]
fn cancelling_mid_solve_keeps_the_state_reached() {
    let p = golden_problem();
    let cfg = SparseOt::new(2, 0.01).unwrap();
    let monitor = Monitor::new();
    let handle = monitor.clone();
    let monitor = monitor.on_event(move |e| {
        if let Event::Step(s) = e {
            if s.iteration == 3 {
                handle.cancel();
            }
        }
    });
    let sol = cfg.clone().monitor(monitor).solve(&p).unwrap();
    assert_eq!(sol.termination, Termination::Cancelled, "{sol}");
    assert_eq!(sol.iterations, 3);
    // The same three iterations without a monitor, then stopped by the iteration limit: same potentials.
    let three = cfg.max_iter(3).solve(&p).unwrap();
    assert_eq!(three.termination, Termination::MaxIterations);
    assert_eq!(sol.alpha, three.alpha);
    assert_eq!(sol.value.to_bits(), three.value.to_bits());
}

/// A long solve on a worker thread is stopped from the main thread and returns promptly, cancelled.
#[test]
fn a_solve_can_be_cancelled_from_another_thread() {
    let (m, n) = (200, 150);
    let cost = ndarray::Array2::from_shape_fn((m, n), |(i, j)| {
        ((i as f64 / m as f64) - (j as f64 / n as f64)).powi(2)
    });
    let a = Array1::from_elem(m, 1.0 / m as f64);
    let b = Array1::from_elem(n, 1.0 / n as f64);
    let p = sparse_ot::Problem::new(a.view(), b.view(), cost.view()).unwrap();
    let (tx, rx) = mpsc::channel();
    let sent = Arc::new(AtomicBool::new(false));
    let monitor = Monitor::new().on_event(move |_| {
        if !sent.swap(true, Ordering::Relaxed) {
            let _ = tx.send(());
        }
    });
    // tol 0 runs exactly max_iter iterations: far more than the test would wait for.
    let cfg = Sinkhorn::new(1e-3)
        .unwrap()
        .tol(0.0)
        .unwrap()
        .max_iter(usize::MAX)
        .monitor(monitor.clone());
    let worker = std::thread::spawn(move || cfg.solve(&p));
    rx.recv().expect("the solve reports its first check");
    monitor.cancel();
    let sol = worker.join().unwrap().unwrap();
    assert_eq!(sol.termination, Termination::Cancelled);
    assert!(sol.iterations >= 10 && sol.iterations < usize::MAX);
    assert!(sol.alpha.iter().all(|x| x.is_finite()));
}

fn small_batch() -> Batch {
    let (nb, m, n) = (4, 6, 5);
    let cost = Array3::from_shape_fn((nb, m, n), |(p, i, j)| {
        ((i + p) as f64 / m as f64 - j as f64 / n as f64).powi(2)
    });
    Batch::shared_marginals(
        Array1::from_elem(m, 1.0 / m as f64).view(),
        Array1::from_elem(n, 1.0 / n as f64).view(),
        cost.view(),
    )
    .unwrap()
}

/// Batches: a cancelled monitor ends every problem `Cancelled`, and each still counts as finished.
#[test]
fn cancelled_batches_report_every_problem() {
    let batch = small_batch();
    let (monitor, seen) = monitor_common::finished_recorder();
    monitor.cancel();
    let cfg = SparseOt::new(2, 0.1).unwrap().monitor(monitor);
    for sol in cfg.solve_batch(&batch) {
        assert_eq!(sol.unwrap().termination, Termination::Cancelled);
    }
    for sol in cfg
        .solve_batch_adam_on(&batch, 1e-2, 20, &Device::Cpu)
        .unwrap()
    {
        let sol = sol.unwrap();
        assert_eq!(sol.termination, Termination::Cancelled);
        assert_eq!(sol.iterations, 0);
    }
    assert_eq!(
        monitor_common::sorted(&seen),
        (1..=4).flat_map(|d| [(d, 4), (d, 4)]).collect::<Vec<_>>()
    );
}

/// The router hears of every group, and a cancelled router's groups end `Cancelled`.
#[test]
fn the_router_reports_groups_and_can_be_cancelled() {
    let logits = Array3::from_shape_fn((3, 8, 4), |(g, s, e)| ((g + 3 * s + 5 * e) % 7) as f64);
    let (monitor, seen) = monitor_common::finished_recorder();
    let routing = Router::experts_choose(1.0)
        .unwrap()
        .monitor(monitor)
        .route(logits.view())
        .unwrap();
    assert_eq!(routing.groups.len(), 3);
    assert_eq!(monitor_common::sorted(&seen), vec![(1, 3), (2, 3), (3, 3)]);
    let routing = Router::experts_choose(1.0)
        .unwrap()
        .solver(RouterSolver::ACCURATE)
        .unwrap()
        .monitor(cancelled())
        .route(logits.view())
        .unwrap();
    assert!(routing
        .groups
        .iter()
        .all(|g| g.termination == Termination::Cancelled));
}

/// On a GPU too: single solves and batches stop at once with a cancelled monitor.
#[test]
fn gpu_solves_are_cancelled_too() {
    let Some(ctx) = gpu_common::gpu() else { return };
    let device = Device::Gpu(ctx);
    let p = golden_problem();
    let sol = SparseOt::new(2, 0.1)
        .unwrap()
        .monitor(cancelled())
        .solve_on(&p, &device)
        .unwrap();
    assert_eq!(sol.termination, Termination::Cancelled, "{sol}");
    assert_eq!(sol.iterations, 0);
    let sol = Sinkhorn::new(0.1)
        .unwrap()
        .monitor(cancelled())
        .solve_on(&p, &device)
        .unwrap();
    assert_eq!(sol.termination, Termination::Cancelled, "{sol}");
    assert_eq!(sol.iterations, 10);
    let batch = small_batch();
    let cfg = SparseOt::new(2, 0.1).unwrap().monitor(cancelled());
    for sol in cfg.solve_batch_on(&batch, &device) {
        assert_eq!(sol.unwrap().termination, Termination::Cancelled);
    }
    for sol in cfg.solve_batch_adam_on(&batch, 1e-2, 20, &device).unwrap() {
        assert_eq!(sol.unwrap().termination, Termination::Cancelled);
    }
    for sol in Sinkhorn::new(0.1)
        .unwrap()
        .monitor(cancelled())
        .solve_batch_on(&batch, &device)
    {
        assert_eq!(sol.unwrap().termination, Termination::Cancelled);
    }
}
