//! Buffer helpers: allocation, upload, bind groups, dispatch and the one blocking readback path.

use std::sync::mpsc;

use wgpu::util::DeviceExt;

use crate::error::{Error, Result};
use crate::gpu::context::{GpuContext, WORKGROUP};
use crate::gpu::kernels::Kernel;
use crate::gpu::work;

/// Usage of every working buffer: bound as storage, copied in and out.
pub(crate) const STORAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

/// Bytes of `len` 4-byte words (at least one word: wgpu has no empty bindings).
pub(crate) fn words(len: usize) -> u64 {
    4 * len.max(1) as u64
}

pub(crate) fn storage(ctx: &GpuContext, label: &str, len_words: usize) -> wgpu::Buffer {
    ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: words(len_words),
        usage: STORAGE,
        mapped_at_creation: false,
    })
}

pub(crate) fn uniform<T: bytemuck::Pod>(ctx: &GpuContext, label: &str, value: &T) -> wgpu::Buffer {
    ctx.device()
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: bytemuck::bytes_of(value),
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        })
}

pub(crate) fn staging(ctx: &GpuContext, label: &str, bytes: u64) -> wgpu::Buffer {
    ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: bytes.max(4),
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}

/// Writes f32 data at the start of `buf` (staged until the next submission).
pub(crate) fn upload(ctx: &GpuContext, buf: &wgpu::Buffer, data: &[f32]) {
    if !data.is_empty() {
        ctx.queue().write_buffer(buf, 0, bytemuck::cast_slice(data));
    }
}

/// Writes u32 data at the start of `buf` (staged until the next submission).
pub(crate) fn upload_words(ctx: &GpuContext, buf: &wgpu::Buffer, data: &[u32]) {
    if !data.is_empty() {
        ctx.queue().write_buffer(buf, 0, bytemuck::cast_slice(data));
    }
}

/// A bind group for `pipeline`'s auto layout from (binding, buffer) pairs.
fn bind_to(
    ctx: &GpuContext,
    pipeline: &wgpu::ComputePipeline,
    kernel: Kernel,
    entries: &[(u32, &wgpu::Buffer)],
) -> wgpu::BindGroup {
    let layout = pipeline.get_bind_group_layout(0);
    let entries: Vec<wgpu::BindGroupEntry> = entries
        .iter()
        .map(|&(binding, buf)| wgpu::BindGroupEntry {
            binding,
            resource: buf.as_entire_binding(),
        })
        .collect();
    ctx.device().create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some(kernel.entry()),
        layout: &layout,
        entries: &entries,
    })
}

/// A bind group for `kernel`'s auto layout from (binding, buffer range) pairs: for buffers an application
/// hands in, which may be larger than one binding allows.
pub(crate) fn bind_ranges(
    ctx: &GpuContext,
    kernel: Kernel,
    entries: Vec<(u32, wgpu::BufferBinding<'_>)>,
) -> Result<wgpu::BindGroup> {
    let pipeline = ctx.pipeline(kernel)?;
    let layout = pipeline.get_bind_group_layout(0);
    let entries: Vec<wgpu::BindGroupEntry> = entries
        .into_iter()
        .map(|(binding, range)| wgpu::BindGroupEntry {
            binding,
            resource: wgpu::BindingResource::Buffer(range),
        })
        .collect();
    Ok(ctx.device().create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some(kernel.entry()),
        layout: &layout,
        entries: &entries,
    }))
}

/// A prepared dispatch: pipeline, bind group and workgroup grid (x, y lanes; z the batch's problems).
pub(crate) struct Pass {
    pipeline: wgpu::ComputePipeline,
    group: wgpu::BindGroup,
    grid: (u32, u32),
    batch: u32,
    /// Bytes of cost one dispatch reads, for one problem ([`Pass::reads_cost`]).
    cost_bytes: u64,
}

impl Pass {
    /// `lanes` workgroups (one per lane), laid out on a 2-D grid.
    pub(crate) fn per_workgroup(
        ctx: &GpuContext,
        kernel: Kernel,
        entries: &[(u32, &wgpu::Buffer)],
        lanes: usize,
    ) -> Result<Self> {
        Self::per_workgroup_sized(ctx, kernel, WORKGROUP, entries, lanes)
    }

    /// `lanes` workgroups of `wg` threads ([`GpuContext::pipeline_sized`]).
    pub(crate) fn per_workgroup_sized(
        ctx: &GpuContext,
        kernel: Kernel,
        wg: u32,
        entries: &[(u32, &wgpu::Buffer)],
        lanes: usize,
    ) -> Result<Self> {
        let pipeline = ctx.pipeline_sized(kernel, wg)?;
        Ok(Self {
            group: bind_to(ctx, &pipeline, kernel, entries),
            pipeline,
            grid: ctx.grid(lanes as u32),
            batch: 1,
            cost_bytes: 0,
        })
    }

    /// One thread per item, with a bind group made by the caller ([`bind_ranges`]).
    pub(crate) fn per_thread_with(
        ctx: &GpuContext,
        kernel: Kernel,
        group: wgpu::BindGroup,
        items: usize,
    ) -> Result<Self> {
        Ok(Self {
            pipeline: ctx.pipeline(kernel)?,
            group,
            grid: ctx.grid(items.div_ceil(WORKGROUP as usize) as u32),
            batch: 1,
            cost_bytes: 0,
        })
    }

    /// The same dispatch repeated for `problems` problems of a batch along `workgroup_id.z` (one dispatch).
    pub(crate) fn batched(mut self, problems: usize) -> Self {
        self.batch = problems.max(1) as u32;
        self
    }

