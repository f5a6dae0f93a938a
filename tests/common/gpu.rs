//! Helpers shared by the GPU tests: the adapter (or a reported skip), a private context for counting,
//! application-style buffers in, blocking readbacks out.
#![allow(dead_code)] // each test binary uses some of them

use std::sync::Arc;

use sparse_ot::gpu::GpuContext;
use wgpu::util::DeviceExt;

/// Where a solve on `ctx` (that stayed on the device) reports it ran.
pub fn on_gpu(ctx: &GpuContext) -> sparse_ot::RanOn {
    sparse_ot::RanOn::Gpu {
        adapter: ctx.adapter_name().to_string(),
    }
}

/// The shared GPU context, or None (test skipped) when no adapter exists and a GPU is not required.
pub fn gpu() -> Option<Arc<GpuContext>> {
    match GpuContext::shared() {
        Ok(ctx) => Some(ctx),
        Err(e) => {
            if std::env::var("SPARSE_OT_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("SPARSE_OT_REQUIRE_GPU=1 but no GPU adapter: {e}");
            }
            eprintln!("SKIPPED: no GPU adapter ({e})");
            None
        }
    }
}

/// A private context on `shared`'s device: its counters (dispatches, pipelines, workspaces) see only the
/// calling test's work, whatever runs in parallel.
pub fn private_context(shared: &GpuContext) -> Arc<GpuContext> {
    Arc::new(GpuContext::from_device(
        shared.device().clone(),
        shared.queue().clone(),
        shared.adapter_name(),
    ))
}

/// f32 data as an application would hold it: a `STORAGE | COPY_SRC` buffer.
pub fn storage_f32(ctx: &GpuContext, label: &str, data: &[f32]) -> wgpu::Buffer {
    ctx.device()
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: bytemuck::cast_slice(data),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        })
}

/// The first `len` 4-byte words of `buf`, read back (blocking).
pub fn read_words(ctx: &GpuContext, buf: &wgpu::Buffer, len: usize) -> Vec<u8> {
    let staging = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 4 * len as u64,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut enc = ctx.device().create_command_encoder(&Default::default());
    enc.copy_buffer_to_buffer(buf, 0, &staging, 0, 4 * len as u64);
    ctx.queue().submit([enc.finish()]);
    staging
        .slice(..)
        .map_async(wgpu::MapMode::Read, |r| r.unwrap());
    ctx.device()
        .poll(wgpu::PollType::wait_indefinitely())
        .unwrap();
    let bytes = staging.slice(..).get_mapped_range().unwrap().to_vec();
    staging.unmap();
    bytes
}

/// `len` f32 of `buf`.
pub fn read_f32(ctx: &GpuContext, buf: &wgpu::Buffer, len: usize) -> Vec<f32> {
    bytemuck::cast_slice(&read_words(ctx, buf, len)).to_vec()
}

/// `len` u32 of `buf`.
pub fn read_u32(ctx: &GpuContext, buf: &wgpu::Buffer, len: usize) -> Vec<u32> {
    bytemuck::cast_slice(&read_words(ctx, buf, len)).to_vec()
}
