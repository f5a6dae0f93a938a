//! Burn integration (feature `burn`): the OT router on Burn tensors, and a sparse mixture-of-experts
//! layer as a Burn module.
//!
//! * [`shared_with_burn`] opens Burn's wgpu device and adopts it as a [`crate::gpu::GpuContext`];
//!   [`burn_device_for`] hands a context of this crate to Burn instead. Either way Burn and this crate
//!   share one device and queue.
//! * [`TensorRouter`] routes logits (G, S, E) given as a Burn tensor and returns each expert's token
//!   slots and combine weights as Burn tensors ([`TensorRouting`]). On the shared wgpu device the
//!   experts-choose recipe runs from the logits' buffer to the result's with no host round trip;
//!   on other devices (e.g. Burn's Flex CPU backend) and for the other modes it goes through the host
//!   ([`TensorRouting::path`] says which).
//! * [`MoeLayer`] is a Burn [`Module`](::burn::module::Module): a linear router, E expert MLPs, and
//!   routing by the OT router or by greedy top-k ([`LayerRouting`]). Gradients reach the router's
//!   weights through the gates of the routed pairs.
//!
//! Burn's `fusion` feature is not supported: with it, Burn's tensors are fusion handles rather than
//! buffers, and this module does not compile.
//!
//! A model with the layer, trained one step on Burn's CPU backend:
//!
//! ```
//! use burn::optim::{AdamConfig, GradientsParams};
//! use burn::tensor::{Device, Distribution, Tensor};
//! use sparse_ot::burn::{LayerRouting, MoeLayerConfig};
//!
//! let device = Device::flex().autodiff();
//! let config = MoeLayerConfig { d_model: 8, d_hidden: 16, experts: 4, group_size: 32 };
//! let mut layer = config.init(LayerRouting::ot(1.0)?, &device)?;
//! let mut optim = AdamConfig::new().init();
//! let x = Tensor::<2>::random([64, 8], Distribution::Normal(0.0, 1.0), &device);
//! let out = layer.forward(x.clone())?;
//! let loss = (out.output - x).powi_scalar(2).mean();
//! let grads = GradientsParams::from_grads(loss.backward(), &layer);
//! layer = optim.step(1e-3, layer, grads);
//! # let _ = layer;
//! # Ok::<(), sparse_ot::Error>(())
//! ```

mod device;
mod layer;
mod router;

pub use device::{burn_device_for, context_from_setup, shared_with_burn};
pub use layer::{Expert, LayerRouting, MoeLayer, MoeLayerConfig, MoeOutput};
pub use router::{RoutePath, TensorRouter, TensorRouting};
