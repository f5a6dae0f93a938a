//! One wgpu device for Burn and this crate: either Burn opens it and the crate adopts it
//! ([`shared_with_burn`]), or the crate's [`GpuContext`] is handed to Burn ([`burn_device_for`]).
//! Either way both submit to the same queue, so a Burn tensor's buffer can be bound by this crate's
//! kernels and a buffer this crate fills can become a Burn tensor, with no copy through the host.

use std::sync::Arc;

use ::burn::tensor::wgpu::WgpuSetup;
use ::burn::tensor::Device;

use crate::error::{Error, Result};
use crate::gpu::context::GpuContext;

/// Opens Burn's default wgpu device (Burn's adapter choice, `CUBECL_WGPU_DEFAULT_DEVICE` and the
/// other variables Burn reads) and returns it with a [`GpuContext`] on the same device and queue.
///
/// Burn registers a wgpu runtime once per call: call this once and clone the results.
///
/// Errors: [`Error::NoAdapter`] when Burn cannot open a wgpu device.
pub fn shared_with_burn() -> Result<(Device, Arc<GpuContext>)> {
    let (device, setup) =
        Device::wgpu_options()
            .init_with_setup()
            .map_err(|e| Error::NoAdapter {
                why: format!("Burn could not open a wgpu device: {e}"),
            })?;
    Ok((device, Arc::new(context_from_setup(setup))))
}

/// A [`GpuContext`] on the device and queue of a Burn wgpu setup (e.g. one returned by Burn's
/// `Device::wgpu_options().init_with_setup()`).
pub fn context_from_setup(setup: WgpuSetup) -> GpuContext {
    GpuContext::from_parts(setup.instance, setup.adapter, setup.device, setup.queue)
}

/// Hands `ctx`'s device and queue to Burn: the returned Burn device runs Burn's kernels on them.
/// Register each context once and clone the Burn device (Burn does not detect a second
/// registration of the same handles; it would be a second runtime on one queue).
///
/// Errors: [`Error::Unavailable`] when `ctx` was adopted with [`GpuContext::from_device`] (Burn needs
/// the instance and adapter too: adopt with [`GpuContext::from_parts`]) or when Burn refuses the
/// setup (the message says why).
pub fn burn_device_for(ctx: &GpuContext) -> Result<Device> {
    let Some((instance, adapter)) = ctx.origin() else {
        return Err(Error::Unavailable {
            what: "handing this GPU context to Burn",
            why: "the context was adopted without its instance and adapter; use GpuContext::from_parts"
                .into(),
        });
    };
    let setup = WgpuSetup {
        instance: instance.clone(),
        adapter: adapter.clone(),
        device: ctx.device().clone(),
        queue: ctx.queue().clone(),
        backend: adapter.get_info().backend,
    };
    Device::wgpu_options()
        .setup(setup)
        .init()
        .map_err(|e| Error::Unavailable {
            what: "handing this GPU context to Burn",
            why: format!("Burn refused the wgpu setup: {e}"),
        })
}
