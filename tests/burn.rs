//! The Burn integration (feature `burn`): the router on Burn tensors against the crate's own router, on
//! Burn's Flex CPU backend (host path) and on a wgpu device shared with this crate (device path, on
//! lavapipe in CI); the mixture-of-experts layer's capacity, errors and gradients.

#[path = "common/gpu.rs"]
mod gpu_common;

use burn::module::Module;
use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use ndarray::Array3;
use sparse_ot::burn::{
    burn_device_for, shared_with_burn, LayerRouting, MoeLayerConfig, RoutePath, TensorRouter,
    TensorRouting,
};
use sparse_ot::gpu::GpuContext;
use sparse_ot::{Error, Router, RouterSolver, Routing};
use std::sync::{Arc, OnceLock};

/// Deterministic logits with a per-expert popularity bias (so that capacity binds) and varied values.
fn logits(g: usize, s: usize, e: usize, seed: u64) -> Array3<f32> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    Array3::from_shape_fn((g, s, e), |(_, _, ex)| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let noise = (state >> 11) as f64 / (1u64 << 53) as f64;
        (2.0 * noise - 1.0 + 0.8 * (ex == 0) as u8 as f64) as f32
    })
}

fn tensor3(values: &Array3<f32>, device: &Device) -> Tensor<3> {
    let (g, s, e) = values.dim();
    Tensor::from_data(
        TensorData::new(values.iter().copied().collect::<Vec<_>>(), [g, s, e]),
        device,
    )
}

fn ints(t: Tensor<3, Int>) -> Vec<i64> {
    t.into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .unwrap()
}

fn floats(t: Tensor<3>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap()
}

/// The tensor routing says, slot by slot, what the crate's own routing says: expert e of group g takes
/// exactly the tokens `reference.dispatch` sends it, in increasing order, with combine weights equal to
/// the reference's within `tol`; empty slots are −1 with weight 0; no expert exceeds `capacity`.
fn assert_same(routing: &TensorRouting, reference: &Routing, tol: f64, what: &str) {
    let (g, s, e) = reference.dispatch.dim();
    let c = routing.capacity;
    let slots = ints(routing.slots.clone());
    let combine = floats(routing.combine.clone());
    assert_eq!(slots.len(), g * e * c, "{what}");
    for grp in 0..g {
        for ex in 0..e {
            let at = (grp * e + ex) * c;
            let taken: Vec<i64> = slots[at..at + c]
                .iter()
                .copied()
                .filter(|&t| t >= 0)
                .collect();
            let expected: Vec<i64> = (0..s)
                .filter(|&t| reference.dispatch[[grp, t, ex]])
                .map(|t| t as i64)
                .collect();
            assert_eq!(taken, expected, "{what}: group {grp}, expert {ex}");
            for w in 0..c {
                let want = match slots[at + w] {
                    t if t >= 0 => reference.combine[[grp, t as usize, ex]],
                    _ => 0.0,
                };
                let got = f64::from(combine[at + w]);
                assert!((got - want).abs() <= tol, "{what}: combine {got} vs {want}");
            }
        }
    }
}

/// One Burn wgpu device shared with this crate for the whole test binary (Burn registers a runtime per
/// call), or None (skipped, said so) without an adapter unless a GPU is required.
fn shared() -> Option<(Device, Arc<GpuContext>)> {
    static SHARED: OnceLock<Option<(Device, Arc<GpuContext>)>> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            // The crate's own probe decides whether a GPU exists (and panics if one is required).
            gpu_common::gpu()?;
            Some(shared_with_burn().expect("Burn opens the adapter the crate found"))
        })
        .clone()
}

