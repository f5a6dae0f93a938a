//! The GPU context: a device and queue (created here or adopted from the application), the adapter's
//! limits, a pipeline cache keyed by (kernel, workgroup size) and per-shape workspaces reused across solves.

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::error::{Error, Result};
use crate::gpu::kernels::{Family, Kernel};

/// Workgroup size used by every kernel (a power of two, at most 256; see `shaders/common.wgsl`).
pub(crate) const WORKGROUP: u32 = 64;

/// Counters that show whether work was compiled or allocated (for tests and diagnostics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GpuStats {
    /// Compute pipelines compiled so far.
    pub pipelines_compiled: usize,
    /// Workspaces (per-shape buffer sets) allocated so far.
    pub workspaces_created: usize,
}

/// A wgpu device and queue with the caches of this crate's GPU path.
///
/// Create one with [`GpuContext::new`] (best adapter, respecting `WGPU_BACKEND` and the other `WGPU_*`
/// variables wgpu reads) or adopt an application's device with [`GpuContext::from_device`]. Share it with an
/// `Arc`: pipelines and workspaces are cached inside, so repeated solves of one shape neither recompile nor
/// reallocate.
pub struct GpuContext {
    /// The instance and adapter the device came from, when known (created here, or adopted with
    /// [`GpuContext::from_parts`]); another wgpu library that is handed this device may need them.
    origin: Option<(wgpu::Instance, wgpu::Adapter)>,
    device: wgpu::Device,
    queue: wgpu::Queue,
    name: String,
    backend: String,
    /// The adapter is a software rasteriser running on the CPU (e.g. Mesa's lavapipe).
    software: bool,
    limits: wgpu::Limits,
    pipelines: Mutex<HashMap<(Kernel, u32), wgpu::ComputePipeline>>,
    modules: Mutex<HashMap<Family, wgpu::ShaderModule>>,
    workspaces: Mutex<HashMap<WorkspaceKey, Vec<Box<dyn Any + Send>>>>,
    errors: Arc<Mutex<Vec<String>>>,
    compiled: AtomicUsize,
    created: AtomicUsize,
    dispatches: AtomicUsize,
}

impl std::fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuContext")
            .field("adapter", &self.name)
            .field("backend", &self.backend)
            .finish()
    }
}

/// Identifies a reusable set of buffers: kind of solver and every size its buffers depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum WorkspaceKey {
    /// A batch of `batch` Sinkhorn problems of one shape (1 for a single problem); `points` is the
    /// dimension d of point clouds whose cost the kernels compute, None for cost matrices.
    Sinkhorn {
        m: usize,
        n: usize,
        batch: usize,
        points: Option<usize>,
    },
    Sparse {
        m: usize,
        n: usize,
        k: usize,
        dual: bool,
        memory: usize,
        /// Problems solved together (1 for a single solve).
        batch: usize,
        /// The clouds' dimension when the cost is computed from points.
        points: Option<usize>,
    },
    /// A batch of `batch` sparse problems of one shape run by the Adam recipe (`gpu::adam`).
    AdamBatch {
        m: usize,
        n: usize,
        k: usize,
        dual: bool,
        batch: usize,
    },
}

impl GpuContext {
    /// Opens the best adapter (high performance preference, or `WGPU_POWER_PREF`) with its full limits.
    ///
    /// Backends: Vulkan, Metal and DX12 ([`wgpu::Backends::PRIMARY`]) are probed first; the GL backend only
    /// when none of them has an adapter, so the GL/EGL drivers are not loaded where a Vulkan adapter exists.
    /// When `WGPU_BACKEND` is set (e.g. `vulkan`, `gl`, `vulkan,gl`), exactly those backends are probed.
    ///
    /// Mesa's Vulkan device-selection layer (`VK_LAYER_MESA_device_select`, installed with Mesa's Vulkan
    /// drivers) asks the Wayland compositor for the default GPU while the adapters are listed, and without
    /// `XDG_RUNTIME_DIR` it prints `error: XDG_RUNTIME_DIR is invalid or not set in the environment.` on
    /// stderr. That line is the layer's, not an error of this crate; `NODEVICE_SELECT=1` turns the layer off.
    ///
    /// Errors: [`Error::NoAdapter`] when no adapter exists or it cannot open a device.
    pub fn new() -> Result<Self> {
        pollster::block_on(Self::new_async())
    }

