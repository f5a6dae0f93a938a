//! The L-BFGS [`Backend`] on GPU buffers (`shaders/lbfgs.wgsl` + an objective's kernels).
//!
//! x, g, d, the trial point and the (s, y) memory live on the device; per evaluation the host reads back
//! three f32 (value, g·d, max|g|), per direction two (g·d, max|g|), and nothing per accepted step. The shared
//! [`crate::lbfgs::Driver`] makes every decision, so stopping rules and statuses are those of the CPU path.

use crate::error::{Error, Result};
use crate::gpu::buffers::{self, Pass};
use crate::gpu::context::GpuContext;
use crate::gpu::kernels::Kernel;
use crate::lbfgs::{Backend, Eval};

/// Largest memory the direction kernel holds (`MAX_MEM` in `shaders/lbfgs.wgsl`).
pub(crate) const MAX_MEMORY: usize = 32;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Params {
    dim: u32,
    mem: u32,
    t: f32,
    _pad: u32,
}

/// Bytes of `LbfgsState` in the shader: head, len, 2 pads, out[4], rho[MAX_MEM].
const STATE_WORDS: usize = 4 + 4 + MAX_MEMORY;

/// The L-BFGS vectors of one problem shape.
pub(crate) struct LbfgsBuffers {
    pub dim: usize,
    pub memory: usize,
    pub params: wgpu::Buffer,
    pub x: wgpu::Buffer,
    pub d: wgpu::Buffer,
    pub xt: wgpu::Buffer,
    pub gt: wgpu::Buffer,
    pub state: wgpu::Buffer,
    trial: Pass,
    accept: Pass,
    direction: Pass,
    steepest: Pass,
}

impl LbfgsBuffers {
    pub(crate) fn new(ctx: &GpuContext, dim: usize, memory: usize) -> Result<Self> {
        if memory > MAX_MEMORY {
            return Err(Error::DeviceLimit {
                what: "L-BFGS memory on the GPU (pairs)",
                limit: MAX_MEMORY as u64,
                needed: memory as u64,
            });
        }
        ctx.check_binding(
            "max_storage_buffer_binding_size (L-BFGS memory, f32)",
            8 * (memory * dim) as u64,
        )?;
        let params = buffers::uniform(
            ctx,
            "lbfgs params",
            &Params {
                dim: dim as u32,
                mem: memory as u32,
                t: 0.0,
                _pad: 0,
            },
        );
        let x = buffers::storage(ctx, "x", dim);
        let g = buffers::storage(ctx, "g", dim);
        let d = buffers::storage(ctx, "d", dim);
        let xt = buffers::storage(ctx, "xt", dim);
        let gt = buffers::storage(ctx, "gt", dim);
        let sy = buffers::storage(ctx, "s/y memory", 2 * memory * dim);
        let state = buffers::storage(ctx, "lbfgs state", STATE_WORDS);
        let all = [
            (0, &params),
            (1, &x),
            (2, &g),
            (3, &d),
            (4, &xt),
            (5, &gt),
            (6, &sy),
            (7, &state),
        ];
        let trial = Pass::per_thread(
            ctx,
            Kernel::Trial,
            &[(0, &params), (1, &x), (3, &d), (4, &xt)],
            dim,
        )?;
        let accept = Pass::single(
            ctx,
            Kernel::Accept,
            &[all[0], all[1], all[2], all[4], all[5], all[6], all[7]],
        )?;
        let direction = Pass::single(
            ctx,
            Kernel::Direction,
            &[all[0], all[2], all[3], all[6], all[7]],
        )?;
        let steepest = Pass::single(ctx, Kernel::Steepest, &[all[0], all[2], all[3], all[7]])?;
        Ok(Self {
            dim,
            memory,
            params,
            x,
            d,
            xt,
            gt,
            state,
            trial,
            accept,
            direction,
            steepest,
        })
    }

    /// Starts a run at x0: clears d and the memory.
    pub(crate) fn reset(&self, ctx: &GpuContext, x0: &[f32]) {
        buffers::upload(ctx, &self.x, x0);
        let mut enc = ctx.device().create_command_encoder(&Default::default());
        enc.clear_buffer(&self.d, 0, None);
        enc.clear_buffer(&self.state, 0, None);
        buffers::submit(ctx, enc);
    }

    fn set_t(&self, ctx: &GpuContext, t: f64) {
        let p = Params {
            dim: self.dim as u32,
            mem: self.memory as u32,
            t: t as f32,
            _pad: 0,
        };
        ctx.queue()
            .write_buffer(&self.params, 0, bytemuck::bytes_of(&p));
    }
}

/// An objective evaluated on the device at the trial point `xt`, writing its gradient into `gt`.
pub(crate) trait DeviceObjective {
    /// The passes computing the objective, its gradient and [value, gt·d, max|gt|] into `scalars`.
    fn passes(&self) -> Vec<&Pass>;
    /// The buffer holding [value, slope, max|g|] after the passes.
    fn scalars(&self) -> &wgpu::Buffer;
}

/// L-BFGS backend: buffers + objective + a small readback buffer. Device errors are kept and end the run.
pub(crate) struct GpuLbfgs<'a, O: DeviceObjective> {
    pub ctx: &'a GpuContext,
    pub buf: &'a LbfgsBuffers,
    pub obj: &'a O,
    pub staging: &'a wgpu::Buffer,
    pub error: Option<Error>,
}

impl<O: DeviceObjective> GpuLbfgs<'_, O> {
    fn read3(&mut self, enc: wgpu::CommandEncoder, src: &wgpu::Buffer, offset: u64) -> [f64; 3] {
        match buffers::read_back::<f32>(self.ctx, enc, src, offset, 12, self.staging) {
            Ok(v) => [v[0] as f64, v[1] as f64, v[2] as f64],
            Err(e) => {
                self.error.get_or_insert(e);
                [f64::NAN; 3]
            }
        }
    }

    fn direction_with(&mut self, kernel: &Pass) -> (f64, f64) {
        let enc = buffers::encode(self.ctx, &[kernel]);
        // out[0..3] of LbfgsState sits after head, len and two pads.
        let [gd, gmax, steepest] = self.read3(enc, &self.buf.state, 16);
        let t0 = if steepest != 0.0 && gmax > 0.0 {
            1.0 / gmax
        } else {
            1.0
        };
        (gd, t0)
    }
}

impl<O: DeviceObjective> Backend for GpuLbfgs<'_, O> {
    fn evaluate(&mut self, t: f64) -> Eval {
        self.buf.set_t(self.ctx, t);
        let mut passes = vec![&self.buf.trial];
        passes.extend(self.obj.passes());
        let enc = buffers::encode(self.ctx, &passes);
        let [value, slope, grad_norm] = self.read3(enc, self.obj.scalars(), 0);
        Eval {
            value,
            slope,
            grad_norm,
        }
    }

    fn accept(&mut self) {
        buffers::submit(self.ctx, buffers::encode(self.ctx, &[&self.buf.accept]));
    }

    fn direction(&mut self) -> (f64, f64) {
        self.direction_with(&self.buf.direction)
    }

    fn steepest(&mut self) -> (f64, f64) {
        self.direction_with(&self.buf.steepest)
    }
}