/// On Burn's CPU backend the router goes through the host and routes exactly as `Router::route` on the
/// same (f32, widened) logits: both run the same f64 code, so the combine weights agree to f32 rounding of
/// values ≤ 1 (1e-7). Experts choose (the recipe and the accurate solver) and tokens choose.
#[test]
fn host_path_routes_as_the_crate_router() {
    let device = Device::flex();
    let l = logits(3, 24, 4, 5);
    let wide = l.mapv(f64::from);
    let routers = [
        (
            "experts choose, recipe",
            Router::experts_choose(1.0).unwrap(),
        ),
        (
            "experts choose, accurate",
            Router::experts_choose(1.25)
                .unwrap()
                .solver(RouterSolver::ACCURATE)
                .unwrap(),
        ),
        ("tokens choose 2", Router::tokens_choose(2).unwrap()),
    ];
    for (what, router) in routers {
        let reference = router.route(wide.view()).unwrap();
        let routing = TensorRouter::new(router)
            .route(tensor3(&l, &device))
            .unwrap();
        assert_eq!(routing.path, RoutePath::Host, "{what}");
        assert_same(&routing, &reference, 1e-7, what);
        if what.starts_with("experts") {
            assert!(routing.capacity <= reference.capacity, "{what}");
        }
    }
}

/// On a wgpu device shared with the crate, experts choose with the recipe runs on the device from the
/// logits tensor's buffer, and gives the routing of `Router::route_on` on the same GPU: the same tokens
/// per expert, combine weights equal up to f32 rounding of the gates (computed there in f64 and rounded,
/// here in f32: a few units of f32 roundoff on values ≤ 1, so 1e-6). Loads stay within the capacity.
#[test]
fn device_path_routes_as_route_on() {
    let Some((device, ctx)) = shared() else {
        return;
    };
    for (g, s, e, factor) in [(4, 32, 4, 1.0), (2, 70, 3, 1.0), (3, 16, 8, 2.0)] {
        let l = logits(g, s, e, 11);
        let router = Router::experts_choose(factor).unwrap();
        let reference = router
            .route_on(
                l.mapv(f64::from).view(),
                &sparse_ot::Device::Gpu(ctx.clone()),
            )
            .unwrap();
        let tr = TensorRouter::on_gpu(router.clone(), device.clone(), ctx.clone());
        // A logits tensor that is the output of Burn's own kernels (not just an upload), so that its
        // buffer comes from Burn's pool at whatever offset Burn chose.
        let computed = tensor3(&l, &device).mul_scalar(2.0).div_scalar(2.0);
        let routing = tr.route(computed).unwrap();
        assert_eq!(routing.path, RoutePath::Device);
        assert_eq!(routing.slots.dtype(), DType::I32);
        assert_same(&routing, &reference, 1e-6, &format!("{g}x{s}x{e}"));
        let loads = ints(routing.expert_loads().unsqueeze_dim(2));
        assert!(loads.iter().all(|&n| n as usize <= router.capacity(s, e)));
        // The dropped-token count agrees with the reference's dispatch.
        let dropped = (0..g)
            .flat_map(|grp| (0..s).map(move |t| (grp, t)))
            .filter(|&(grp, t)| (0..e).all(|ex| !reference.dispatch[[grp, t, ex]]))
            .count();
        assert_eq!(routing.dropped_tokens(), dropped);
        // Logits on another device (Burn's CPU backend) take the host path, solved on the GPU context.
        let host = tr.route(tensor3(&l, &Device::flex())).unwrap();
        assert_eq!(host.path, RoutePath::Host);
        assert_same(&host, &reference, 1e-7, "host path solved on the context");
    }
}

/// The other direction: a context of this crate handed to Burn; Burn's tensors on it route on the device.
/// A context adopted without its instance and adapter cannot be handed over (a typed error).
#[test]
fn a_crate_context_can_be_handed_to_burn() {
    let Some(shared) = gpu_common::gpu() else {
        return;
    };
    let ctx = Arc::new(GpuContext::new().expect("the adapter the shared context found"));
    let device = burn_device_for(&ctx).unwrap();
    let l = logits(2, 16, 4, 3);
    let router = Router::experts_choose(1.0).unwrap();
    let reference = router
        .route_on(
            l.mapv(f64::from).view(),
            &sparse_ot::Device::Gpu(ctx.clone()),
        )
        .unwrap();
    let routing = TensorRouter::on_gpu(router, device.clone(), ctx.clone())
        .route(tensor3(&l, &device))
        .unwrap();
    assert_eq!(routing.path, RoutePath::Device);
    assert_same(&routing, &reference, 1e-6, "handed to Burn");
    let adopted = GpuContext::from_device(shared.device().clone(), shared.queue().clone(), "app");
    assert!(matches!(
        burn_device_for(&adopted),
        Err(Error::Unavailable { .. })
    ));
}