    /// Async version of [`GpuContext::new`].
    pub async fn new_async() -> Result<Self> {
        let (instance, adapter) = match wgpu::Backends::from_env() {
            Some(asked) => Self::request_adapter(asked).await?,
            None => match Self::request_adapter(wgpu::Backends::PRIMARY).await {
                Ok(adapter) => adapter,
                Err(primary) => Self::request_adapter(wgpu::Backends::SECONDARY)
                    .await
                    .map_err(|gl| match (primary, gl) {
                        (Error::NoAdapter { why }, Error::NoAdapter { why: gl }) => {
                            Error::NoAdapter {
                                why: format!("{why}; then with GL only: {gl}"),
                            }
                        }
                        (primary, _) => primary,
                    })?,
            },
        };
        let info = adapter.get_info();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("sparse-ot"),
                required_limits: adapter.limits(),
                ..Default::default()
            })
            .await
            .map_err(|e| Error::NoAdapter {
                why: format!("adapter {} could not open a device: {e}", info.name),
            })?;
        let ctx = Self::from_parts(instance, adapter, device, queue);
        let errors = ctx.errors.clone();
        ctx.device
            .on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
                errors
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(e.to_string());
            }));
        Ok(ctx)
    }

    /// The best adapter of `backends` (the other instance options from the `WGPU_*` variables).
    async fn request_adapter(backends: wgpu::Backends) -> Result<(wgpu::Instance, wgpu::Adapter)> {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        desc.backends = backends;
        let instance = wgpu::Instance::new(desc);
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::from_env()
                    .unwrap_or(wgpu::PowerPreference::HighPerformance),
                ..Default::default()
            })
            .await
            .map_err(|e| Error::NoAdapter { why: e.to_string() })?;
        Ok((instance, adapter))
    }

    /// Adopts an application's device and queue (e.g. a renderer's). `name` is reported as
    /// [`crate::Solution::device`]. The device's own limits apply; its uncaptured-error handler is left alone.
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue, name: impl Into<String>) -> Self {
        // The application chose this device; it is used as it is.
        Self::build(device, queue, name.into(), "adopted".into(), false)
    }

    /// Adopts an application's whole wgpu setup: the instance and adapter as well as the device and
    /// queue opened from them. The adapter names the context and says its backend and whether it is a
    /// software rasteriser; [`GpuContext::origin`] hands the instance and adapter on (e.g. to Burn).
    /// The device's own limits apply; its uncaptured-error handler is left alone.
    pub fn from_parts(
        instance: wgpu::Instance,
        adapter: wgpu::Adapter,
        device: wgpu::Device,
        queue: wgpu::Queue,
    ) -> Self {
        let info = adapter.get_info();
        let mut ctx = Self::build(
            device,
            queue,
            info.name.clone(),
            format!("{:?}", info.backend),
            info.device_type == wgpu::DeviceType::Cpu,
        );
        ctx.origin = Some((instance, adapter));
        ctx
    }

    /// The instance and adapter the device was opened from: known for a context created by
    /// [`GpuContext::new`] or adopted with [`GpuContext::from_parts`], `None` after
    /// [`GpuContext::from_device`].
    pub fn origin(&self) -> Option<(&wgpu::Instance, &wgpu::Adapter)> {
        self.origin.as_ref().map(|(i, a)| (i, a))
    }

    fn build(
        device: wgpu::Device,
        queue: wgpu::Queue,
        name: String,
        backend: String,
        software: bool,
    ) -> Self {
        let limits = device.limits();
        Self {
            origin: None,
            device,
            queue,
            name,
            backend,
            software,
            limits,
            pipelines: Mutex::new(HashMap::new()),
            modules: Mutex::new(HashMap::new()),
            workspaces: Mutex::new(HashMap::new()),
            errors: Arc::new(Mutex::new(Vec::new())),
            compiled: AtomicUsize::new(0),
            created: AtomicUsize::new(0),
            dispatches: AtomicUsize::new(0),
        }
    }

    /// A process-wide context opened on first use (used by [`crate::Device::Auto`] and [`crate::Device::Gpu`]
    /// when no context is given). The outcome of the first attempt is kept.
    pub fn shared() -> Result<Arc<GpuContext>> {
        static SHARED: OnceLock<std::result::Result<Arc<GpuContext>, Error>> = OnceLock::new();
        SHARED
            .get_or_init(|| GpuContext::new().map(Arc::new))
            .clone()
    }

    /// Whether the adapter is a software rasteriser that runs on the CPU (e.g. Mesa's lavapipe). Such an
    /// adapter is used when asked for explicitly, but [`crate::Device::Auto`] prefers the CPU path to it.
    pub fn is_software(&self) -> bool {
        self.software
    }

    /// The adapter's name (reported as [`crate::Solution::device`]).
    pub fn adapter_name(&self) -> &str {
        &self.name
    }

    /// The graphics backend (`"Vulkan"`, `"Metal"`, …; `"adopted"` for an adopted device).
    pub fn backend(&self) -> &str {
        &self.backend
    }

    /// The device's limits (the adapter's full limits for a context created here).
    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    /// The wgpu device.
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// The wgpu queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// Compilation and allocation counters.
    pub fn stats(&self) -> GpuStats {
        GpuStats {
            pipelines_compiled: self.compiled.load(Ordering::Relaxed),
            workspaces_created: self.created.load(Ordering::Relaxed),
        }
    }

    /// Compute dispatches recorded so far by this crate on this context (every dispatch counts once, however
    /// many problems of a batch it covers). Lets tests check that batched work does not grow with B.
    pub fn dispatches_recorded(&self) -> usize {
        self.dispatches.load(Ordering::Relaxed)
    }

    pub(crate) fn count_dispatches(&self, count: usize) {
        self.dispatches.fetch_add(count, Ordering::Relaxed);
    }

    /// Refuses a batch of more problems than one grid dimension holds (problems run along z).
    pub(crate) fn check_batch(&self, problems: usize) -> Result<()> {
        let limit = self.limits.max_compute_workgroups_per_dimension as u64;
        if problems as u64 > limit {
            return Err(Error::DeviceLimit {
                what: "max_compute_workgroups_per_dimension (problems of a batch)",
                limit,
                needed: problems as u64,
            });
        }
        Ok(())
    }

    /// The largest storage binding (and buffer) this device accepts, in bytes.
    pub fn max_binding_bytes(&self) -> u64 {
        self.limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size)
    }

    /// Refuses a buffer of `bytes` that would not fit one storage binding.
    pub(crate) fn check_binding(&self, what: &'static str, bytes: u64) -> Result<()> {
        let limit = self.max_binding_bytes();
        if bytes > limit {
            return Err(Error::DeviceLimit {
                what,
                limit,
                needed: bytes,
            });
        }
        Ok(())
    }

    /// Refuses a dispatch of more lanes than the 2-D workgroup grid can hold.
    pub(crate) fn check_lanes(&self, what: &'static str, lanes: usize) -> Result<()> {
        let per_dim = self.limits.max_compute_workgroups_per_dimension as u64;
        let limit = per_dim * per_dim;
        if lanes as u64 > limit {
            return Err(Error::DeviceLimit {
                what,
                limit,
                needed: lanes as u64,
            });
        }
        Ok(())
    }

    /// Workgroup grid for `lanes` workgroups: (x, y) with x ≤ the per-dimension limit.
    pub(crate) fn grid(&self, lanes: u32) -> (u32, u32) {
        let per_dim = self.limits.max_compute_workgroups_per_dimension.max(1);
        let lanes = lanes.max(1);
        (lanes.min(per_dim), lanes.div_ceil(per_dim))
    }

    /// The cached pipeline of `kernel` at the default workgroup size [`WORKGROUP`] (compiled on first use).
    pub(crate) fn pipeline(&self, kernel: Kernel) -> Result<wgpu::ComputePipeline> {
        self.pipeline_sized(kernel, WORKGROUP)
    }

    /// The largest power-of-two workgroup size (at most 1024, the shaders' own bound) this device runs.
    pub(crate) fn max_workgroup(&self) -> u32 {
        let cap = self
            .limits
            .max_compute_invocations_per_workgroup
            .min(self.limits.max_compute_workgroup_size_x)
            .clamp(WORKGROUP, 1024);
        1 << (31 - cap.leading_zeros())
    }

    /// The cached pipeline of `kernel` with workgroup size `wg` (a power of two, at most
    /// [`GpuContext::max_workgroup`]).
    pub(crate) fn pipeline_sized(&self, kernel: Kernel, wg: u32) -> Result<wgpu::ComputePipeline> {
        let key = (kernel, wg);
        // The lock is held while compiling: bind groups are made from a pipeline's own (automatic) layout, so
        // every caller must get the one pipeline of a key, never a second one compiled by a racing thread.
        let mut pipelines = self.pipelines.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = pipelines.get(&key) {
            return Ok(p.clone());
        }
        let family = kernel.family();
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = {
            let mut modules = self.modules.lock().unwrap_or_else(|p| p.into_inner());
            modules
                .entry(family)
                .or_insert_with(|| {
                    let source = family.source();
                    self.device
                        .create_shader_module(wgpu::ShaderModuleDescriptor {
                            label: Some(family.file()),
                            source: wgpu::ShaderSource::Wgsl(source.into()),
                        })
                })
                .clone()
        };
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(kernel.entry()),
                layout: None,
                module: &module,
                entry_point: Some(kernel.entry()),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &[("WG", f64::from(wg))],
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu(format!(
                "compiling {}::{}: {e}",
                family.file(),
                kernel.entry()
            )));
        }
        self.compiled.fetch_add(1, Ordering::Relaxed);
        pipelines.insert(key, pipeline.clone());
        Ok(pipeline)
    }

    /// Takes a cached workspace of this key, or builds one with `make`.
    pub(crate) fn take_workspace<W: Any + Send>(
        &self,
        key: WorkspaceKey,
        make: impl FnOnce() -> Result<W>,
    ) -> Result<W> {
        let cached = self
            .workspaces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&key)
            .and_then(|v| v.pop());
        if let Some(w) = cached.and_then(|b| b.downcast::<W>().ok()) {
            return Ok(*w);
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let w = make()?;
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu(format!(
                "allocating a workspace for {key:?}: {e}"
            )));
        }
        self.created.fetch_add(1, Ordering::Relaxed);
        Ok(w)
    }

    /// Returns a workspace to the cache for the next solve of its shape.
    pub(crate) fn put_workspace<W: Any + Send>(&self, key: WorkspaceKey, w: W) {
        self.workspaces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_default()
            .push(Box::new(w));
    }

    /// Fails with the first error the device reported asynchronously since the last check (own devices only).
    pub(crate) fn check_errors(&self) -> Result<()> {
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        if errors.is_empty() {
            return Ok(());
        }
        let msg = errors.join("; ");
        errors.clear();
        Err(Error::Gpu(msg))
    }
}