    /// Declares that one dispatch reads `bytes` of cost per problem (counted in [`crate::GpuWork`], times the
    /// batch's problems).
    pub(crate) fn reads_cost(mut self, bytes: u64) -> Self {
        self.cost_bytes = bytes;
        self
    }

    /// Bytes of cost one dispatch of this pass reads (all problems of its batch).
    pub(crate) fn cost_bytes(&self) -> u64 {
        self.cost_bytes * u64::from(self.batch)
    }

    /// One thread per item: ceil(items / WG) workgroups.
    pub(crate) fn per_thread(
        ctx: &GpuContext,
        kernel: Kernel,
        entries: &[(u32, &wgpu::Buffer)],
        items: usize,
    ) -> Result<Self> {
        Self::per_workgroup(ctx, kernel, entries, items.div_ceil(WORKGROUP as usize))
    }

    /// A single workgroup.
    pub(crate) fn single(
        ctx: &GpuContext,
        kernel: Kernel,
        entries: &[(u32, &wgpu::Buffer)],
    ) -> Result<Self> {
        Self::per_workgroup(ctx, kernel, entries, 1)
    }

    pub(crate) fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.group, &[]);
        pass.dispatch_workgroups(self.grid.0, self.grid.1, self.batch);
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct TransposeParams {
    len: u32,
    rows: u32,
    cols: u32,
    _pad: u32,
}

/// Side of the square tiles of the transpose kernel (`TILE` in `shaders/reduce.wgsl`); a workgroup is one tile.
const TILE: usize = 16;

/// A pass writing into `dst` the transposes of the `batch` row-major rows × cols matrices in `src` (the tiled
/// device kernel of `shaders/reduce.wgsl`; it reads each matrix once).
pub(crate) fn transpose(
    ctx: &GpuContext,
    src: &wgpu::Buffer,
    dst: &wgpu::Buffer,
    (rows, cols): (usize, usize),
    batch: usize,
) -> Result<Pass> {
    let params = uniform(
        ctx,
        "transpose params",
        &TransposeParams {
            len: (rows * cols) as u32,
            rows: rows as u32,
            cols: cols as u32,
            _pad: 0,
        },
    );
    let tiles = rows.div_ceil(TILE) * cols.div_ceil(TILE);
    let pass = Pass::per_workgroup_sized(
        ctx,
        Kernel::Transpose,
        (TILE * TILE) as u32,
        &[(0, &params), (1, src), (2, dst)],
        tiles,
    )?;
    Ok(pass.batched(batch).reads_cost(4 * (rows * cols) as u64))
}

/// Records `passes` in order into one compute pass of a new encoder (wgpu orders storage accesses between
/// dispatches).
pub(crate) fn encode(ctx: &GpuContext, passes: &[&Pass]) -> wgpu::CommandEncoder {
    let mut enc = ctx
        .device()
        .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
    {
        let mut cp = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: None,
            timestamp_writes: None,
        });
        for p in passes {
            p.record(&mut cp);
        }
    }
    ctx.count_dispatches(passes.len());
    work::dispatched(passes.len(), passes.iter().map(|p| p.cost_bytes()).sum());
    enc
}

/// Copies `bytes` of `src` (from `offset`) into `staging`, submits `enc`, waits and returns the words.
pub(crate) fn read_back<T: bytemuck::Pod>(
    ctx: &GpuContext,
    enc: wgpu::CommandEncoder,
    src: &wgpu::Buffer,
    offset: u64,
    bytes: u64,
    staging: &wgpu::Buffer,
) -> Result<Vec<T>> {
    read_back_many(ctx, enc, &[(src, offset, bytes)], staging)
}

/// Copies each (buffer, offset, bytes) segment into `staging` one after the other, submits `enc`, waits
/// once and returns the words of all segments concatenated.
pub(crate) fn read_back_many<T: bytemuck::Pod>(
    ctx: &GpuContext,
    mut enc: wgpu::CommandEncoder,
    segments: &[(&wgpu::Buffer, u64, u64)],
    staging: &wgpu::Buffer,
) -> Result<Vec<T>> {
    let mut bytes = 0;
    for &(src, offset, len) in segments {
        enc.copy_buffer_to_buffer(src, offset, staging, bytes, len);
        bytes += len;
    }
    ctx.queue().submit([enc.finish()]);
    let slice = staging.slice(0..bytes);
    let (tx, rx) = mpsc::channel();
    slice.map_async(wgpu::MapMode::Read, move |r| {
        let _ = tx.send(r);
    });
    ctx.device()
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| Error::Gpu(format!("waiting for the device: {e}")))?;
    work::read_back();
    rx.recv()
        .map_err(|_| Error::Gpu("readback callback dropped".into()))?
        .map_err(|e| Error::Gpu(format!("mapping a readback buffer: {e}")))?;
    // Copy out and unmap before anything can fail: a staging buffer left mapped would break every later
    // readback through it (workspaces are cached per shape).
    let out = slice
        .get_mapped_range()
        .map(|view| bytemuck::cast_slice::<u8, T>(&view).to_vec())
        .map_err(|e| Error::Gpu(format!("{e:?}")));
    staging.unmap();
    ctx.check_errors()?;
    out
}

/// Submits `enc` without reading anything back.
pub(crate) fn submit(ctx: &GpuContext, enc: wgpu::CommandEncoder) {
    ctx.queue().submit([enc.finish()]);
}
