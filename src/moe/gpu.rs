//! The mixture-of-experts router with logits already on the GPU (`shaders/router.wgsl` + the Adam recipe of
//! `sparse::gpu::adam`): gates, the G OT problems, the recipe's steps and the routing all stay on the device, in one
//! submission, and nothing is read back. See [`crate::Router::route_buffers`].

use crate::error::{Error, Result};
use crate::gpu::buffers::{self, Pass};
use crate::gpu::context::{GpuContext, WorkspaceKey};
use crate::gpu::kernels::Kernel;
use crate::solution::Formulation;
use crate::sparse::adam::Adam;
use crate::sparse::gpu::adam::{stop_tolerance_for, AdamWorkspace};
use crate::sparse::gpu::check_batch;
use crate::sparse::settings::SparseOt;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct RouterParams {
    tokens: u32,
    experts: u32,
    k: u32,
    expert_mass: f32,
}

/// The result of [`crate::Router::route_buffers`]: new GPU buffers owned by the caller (`STORAGE |
/// COPY_SRC | COPY_DST`), experts-choose layout.
#[derive(Debug)]
pub struct GpuRouting {
    /// G × E × capacity u32: the tokens expert e of group g takes, in increasing token order, at
    /// `(g·E + e)·capacity + w`; empty slots hold `u32::MAX`.
    pub tokens: wgpu::Buffer,
    /// G × E × capacity f32: the softmax gate of each routed (token, expert) pair, matching `tokens`; 0 for
    /// empty slots.
    pub combine: wgpu::Buffer,
    /// Groups G.
    pub groups: usize,
    /// Tokens per group S.
    pub tokens_per_group: usize,
    /// Experts E.
    pub experts: usize,
    /// Slots per expert: the capacity (at most S).
    pub capacity: usize,
}

/// Routes G × S × E f32 logits held in `logits` with the Adam recipe `adam` on the semi-dual or dual of
/// `cfg` (k = `capacity` tokens per expert).
pub(crate) fn route(
    ctx: &GpuContext,
    cfg: &SparseOt,
    adam: Adam,
    (logits, offset): (&wgpu::Buffer, u64),
    (g, s, e): (usize, usize, usize),
    capacity: usize,
) -> Result<GpuRouting> {
    if g == 0 || s == 0 || e == 0 {
        return Err(Error::Empty { what: "logits" });
    }
    let needed = [g, s, e]
        .iter()
        .try_fold(4u64, |acc, &d| acc.checked_mul(d as u64))
        .unwrap_or(u64::MAX);
    let align = u64::from(ctx.limits().min_storage_buffer_offset_alignment);
    if !offset.is_multiple_of(align) {
        return Err(Error::InvalidParameter {
            name: "logits offset",
            value: offset as f64,
            requirement: "a multiple of the device's min_storage_buffer_offset_alignment",
        });
    }
    let available = logits.size().saturating_sub(offset);
    if available < needed {
        return Err(Error::ShapeMismatch {
            what: "logits buffer bytes after the offset (4 · groups · tokens · experts)",
            expected: needed as usize,
            found: available as usize,
        });
    }
    ctx.check_binding("max_storage_buffer_binding_size (logits, f32)", needed)?;
    check_batch(ctx, g, (s, e, capacity))?;
    let dual = cfg.formulation == Formulation::Dual;
    let key = WorkspaceKey::AdamBatch {
        m: s,
        n: e,
        k: capacity,
        dual,
        batch: g,
    };
    let mut ws = ctx.take_workspace(key, || AdamWorkspace::new(ctx, (s, e, capacity), dual, g))?;
    ws.dual.set_gamma(ctx, cfg.gamma);
    let out = ws
        .configure(ctx, adam, g)
        .and_then(|()| route_in(ctx, &ws, cfg, adam, (logits, offset), (g, s, e)));
    ctx.put_workspace(key, ws);
    out
}

fn route_in(
    ctx: &GpuContext,
    ws: &AdamWorkspace,
    cfg: &SparseOt,
    adam: Adam,
    (logits, offset): (&wgpu::Buffer, u64),
    (g, s, e): (usize, usize, usize),
) -> Result<GpuRouting> {
    let d = &ws.dual;
    let cost_t = d.cost.matrix()?;
    let k = d.k;
    let expert_mass = s as f64 / e as f64;
    let params = buffers::uniform(
        ctx,
        "router params",
        &RouterParams {
            tokens: s as u32,
            experts: e as u32,
            k: k as u32,
            expert_mass: expert_mass as f32,
        },
    );
    // The application's buffer may be larger than one binding allows: bind only the G × S × E logits.
    let logits_range = wgpu::BufferBinding {
        buffer: logits,
        offset,
        size: std::num::NonZeroU64::new(4 * (g * s * e) as u64),
    };
    let group = buffers::bind_ranges(
        ctx,
        Kernel::RouterGates,
        vec![
            (0, params.as_entire_buffer_binding()),
            (1, logits_range),
            (2, cost_t.as_entire_buffer_binding()),
            (3, d.a.as_entire_buffer_binding()),
            (4, d.b.as_entire_buffer_binding()),
        ],
    )?;
    let gates = Pass::per_thread_with(ctx, Kernel::RouterGates, group, s)?.batched(g);
    let tokens = buffers::storage(ctx, "routed tokens", g * e * k);
    let combine = buffers::storage(ctx, "combine weights", g * e * k);
    let gather = Pass::per_thread(
        ctx,
        Kernel::RouterGather,
        &[(0, &params), (2, cost_t), (5, &d.plan_rows), (6, &combine)],
        e,
    )?
    .batched(g);
    // Token mass 1, expert mass S/E: the largest marginal entry sets the f32 stopping floor.
    let tol = stop_tolerance_for(cfg, expert_mass.max(1.0));
    ws.start(ctx, &vec![tol; g], None);
    let mut passes = vec![&gates];
    passes.extend(ws.passes(adam, false));
    passes.push(&gather);
    let mut enc = buffers::encode(ctx, &passes);
    enc.copy_buffer_to_buffer(&d.plan_rows, 0, &tokens, 0, 4 * (g * e * k) as u64);
    buffers::submit(ctx, enc);
    ctx.check_errors()?;
    Ok(GpuRouting {
        tokens,
        combine,
        groups: g,
        tokens_per_group: s,
        experts: e,
        capacity: k,
    })
}
