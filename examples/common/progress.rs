//! Progress of long solves on stderr, shared by the examples: a [`Reporter`] made from the `--quiet` and
//! `--progress` flags ([`ProgressArgs`]) hands out one [`Watch`] per piece of work, whose
//! [`Watch::monitor`] goes to the solver configuration (`.monitor(...)`).
//!
//! * Nothing is printed during the first second of a piece of work, so short runs stay silent.
//! * When stderr is a terminal, one status line is updated in place (and erased when the work ends);
//!   otherwise, with `--progress`, one line at most every second (for logs). Without `--progress`, nothing is
//!   printed when stderr is not a terminal; `--quiet` prints nothing at all.
//! * A line names the work, then for a single solve its stage, iteration and current marginal error, for a
//!   batch the problems finished so far, and the time since the work started.
//! * The environment variable `SPARSE_OT_PROGRESS_INTERVAL` (seconds, e.g. `0` or `0.1`) replaces both the
//!   first delay and the period (used by the tests).

#![allow(dead_code)] // each example uses some of it

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sparse_ot::{Event, Monitor};

/// Silence before the first report and the least time between two lines.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// The least time between two updates of the status line on a terminal.
const STATUS_REFRESH: Duration = Duration::from_millis(250);
/// A status line longer than a narrow terminal would wrap, and `\r` would then no longer erase it.
const STATUS_WIDTH: usize = 79;

/// The progress flags of every example (`#[command(flatten)]`).
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct ProgressArgs {
    /// Print nothing on stderr but errors (no progress, no notes).
    #[arg(long, conflicts_with = "progress")]
    pub quiet: bool,
    /// Report the progress of solves that take more than a second on stderr even when it is not a terminal
    /// (a line a second; on a terminal one status line is updated in place, the default there).
    #[arg(long)]
    pub progress: bool,
}

impl ProgressArgs {
    /// The reporter these flags ask for.
    pub fn reporter(self) -> Reporter {
        let terminal = std::io::stderr().is_terminal();
        let mode = if self.quiet || !(self.progress || terminal) {
            Mode::Off
        } else if terminal {
            Mode::Status
        } else {
            Mode::Lines
        };
        let interval = std::env::var("SPARSE_OT_PROGRESS_INTERVAL")
            .ok()
            .and_then(|s| s.trim().parse::<f64>().ok())
            .and_then(|s| Duration::try_from_secs_f64(s).ok());
        Reporter {
            mode,
            delay: interval.unwrap_or(DEFAULT_INTERVAL),
            period: interval.unwrap_or(match mode {
                Mode::Status => STATUS_REFRESH,
                _ => DEFAULT_INTERVAL,
            }),
            items_every: None,
            quiet: self.quiet,
        }
    }

    /// Whether notes besides progress (e.g. which device was chosen) may go to stderr.
    pub fn notes(self) -> bool {
        !self.quiet
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Off,
    /// Lines, for logs and pipes.
    Lines,
    /// One line updated in place, on a terminal.
    Status,
}

/// Hands out a [`Watch`] per piece of work.
#[derive(Debug, Clone)]
pub struct Reporter {
    mode: Mode,
    delay: Duration,
    period: Duration,
    /// Report batches every this many finished problems instead of by time (0: never).
    items_every: Option<usize>,
    /// `--quiet` was given.
    quiet: bool,
}

impl Reporter {
    /// Reports batches by count instead: a line every `n` finished problems and at the last one, from the
    /// start, even when stderr is not a terminal (`n = 0`: no batch progress at all). `--quiet` still wins.
    pub fn every_items(mut self, n: usize) -> Self {
        if !self.quiet {
            self.mode = Mode::Lines;
        }
        self.items_every = Some(n);
        self
    }

    /// A single solve called `what`: its steps are reported.
    pub fn solve(&self, what: &str) -> Watch {
        self.watch(what, None)
    }

    /// A batch called `what` of problems called `items` ("problems", "groups"): finished ones are counted.
    pub fn batch(&self, what: &str, items: &str) -> Watch {
        self.watch(what, Some(items.to_owned()))
    }

    fn watch(&self, what: &str, items: Option<String>) -> Watch {
        let shared = Arc::new(Shared {
            what: what.to_owned(),
            items,
            mode: self.mode,
            period: self.period,
            items_every: self.items_every,
            start: Instant::now(),
            state: Mutex::new(State {
                next: self.delay,
                shown: false,
                done: 0,
            }),
        });
        let monitor = if self.mode == Mode::Off {
            Monitor::new()
        } else {
            let observer = shared.clone();
            Monitor::new().on_event(move |event| observer.hear(event))
        };
        Watch { monitor, shared }
    }
}

/// One piece of work being watched; erases its status line when dropped.
pub struct Watch {
    monitor: Monitor,
    shared: Arc<Shared>,
}

impl Watch {
    /// The monitor to set on the solver configuration.
    pub fn monitor(&self) -> Monitor {
        self.monitor.clone()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let state = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        if self.shared.mode == Mode::Status && state.shown {
            let mut err = std::io::stderr().lock();
            // Progress is a convenience: a failed write to stderr is not worth failing the example.
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
        }
    }
}

struct Shared {
    what: String,
    items: Option<String>,
    mode: Mode,
    period: Duration,
    items_every: Option<usize>,
    start: Instant,
    state: Mutex<State>,
}

struct State {
    /// Time since the start at which the next report is due.
    next: Duration,
    /// Whether anything was printed.
    shown: bool,
    /// The most finished problems reported.
    done: usize,
}

impl Shared {
    /// Called with every event, from the solving threads.
    fn hear(&self, event: &Event<'_>) {
        let elapsed = self.start.elapsed();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let text = match *event {
            Event::Step(p) => {
                if elapsed < state.next {
                    return;
                }
                let value = if p.value.is_finite() {
                    format!(", value {:.6e}", p.value)
                } else {
                    String::new()
                };
                format!(
                    "{}: {} iteration {}, marginal error {:.2e}{value}",
                    self.what, p.stage, p.iteration, p.marginal_error
                )
            }
            Event::Finished { done, total } => {
                if done <= state.done {
                    return; // reports from several threads may arrive out of order
                }
                let due = match self.items_every {
                    Some(0) => false,
                    Some(n) => done % n == 0 || done == total,
                    None => elapsed >= state.next || (done == total && state.shown),
                };
                if !due {
                    return;
                }
                state.done = done;
                let items = self.items.as_deref().unwrap_or("problems");
                format!("{}: {done}/{total} {items}", self.what)
            }
            _ => return,
        };
        state.next = elapsed + self.period;
        state.shown = true;
        let text = format!("{text}, {:.1} s", elapsed.as_secs_f64());
        let mut err = std::io::stderr().lock();
        // Progress is a convenience: a failed write to stderr is not worth failing the example.
        let _ = match self.mode {
            Mode::Status => {
                let short: String = text.chars().take(STATUS_WIDTH).collect();
                write!(err, "\r\x1b[2K{short}").and_then(|()| err.flush())
            }
            _ => writeln!(err, "progress: {text}"),
        };
    }
}
