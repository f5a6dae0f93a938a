//! Per-solve counts of the device work the host records: dispatches, blocking readbacks and bytes of cost
//! the kernels read (each dispatch declares its reads from its own geometry when it is prepared).
//!
//! A solve runs on one thread from start to end (async entry points start a thread of their own), so the
//! counts are kept per thread: [`measure`] collects what the closure records on the calling thread, whatever
//! other threads do on the same context at the same time. Nested measurements add up into the enclosing one.

use std::cell::Cell;

use crate::solution::GpuWork;

thread_local! {
    static CURRENT: Cell<Option<GpuWork>> = const { Cell::new(None) };
}

/// Runs `f` and returns what it recorded. Work recorded outside any measurement is not kept.
pub(crate) fn measure<R>(f: impl FnOnce() -> R) -> (R, GpuWork) {
    let outer = CURRENT.with(|c| c.replace(Some(GpuWork::default())));
    let r = f();
    let inner = CURRENT.with(|c| c.replace(outer)).unwrap_or_default();
    if outer.is_some() {
        record(|w| w.add(&inner));
    }
    (r, inner)
}

fn record(update: impl FnOnce(&mut GpuWork)) {
    CURRENT.with(|c| {
        if let Some(mut w) = c.get() {
            update(&mut w);
            c.set(Some(w));
        }
    });
}

/// `count` dispatches recorded into a command buffer, reading `cost_bytes` of cost together.
pub(crate) fn dispatched(count: usize, cost_bytes: u64) {
    record(|w| {
        w.dispatches += count as u64;
        w.cost_bytes_read += cost_bytes;
    });
}

/// One blocking readback (the host waited for the device).
pub(crate) fn read_back() {
    record(|w| w.readbacks += 1);
}

/// The last readback served an L-BFGS round that evaluated more than new directions' first trials
/// ([`GpuWork::search_readbacks`]).
pub(crate) fn search_round() {
    record(|w| w.search_readbacks += 1);
}
