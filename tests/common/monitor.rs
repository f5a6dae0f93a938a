//! Monitors that record what they hear, for the tests of progress reporting.
#![allow(dead_code)] // each test binary uses some of them

use std::sync::{Arc, Mutex};

use sparse_ot::{Event, Monitor, Progress};

/// What a finished recorder heard: every `(done, total)`, in the order the events came.
pub type Finished = Arc<Mutex<Vec<(usize, usize)>>>;

/// A monitor recording every `Finished { done, total }` event, and the record.
pub fn finished_recorder() -> (Monitor, Finished) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let monitor = Monitor::new().on_event(move |e| {
        if let Event::Finished { done, total } = e {
            sink.lock().unwrap().push((*done, *total));
        }
    });
    (monitor, seen)
}

/// A monitor recording every step's progress, and the record.
pub fn step_recorder() -> (Monitor, Arc<Mutex<Vec<Progress>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let monitor = Monitor::new().on_event(move |e| {
        if let Event::Step(p) = e {
            sink.lock().unwrap().push(**p);
        }
    });
    (monitor, seen)
}

/// The sorted record of a finished recorder.
pub fn sorted(seen: &Mutex<Vec<(usize, usize)>>) -> Vec<(usize, usize)> {
    let mut v = seen.lock().unwrap().clone();
    v.sort();
    v
}
