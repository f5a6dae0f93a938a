//! The OT router on Burn tensors ([`TensorRouter`]) and what it returns ([`TensorRouting`]).

use std::sync::Arc;

use ::burn::backend::wgpu::CubeTensor;
use ::burn::backend::Cube;
use ::burn::cubecl::wgpu::{AutoCompiler, WgpuServer};
use ::burn::tensor::{DType, Device, Int, Tensor, TensorData};
use ndarray::Array3;

use crate::error::{Error, Result};
use crate::gpu::context::GpuContext;
use crate::moe::{Router, RouterSolver, Routing, RoutingMode};

/// Which way a [`TensorRouter`] went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoutePath {
    /// On the shared wgpu device, from the logits' buffer to the result's, with no host round trip.
    Device,
    /// Logits read back to the host, routed by [`Router::route_on`], the result uploaded.
    Host,
}

/// The routing of G groups as Burn tensors, expert-slot layout.
#[derive(Debug, Clone)]
pub struct TensorRouting {
    /// (G, E, C) Int: the tokens (indices within the group, increasing) expert e of group g takes;
    /// −1 in an empty slot.
    pub slots: Tensor<3, Int>,
    /// (G, E, C): the gate (softmax of the logits over experts) of each slot's (token, expert) pair; 0
    /// in an empty slot. Computed by the router: it carries no gradient (a layer that trains its router
    /// gathers its own gates at `slots`, as [`super::MoeLayer`] does).
    pub combine: Tensor<3>,
    /// C: slots per expert (the capacity when experts choose; the largest load when tokens choose).
    pub capacity: usize,
    /// Tokens per group S.
    pub tokens: usize,
    /// Which path ran.
    pub path: RoutePath,
}

impl TensorRouting {
    /// (G, S) Int: how many experts each token went to (0 for a dropped token).
    pub fn experts_per_token(&self) -> Tensor<2, Int> {
        let [g, e, c] = self.slots.dims();
        let valid = self.slots.clone().greater_equal_elem(0).int();
        let index = self.slots.clone().clamp_min(0).reshape([g, e * c]);
        Tensor::<2, Int>::zeros([g, self.tokens], &self.slots.device()).scatter(
            1,
            index,
            valid.reshape([g, e * c]),
            ::burn::tensor::IndexingUpdateOp::Add,
        )
    }

    /// (G, E) Int: how many tokens each expert took.
    pub fn expert_loads(&self) -> Tensor<2, Int> {
        let [g, e, _] = self.slots.dims();
        self.slots
            .clone()
            .greater_equal_elem(0)
            .int()
            .sum_dim(2)
            .reshape([g, e])
    }

    /// Tokens no expert took, over all groups (reads one number back).
    pub fn dropped_tokens(&self) -> usize {
        let dropped = self.experts_per_token().equal_elem(0).int().sum();
        dropped.into_scalar::<i64>().max(0) as usize
    }
}

/// The OT router on Burn tensors: logits (G, S, E) in, each expert's token slots and their combine
/// weights out, as Burn tensors on the logits' device.
///
/// On a wgpu device shared with this crate ([`super::shared_with_burn`], [`super::burn_device_for`]),
/// the experts-choose Adam recipe binds the logits tensor's own buffer, runs [`Router::route_buffer_at`]
/// and copies the result into buffers Burn allocated: nothing passes through the host. Everything else
/// (another backend such as Flex on the CPU, tokens choose, the accurate solver) goes through the host:
/// the logits are read back, routed by [`Router::route_on`] and the result uploaded.
/// [`TensorRouting::path`] says which path ran.
#[derive(Debug, Clone)]
pub struct TensorRouter {
    router: Router,
    gpu: Option<(Device, Arc<GpuContext>)>,
}

impl TensorRouter {
    /// Routes on the host (and, for the solve, the CPU) whatever device the logits are on.
    pub fn new(router: Router) -> Self {
        Self { router, gpu: None }
    }

