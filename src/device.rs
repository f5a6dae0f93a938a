//! Where a solve runs: [`Device`], chosen by the caller of the `solve_on` entry points of every solver
//! family, and the thread that runs the async entry points.

#[cfg(feature = "gpu")]
use std::sync::Arc;

use crate::error::Result;
#[cfg(feature = "gpu")]
use crate::gpu::context::GpuContext;
use crate::solution::Solution;

/// The device a solve runs on, chosen by the caller.
///
/// GPU solves compute in **f32** (see [`crate::gpu`]); the CPU path is the f64 reference.
#[derive(Debug, Clone, Default)]
pub enum Device {
    /// The CPU reference path (f64, rayon).
    #[default]
    Cpu,
    /// A GPU context (create one with [`GpuContext::new`], adopt an app's device with
    /// [`GpuContext::from_device`], or use [`Device::gpu`] for the process-wide one).
    #[cfg(feature = "gpu")]
    Gpu(Arc<GpuContext>),
    /// The process-wide GPU context when a hardware adapter exists, else the CPU. A software adapter that
    /// runs on the CPU (e.g. Mesa's lavapipe) is not chosen automatically: the f64 CPU path is faster and
    /// more accurate than an emulated GPU; ask for it explicitly with [`Device::gpu`] if wanted.
    Auto,
}

/// What a [`Device`] resolves to for one solve.
pub(crate) enum Target {
    Cpu,
    #[cfg(feature = "gpu")]
    Gpu(Arc<GpuContext>),
}

impl Device {
    /// The process-wide GPU context ([`GpuContext::shared`]). Errors: [`crate::Error::NoAdapter`].
    #[cfg(feature = "gpu")]
    pub fn gpu() -> Result<Self> {
        Ok(Device::Gpu(GpuContext::shared()?))
    }

    /// Whether solves on this device run on a GPU (for `Auto`: whether an adapter was found).
    pub fn is_gpu(&self) -> bool {
        !matches!(self.target(), Target::Cpu)
    }

    /// One line saying where solves on this device run and, for [`Device::Auto`], why, e.g.
    /// `"GPU: NVIDIA H200 (Vulkan)"`, `"CPU: no GPU adapter (…)"` or `"CPU: only a software adapter was found
    /// (llvmpipe …, Vulkan), which Device::Auto does not choose; ask for it with Device::gpu()"`.
    ///
    /// For `Auto` this opens the process-wide GPU context ([`GpuContext::shared`]) if no solve has done so
    /// yet, exactly as the first solve would; the answer is the device that solves on `Auto` then use.
    pub fn describe(&self) -> String {
        match self {
            Device::Cpu => "CPU: asked for".into(),
            #[cfg(feature = "gpu")]
            Device::Gpu(ctx) => {
                let software = if ctx.is_software() {
                    "; a software adapter that runs on the CPU"
                } else {
                    ""
                };
                format!("GPU: {} ({}{software})", ctx.adapter_name(), ctx.backend())
            }
            #[cfg(feature = "gpu")]
            Device::Auto => match GpuContext::shared() {
                Ok(ctx) if !ctx.is_software() => {
                    format!("GPU: {} ({})", ctx.adapter_name(), ctx.backend())
                }
                Ok(ctx) => format!(
                    "CPU: only a software adapter was found ({}, {}), which Device::Auto does not choose; \
                     ask for it with Device::gpu()",
                    ctx.adapter_name(),
                    ctx.backend()
                ),
                Err(crate::error::Error::NoAdapter { why }) => format!("CPU: no GPU adapter ({why})"),
                Err(e) => format!("CPU: {e}"),
            },
            #[cfg(not(feature = "gpu"))]
            Device::Auto => "CPU: built without the `gpu` feature".into(),
        }
    }

    /// Where a solve on this device runs.
    pub(crate) fn target(&self) -> Target {
        match self {
            Device::Cpu => Target::Cpu,
            #[cfg(feature = "gpu")]
            Device::Gpu(ctx) => Target::Gpu(ctx.clone()),
            #[cfg(feature = "gpu")]
            Device::Auto => match GpuContext::shared() {
                Ok(ctx) if !ctx.is_software() => Target::Gpu(ctx),
                _ => Target::Cpu,
            },
            #[cfg(not(feature = "gpu"))]
            Device::Auto => Target::Cpu,
        }
    }
}

/// Runs `solve` on a new thread; the future resolves with its result (the executor's thread never waits).
pub(crate) async fn off_thread(
    solve: impl FnOnce() -> Result<Solution> + Send + 'static,
) -> Result<Solution> {
    let (tx, rx) = futures_channel::oneshot::channel();
    std::thread::Builder::new()
        .name("sparse-ot solve".into())
        .spawn(move || {
            // The receiver may be gone (the future was dropped): nobody wants the result then.
            let _ = tx.send(solve());
        })
        .map_err(|e| crate::error::Error::Unavailable {
            what: "a solver thread",
            why: e.to_string(),
        })?;
    rx.await.map_err(|_| crate::error::Error::Unavailable {
        what: "the solve's result",
        why: "the solver thread ended without one (it panicked)".into(),
    })?
}

/// Runs a solve and attaches the GPU work it recorded on this thread ([`crate::GpuWork`]) to its solution;
/// a solve that recorded none (the CPU) keeps `gpu_work = None`.
pub(crate) fn counting(solve: impl FnOnce() -> Result<Solution>) -> Result<Solution> {
    let (out, work) = measured(solve);
    out.map(|s| s.with_gpu_work(work))
}

/// [`counting`] for a batch: every problem's solution carries the batch's totals.
pub(crate) fn counting_batch(
    solve: impl FnOnce() -> Vec<Result<Solution>>,
) -> Vec<Result<Solution>> {
    let (out, work) = measured(solve);
    out.into_iter()
        .map(|r| r.map(|s| s.with_gpu_work(work)))
        .collect()
}

/// Runs `f` and returns the GPU work it recorded on this thread (nothing without the `gpu` feature).
pub(crate) fn measured<R>(f: impl FnOnce() -> R) -> (R, crate::solution::GpuWork) {
    #[cfg(feature = "gpu")]
    {
        crate::gpu::work::measure(f)
    }
    #[cfg(not(feature = "gpu"))]
    {
        (f(), crate::solution::GpuWork::default())
    }
}