/// Bad input is a typed error: non-finite logits (host path), a token count that is not a positive
/// multiple of the group size, a token width other than d_model, zero sizes.
#[test]
fn bad_input_is_a_typed_error() {
    let device = Device::flex();
    let mut l = logits(2, 8, 4, 1);
    l[[1, 3, 2]] = f32::NAN;
    let err = TensorRouter::new(Router::experts_choose(1.0).unwrap())
        .route(tensor3(&l, &device))
        .unwrap_err();
    assert!(matches!(err, Error::InBatch { index: 1, .. }), "{err}");
    let config = MoeLayerConfig {
        d_model: 4,
        d_hidden: 8,
        experts: 2,
        group_size: 8,
    };
    let layer = config
        .init(LayerRouting::ot(1.0).unwrap(), &device)
        .unwrap();
    for shape in [[12, 4], [0, 4], [16, 3]] {
        let x = Tensor::<2>::zeros(shape, &device);
        assert!(
            matches!(layer.forward(x), Err(Error::ShapeMismatch { .. })),
            "{shape:?}"
        );
    }
    let zero = MoeLayerConfig {
        experts: 0,
        ..config
    };
    assert!(zero.init(LayerRouting::ot(1.0).unwrap(), &device).is_err());
    assert!(LayerRouting::top_k(1, 0.0).is_err());
    assert!(LayerRouting::top_k(0, 1.0).is_err());
}

/// A small layer for the gradient and capacity checks: 2 groups of 16 tokens, 4 experts.
fn layer_and_input(
    routing: LayerRouting,
    device: &Device,
) -> (sparse_ot::burn::MoeLayer, Tensor<2>, Tensor<2>) {
    device.seed(3);
    let config = MoeLayerConfig {
        d_model: 3,
        d_hidden: 5,
        experts: 4,
        group_size: 16,
    };
    let layer = config.init(routing, device).unwrap();
    let x: Vec<f32> = (0..32 * 3)
        .map(|i| ((i * 37 % 23) as f32 / 23.0 - 0.5) * 2.0)
        .collect();
    let y: Vec<f32> = x.iter().map(|v| (3.0 * v).sin()).collect();
    (
        layer,
        Tensor::from_data(TensorData::new(x, [32, 3]), device),
        Tensor::from_data(TensorData::new(y, [32, 3]), device),
    )
}

/// Every expert takes at most its capacity (⌈S / E⌉ = 4 at factor 1) under the OT router, and the layer's
/// output is zero exactly for the tokens no expert took.
#[test]
fn the_layer_respects_capacity_and_drops_only_unrouted_tokens() {
    let device = Device::flex();
    for routing in [
        LayerRouting::ot(1.0).unwrap(),
        LayerRouting::top_k(1, 1.0).unwrap(),
    ] {
        let (layer, x, _) = layer_and_input(routing, &device);
        let out = layer.forward(x).unwrap();
        assert!(out.routing.capacity <= 4);
        let loads = ints(out.routing.expert_loads().unsqueeze_dim(2));
        assert!(loads.iter().all(|&n| n <= 4), "{loads:?}");
        let per_token: Vec<i64> = out
            .routing
            .experts_per_token()
            .into_data()
            .convert::<i64>()
            .try_into_vec()
            .unwrap();
        let rows: Vec<f32> = out
            .output
            .abs()
            .sum_dim(1)
            .into_data()
            .try_into_vec()
            .unwrap();
        for (t, (&k, &r)) in per_token.iter().zip(&rows).enumerate() {
            assert_eq!(k == 0, r == 0.0, "token {t}: {k} experts, |y| = {r}");
        }
    }
}