    /// Routes logits that live on `device` (a Burn wgpu device sharing `ctx`'s device and queue, from
    /// [`super::shared_with_burn`] or [`super::burn_device_for`]) on that device; logits on any other
    /// device go through the host, and the host path solves on `ctx`.
    pub fn on_gpu(router: Router, device: Device, ctx: Arc<GpuContext>) -> Self {
        Self {
            router,
            gpu: Some((device.without_autodiff(), ctx)),
        }
    }

    /// The router configuration.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Routes logits (G, S, E). The result lives on the logits' device (without autodiff).
    ///
    /// Errors: as [`Router::route_on`] (empty or non-finite logits on the host path; on the device path
    /// the values are not checked, see [`Router::route_buffers`]), and [`Error::Gpu`] when Burn cannot
    /// hand over a buffer.
    pub fn route(&self, logits: Tensor<3>) -> Result<TensorRouting> {
        let logits = logits.detach().without_autodiff();
        match &self.gpu {
            Some((device, ctx)) if self.device_path_applies() && logits.device() == *device => {
                self.route_on_device(logits, device, ctx)
            }
            _ => self.route_on_host(logits),
        }
    }

    fn device_path_applies(&self) -> bool {
        self.router.mode() == RoutingMode::ExpertsChooseTokens
            && matches!(self.router.current_solver(), RouterSolver::Adam { .. })
    }

    fn route_on_device(
        &self,
        logits: Tensor<3>,
        device: &Device,
        ctx: &GpuContext,
    ) -> Result<TensorRouting> {
        let [g, s, e] = logits.dims();
        if g == 0 || s == 0 || e == 0 {
            return Err(Error::Empty { what: "logits" });
        }
        let logits = if logits.dtype() == DType::F32 {
            logits
        } else {
            logits.cast(DType::F32)
        };
        // A strided view (e.g. a transposed tensor) is copied to row-major order by the reshape.
        let logits = logits.reshape([g * s * e]).reshape([g, s, e]);
        let input = float_primitive(logits)?;
        if !input.is_contiguous() {
            return Err(Error::Gpu(
                "the logits tensor is not row-major after a copy".into(),
            ));
        }
        let input_at = aligned(ctx, buffer_of(&input)?, 4 * (g * s * e) as u64);
        let routed =
            self.router
                .route_buffer_at(ctx, &input_at.buffer, input_at.offset, (g, s, e))?;
        let c = routed.capacity;
        let slots = Tensor::<3, Int>::zeros([g, e, c], (device, DType::I32));
        let combine = Tensor::<3>::zeros([g, e, c], (device, DType::F32));
        let slots_at = buffer_of(&int_primitive(slots.clone())?)?;
        let combine_at = buffer_of(&float_primitive(combine.clone())?)?;
        let bytes = 4 * (g * e * c) as u64;
        let mut enc = ctx
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("routing into Burn tensors"),
            });
        // u32::MAX marks an empty slot; read as i32 it is −1.
        enc.copy_buffer_to_buffer(&routed.tokens, 0, &slots_at.buffer, slots_at.offset, bytes);
        enc.copy_buffer_to_buffer(
            &routed.combine,
            0,
            &combine_at.buffer,
            combine_at.offset,
            bytes,
        );
        ctx.queue().submit([enc.finish()]);
        ctx.check_errors()?;
        Ok(TensorRouting {
            slots,
            combine,
            capacity: c,
            tokens: s,
            path: RoutePath::Device,
        })
    }

    fn route_on_host(&self, logits: Tensor<3>) -> Result<TensorRouting> {
        let device = logits.device();
        let logits = host_logits(logits)?;
        let solve_on = match &self.gpu {
            Some((_, ctx)) => crate::Device::Gpu(ctx.clone()),
            None => crate::Device::Cpu,
        };
        let routing = self.router.route_on(logits.view(), &solve_on)?;
        Ok(upload(&routing, &device))
    }
}

