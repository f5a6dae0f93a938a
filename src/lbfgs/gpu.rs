//! The L-BFGS vectors on GPU buffers (`shaders/lbfgs.wgsl` + an objective's kernels), for a batch of B
//! problems of one dimension run in lockstep ([`crate::lbfgs::run_lockstep`]; a single problem is B = 1).
//!
//! x, g, d, the trial points and the (s, y) memories of all B problems live on the device back to back. A
//! round is one submission of at most six dispatches whatever B is (accept, direction, trial and the
//! objective's passes; kernels no problem needs are left out), each kernel skipping the problems whose
//! control word lacks its flag; then one readback of eight f32 per problem (value, g·d, max|g| of an
//! evaluation; g·d, max|g|, first step of a new direction). A round that computes a direction also
//! evaluates its first trial point, at the step the direction kernel chose ([`Lockstep::speculates`]): an
//! iteration whose first trial is accepted is one round and one blocking readback. The shared
//! [`crate::lbfgs::Driver`] makes every decision, so stopping rules and statuses are those of the CPU path,
//! problem by problem.

use crate::error::{Error, Result};
use crate::gpu::buffers::{self, Pass};
use crate::gpu::context::GpuContext;
use crate::gpu::kernels::Kernel;
use crate::gpu::work;
use crate::lbfgs::{Eval, Lockstep, Reply, Step};

/// Largest memory the direction kernel holds (`MAX_MEM` in `shaders/lbfgs.wgsl`).
pub(crate) const MAX_MEMORY: usize = 32;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct LbfgsParams {
    dim: u32,
    mem: u32,
    _pad: [u32; 2],
}

/// Words of one `LbfgsState` in the shader: head, len, 2 pads, rho[MAX_MEM].
const STATE_WORDS: usize = 4 + MAX_MEMORY;

/// Control flags of `shaders/lbfgs.wgsl` (`OP_*`).
const OP_ACCEPT: u32 = 1;
const OP_DIRECTION: u32 = 2;
const OP_STEEPEST: u32 = 4;
const OP_TRIAL: u32 = 8;
const OP_FIRST: u32 = 16;

/// The L-BFGS vectors of B problems of dimension `dim`.
pub(crate) struct LbfgsBuffers {
    pub problems: usize,
    pub x: wgpu::Buffer,
    pub d: wgpu::Buffer,
    pub xt: wgpu::Buffer,
    pub gt: wgpu::Buffer,
    state: wgpu::Buffer,
    ctrl: wgpu::Buffer,
    res: wgpu::Buffer,
    trial: Pass,
    accept: Pass,
    direction: Pass,
}

impl LbfgsBuffers {
    /// Buffers for `problems` problems of dimension `dim` with `memory` pairs each.
    pub(crate) fn new(
        ctx: &GpuContext,
        dim: usize,
        memory: usize,
        problems: usize,
    ) -> Result<Self> {
        if memory > MAX_MEMORY {
            return Err(Error::DeviceLimit {
                what: "L-BFGS memory on the GPU (pairs)",
                limit: MAX_MEMORY as u64,
                needed: memory as u64,
            });
        }
        ctx.check_binding(
            "max_storage_buffer_binding_size (L-BFGS memory, f32)",
            8 * (memory * dim * problems) as u64,
        )?;
        let params = buffers::uniform(
            ctx,
            "lbfgs params",
            &LbfgsParams {
                dim: dim as u32,
                mem: memory as u32,
                _pad: [0; 2],
            },
        );
        let len = dim * problems;
        let x = buffers::storage(ctx, "x", len);
        let g = buffers::storage(ctx, "g", len);
        let d = buffers::storage(ctx, "d", len);
        let xt = buffers::storage(ctx, "xt", len);
        let gt = buffers::storage(ctx, "gt", len);
        let sy = buffers::storage(ctx, "s/y memory", 2 * memory * len);
        let state = buffers::storage(ctx, "lbfgs state", STATE_WORDS * problems);
        let ctrl = buffers::storage(ctx, "lbfgs control", 2 * problems);
        let res = buffers::storage(ctx, "lbfgs directions", 4 * problems);
        let all = [
            (0, &params),
            (1, &x),
            (2, &g),
            (3, &d),
            (4, &xt),
            (5, &gt),
            (6, &sy),
            (7, &state),
            (8, &ctrl),
            (9, &res),
        ];
        let trial = Pass::per_thread(
            ctx,
            Kernel::Trial,
            &[all[0], all[1], all[3], all[4], all[8], all[9]],
            dim,
        )?
        .batched(problems);
        let accept = Pass::single(
            ctx,
            Kernel::Accept,
            &[
                all[0], all[1], all[2], all[4], all[5], all[6], all[7], all[8],
            ],
        )?
        .batched(problems);
        let direction = Pass::single(
            ctx,
            Kernel::Direction,
            &[all[0], all[2], all[3], all[6], all[7], all[8], all[9]],
        )?
        .batched(problems);
        Ok(Self {
            problems,
            x,
            d,
            xt,
            gt,
            state,
            ctrl,
            res,
            trial,
            accept,
            direction,
        })
    }