/// Gradients reach the router's weights through the combine weights: the gradient of the loss with
/// respect to the router weight of largest gradient matches a central finite difference. The slots are
/// piecewise constant in the weights, so the difference is taken with the largest step of 1e-3, 3e-4, 1e-4
/// at which the routing is the same at both points (the loss is smooth there). f32 throughout: the
/// difference quotient carries a rounding error of about 2 · 6e-8 · loss / (2h), so the agreement asked
/// is 2% of the gradient plus twice that.
#[test]
fn gradients_reach_the_router_weights() {
    let device = Device::flex().autodiff();
    let (layer, x, y) = layer_and_input(LayerRouting::ot(1.0).unwrap(), &device);
    let loss = (layer.forward(x.clone()).unwrap().output - y.clone())
        .powi_scalar(2)
        .mean();
    let loss_value = loss.clone().into_scalar::<f64>();
    let grads = loss.backward();
    let grad: Vec<f32> = layer
        .gate
        .weight
        .val()
        .grad(&grads)
        .unwrap()
        .into_data()
        .try_into_vec()
        .unwrap();
    assert!(grad.iter().any(|g| g.abs() > 1e-6), "a router gradient");
    let at = grad
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
        .unwrap()
        .0;
    let weights: Vec<f32> = layer.gate.weight.val().into_data().try_into_vec().unwrap();
    let dims = layer.gate.weight.val().dims();
    let shifted = |delta: f32| {
        let mut w = weights.clone();
        w[at] += delta;
        let mut layer = layer.clone().no_grad();
        layer.gate.weight = burn::module::Param::from_tensor(Tensor::<2>::from_data(
            TensorData::new(w, dims),
            &device,
        ));
        let out = layer.forward(x.clone()).unwrap();
        let slots = ints(out.routing.slots.clone());
        let value = (out.output - y.clone())
            .powi_scalar(2)
            .mean()
            .into_scalar::<f64>();
        (value, slots)
    };
    let g = f64::from(grad[at]);
    let checked = [1e-3f32, 3e-4, 1e-4].into_iter().find_map(|h| {
        let (up, slots_up) = shifted(h);
        let (down, slots_down) = shifted(-h);
        (slots_up == slots_down).then(|| (h, (up - down) / (2.0 * f64::from(h))))
    });
    let (h, fd) = checked.expect("a step at which the routing does not change");
    let rounding = 2.0 * 6e-8 * loss_value / f64::from(h);
    assert!(
        (fd - g).abs() <= 0.02 * g.abs() + 2.0 * rounding,
        "finite difference {fd} (step {h}) vs gradient {g}"
    );
}

/// The layer trains on the shared wgpu device with the OT router on the device path: forward, backward
/// and an optimiser step run, and the router's weights change.
#[test]
fn the_layer_trains_on_the_shared_device() {
    let Some((device, ctx)) = shared() else {
        return;
    };
    let device = device.autodiff();
    let router = TensorRouter::on_gpu(Router::experts_choose(1.0).unwrap(), device.clone(), ctx);
    let (layer, x, y) = layer_and_input(LayerRouting::Ot(Box::new(router)), &device);
    let before: Vec<f32> = layer.gate.weight.val().into_data().try_into_vec().unwrap();
    let out = layer.forward(x).unwrap();
    assert_eq!(out.routing.path, RoutePath::Device);
    let loss = (out.output - y).powi_scalar(2).mean();
    let grads = burn::optim::GradientsParams::from_grads(loss.backward(), &layer);
    let mut optim = burn::optim::AdamConfig::new().init();
    let layer = optim.step(1e-2, layer, grads);
    let after: Vec<f32> = layer.gate.weight.val().into_data().try_into_vec().unwrap();
    assert!(before.iter().zip(&after).any(|(a, b)| a != b));
    let _ = layer.num_params();
}
