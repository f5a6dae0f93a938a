//! GPU buffer helpers shared by the GPU tests: application-style buffers in, blocking readbacks out.
#![allow(dead_code)] // each test binary uses some of them

use sparse_ot::gpu::GpuContext;
use wgpu::util::DeviceExt;

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