    /// Starts a run at x0 (B·dim entries): clears the directions and the memories.
    pub(crate) fn reset(&self, ctx: &GpuContext, x0: &[f32]) {
        buffers::upload(ctx, &self.x, x0);
        let mut enc = ctx.device().create_command_encoder(&Default::default());
        enc.clear_buffer(&self.d, 0, None);
        enc.clear_buffer(&self.state, 0, None);
        buffers::submit(ctx, enc);
    }

    /// Writes this round's control words: the flags and step length of every problem.
    fn set_steps(&self, ctx: &GpuContext, steps: &[Step]) {
        let words: Vec<u32> = steps
            .iter()
            .flat_map(|s| {
                let mut ops = 0;
                if s.accept {
                    ops |= OP_ACCEPT;
                }
                match s.direction {
                    Some(true) => ops |= OP_STEEPEST,
                    Some(false) => ops |= OP_DIRECTION,
                    None => {}
                }
                if s.evaluate.is_some() {
                    ops |= OP_TRIAL;
                } else if s.first_trial {
                    ops |= OP_TRIAL | OP_FIRST;
                }
                [ops, (s.evaluate.unwrap_or(0.0) as f32).to_bits()]
            })
            .collect();
        ctx.queue()
            .write_buffer(&self.ctrl, 0, bytemuck::cast_slice(&words));
    }
}

/// An objective evaluated on the device at the trial points `xt` of a batch, writing its gradients into `gt`.
pub(crate) trait DeviceObjective {
    /// The passes computing, for every active problem p, the objective, its gradient and
    /// [value, gt·d, max|gt|, ·] into `scalars[4p..4p + 4]`.
    fn passes(&self) -> Vec<&Pass>;
    /// The buffer of four f32 per problem written by the passes.
    fn scalars(&self) -> &wgpu::Buffer;
    /// Which problems the next passes evaluate (the others are left untouched).
    fn set_active(&self, ctx: &GpuContext, active: &[bool]);
}

/// L-BFGS backend of a batch: buffers + objective + a readback buffer. Device errors are kept (the first one)
/// and end the run: every later reply is empty, so every driver stops.
pub(crate) struct GpuLbfgs<'a, O: DeviceObjective> {
    pub ctx: &'a GpuContext,
    pub buf: &'a LbfgsBuffers,
    pub obj: &'a O,
    pub staging: &'a wgpu::Buffer,
    pub error: Option<Error>,
}

impl<O: DeviceObjective> GpuLbfgs<'_, O> {
    /// The passes of one round: only the kernels some problem needs, in the order accept, direction, trial
    /// and the objective's passes.
    fn passes(&self, steps: &[Step]) -> Vec<&Pass> {
        let mut passes = Vec::with_capacity(6);
        if steps.iter().any(|s| s.accept) {
            passes.push(&self.buf.accept);
        }
        if steps.iter().any(|s| s.direction.is_some()) {
            passes.push(&self.buf.direction);
        }
        if steps.iter().any(Step::evaluates) {
            passes.push(&self.buf.trial);
            passes.extend(self.obj.passes());
        }
        passes
    }
}

impl<O: DeviceObjective> Lockstep for GpuLbfgs<'_, O> {
    fn round(&mut self, steps: &[Step]) -> Vec<Reply> {
        let nb = steps.len();
        if self.error.is_some() || nb != self.buf.problems {
            self.error.get_or_insert(Error::Gpu(format!(
                "an L-BFGS round of {nb} problems on buffers for {}",
                self.buf.problems
            )));
            return vec![Reply::default(); nb];
        }
        self.buf.set_steps(self.ctx, steps);
        self.obj.set_active(
            self.ctx,
            &steps.iter().map(Step::evaluates).collect::<Vec<_>>(),
        );
        let enc = buffers::encode(self.ctx, &self.passes(steps));
        let words = 4 * nb as u64 * 4;
        // Evaluations in the first 4B words, directions in the next 4B.
        let read = buffers::read_back_many::<f32>(
            self.ctx,
            enc,
            &[(self.obj.scalars(), 0, words), (&self.buf.res, 0, words)],
            self.staging,
        );
        let v = match read {
            Ok(v) => v,
            Err(e) => {
                self.error = Some(e);
                return vec![Reply::default(); nb];
            }
        };
        if steps.iter().any(|s| s.evaluate.is_some()) {
            work::search_round();
        }
        let (evals, dirs) = v.split_at(4 * nb);
        steps
            .iter()
            .enumerate()
            .map(|(p, s)| Reply {
                eval: s.evaluates().then(|| Eval {
                    value: evals[4 * p] as f64,
                    slope: evals[4 * p + 1] as f64,
                    grad_norm: evals[4 * p + 2] as f64,
                }),
                // The first step as the device chose it (and used it for the first trial).
                direction: s
                    .direction
                    .map(|_| (dirs[4 * p] as f64, dirs[4 * p + 3] as f64)),
            })
            .collect()
    }

    fn speculates(&self) -> bool {
        true
    }
}