/// The logits (G, S, E) read back to the host, widened to f64.
pub(crate) fn host_logits(logits: Tensor<3>) -> Result<Array3<f64>> {
    let [g, s, e] = logits.dims();
    let values = logits
        .detach()
        .into_data()
        .convert::<f64>()
        .try_into_vec::<f64>()
        .map_err(|err| Error::Gpu(format!("reading the logits back: {err:?}")))?;
    let found = values.len();
    Array3::from_shape_vec((g, s, e), values).map_err(|_| Error::ShapeMismatch {
        what: "logits values read back",
        expected: g * s * e,
        found,
    })
}

/// The expert-slot tensors of a host [`Routing`] on `device`.
pub(crate) fn upload(routing: &Routing, device: &Device) -> TensorRouting {
    let (g, s, e) = routing.dispatch.dim();
    // The slot count: the largest number of tokens one expert of one group takes (an exact integer
    // held as f64 by the load metrics).
    let c = (routing.load.tokens_per_expert.max as usize).max(1);
    let mut slots = vec![-1i32; g * e * c];
    let mut combine = vec![0f32; g * e * c];
    for grp in 0..g {
        for ex in 0..e {
            let mut w = 0;
            for tok in 0..s {
                if routing.dispatch[[grp, tok, ex]] {
                    let at = (grp * e + ex) * c + w;
                    slots[at] = tok as i32;
                    combine[at] = routing.combine[[grp, tok, ex]] as f32;
                    w += 1;
                }
            }
        }
    }
    let slots = Tensor::<3, Int>::from_data(TensorData::new(slots, [g, e, c]), device);
    let combine = Tensor::<3>::from_data(TensorData::new(combine, [g, e, c]), device);
    TensorRouting {
        slots,
        combine,
        capacity: c,
        tokens: s,
        path: RoutePath::Host,
    }
}

/// Where a tensor's bytes are: its buffer and the offset of its first element.
struct BufferAt {
    buffer: wgpu::Buffer,
    offset: u64,
}

/// `at` itself when its offset suits a storage binding, else a copy of its `bytes` made on the device
/// into a buffer of this crate (Burn sub-allocates tensors from pooled buffers at offsets that need
/// not be multiples of the device's `min_storage_buffer_offset_alignment`).
fn aligned(ctx: &GpuContext, at: BufferAt, bytes: u64) -> BufferAt {
    let align = u64::from(ctx.limits().min_storage_buffer_offset_alignment);
    if at.offset.is_multiple_of(align) {
        return at;
    }
    let copy = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("logits, aligned"),
        size: bytes,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut enc = ctx
        .device()
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("logits, aligned"),
        });
    enc.copy_buffer_to_buffer(&at.buffer, at.offset, &copy, 0, bytes);
    ctx.queue().submit([enc.finish()]);
    BufferAt {
        buffer: copy,
        offset: 0,
    }
}

/// The buffer of a tensor on a CubeCL wgpu device. Asking for it flushes Burn's pending work on the
/// tensor's stream to the queue, so this crate's later submissions on the same queue see its values
/// (and Burn's later work sees what this crate writes there).
fn buffer_of(tensor: &CubeTensor) -> Result<BufferAt> {
    let resource = tensor
        .client
        .get_resource::<WgpuServer<AutoCompiler>>(tensor.handle.clone())
        .map_err(|e| Error::Gpu(format!("Burn did not hand over the tensor's buffer: {e:?}")))?;
    let r = resource.resource();
    Ok(BufferAt {
        buffer: r.buffer.clone(),
        offset: r.offset,
    })
}

fn float_primitive(tensor: Tensor<3>) -> Result<CubeTensor> {
    tensor
        .try_into_primitive::<Cube>()
        .map_err(|e| Error::Gpu(format!("the tensor is not on a CubeCL device: {e:?}")))
}

fn int_primitive(tensor: Tensor<3, Int>) -> Result<CubeTensor> {
    tensor
        .try_into_primitive::<Cube>()
        .map_err(|e| Error::Gpu(format!("the tensor is not on a CubeCL device: {e:?}")))
}
