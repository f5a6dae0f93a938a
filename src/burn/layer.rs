//! The sparse mixture-of-experts layer ([`MoeLayer`]) and its configuration.

use ::burn::module::Module;
use ::burn::nn::{Linear, LinearConfig, Relu};
use ::burn::tensor::activation::softmax;
use ::burn::tensor::{Device, IndexingUpdateOp, Int, Tensor};

use crate::burn::router::{host_logits, upload, TensorRouter, TensorRouting};
use crate::error::{at_least_one, positive, Error, Result};
use crate::moe::{greedy_top_k, Router};

/// One expert: a two-layer MLP, d_model → d_hidden (ReLU) → d_model.
#[derive(Module, Debug)]
pub struct Expert {
    up: Linear,
    activation: Relu,
    down: Linear,
}

impl Expert {
    fn new(d_model: usize, d_hidden: usize, device: &Device) -> Self {
        Self {
            up: LinearConfig::new(d_model, d_hidden).init(device),
            activation: Relu::new(),
            down: LinearConfig::new(d_hidden, d_model).init(device),
        }
    }

    /// The expert's output for tokens (N, d_model).
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.down
            .forward(self.activation.forward(self.up.forward(x)))
    }
}

/// How a [`MoeLayer`] routes.
#[derive(Debug, Clone)]
pub enum LayerRouting {
    /// The OT router (its configuration and path: see [`TensorRouter`]).
    Ot(Box<TensorRouter>),
    /// Greedy top-k under a capacity of ⌈k · S · `capacity_factor` / E⌉ tokens per expert (on the host;
    /// see [`greedy_top_k`]). The load-balancing loss is computed either way; use it or not.
    TopK {
        /// Experts per token k (1 ≤ k ≤ E).
        experts_per_token: usize,
        /// Capacity factor (> 0).
        capacity_factor: f64,
    },
}

impl LayerRouting {
    /// The OT router with experts choosing tokens under `capacity_factor`, the authors' recipe, on
    /// the host path; use [`LayerRouting::Ot`] with [`TensorRouter::on_gpu`] for the device path.
    pub fn ot(capacity_factor: f64) -> Result<Self> {
        Ok(Self::Ot(Box::new(TensorRouter::new(
            Router::experts_choose(capacity_factor)?,
        ))))
    }

    /// Greedy top-k with `capacity_factor`. Errors: k = 0, a factor that is not finite and > 0 (a k
    /// above E is reported when routing).
    pub fn top_k(experts_per_token: usize, capacity_factor: f64) -> Result<Self> {
        Ok(Self::TopK {
            experts_per_token: at_least_one("experts_per_token", experts_per_token)?,
            capacity_factor: positive("capacity_factor", capacity_factor)?,
        })
    }
}

/// Sizes of a [`MoeLayer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoeLayerConfig {
    /// Token width.
    pub d_model: usize,
    /// Hidden width of each expert.
    pub d_hidden: usize,
    /// Number of experts E.
    pub experts: usize,
    /// Tokens per routing group S (the batch's tokens are split into groups of S, in order).
    pub group_size: usize,
}

impl MoeLayerConfig {
    /// A layer on `device` routed by `routing`, Burn's default initialisation.
    ///
    /// Errors: a size that is 0 ([`Error::InvalidParameter`]).
    pub fn init(&self, routing: LayerRouting, device: &Device) -> Result<MoeLayer> {
        at_least_one("d_model", self.d_model)?;
        at_least_one("d_hidden", self.d_hidden)?;
        at_least_one("experts", self.experts)?;
        at_least_one("group_size", self.group_size)?;
        Ok(MoeLayer {
            gate: LinearConfig::new(self.d_model, self.experts).init(device),
            experts: (0..self.experts)
                .map(|_| Expert::new(self.d_model, self.d_hidden, device))
                .collect(),
            routing,
            group_size: self.group_size,
            d_model: self.d_model,
        })
    }
}

/// What [`MoeLayer::forward`] returns.
#[derive(Debug, Clone)]
pub struct MoeOutput {
    /// (N, d_model): the layer's output (0 for a token no expert took).
    pub output: Tensor<2>,
    /// E · Σ_e f_e P_e, the load-balancing loss (1 at a perfect balance), with gradient through P.
    pub aux_loss: Tensor<1>,
    /// The routing that was used.
    pub routing: TensorRouting,
    /// Host time spent routing, in seconds. On the wgpu device path: flushing Burn's pending work (the
    /// logits), building and submitting the routing, which the GPU then runs asynchronously, ordered
    /// before the layer's later work.
    pub route_seconds: f64,
}

/// A sparse mixture-of-experts layer as a Burn [`Module`]: a linear router, E expert MLPs, and routing
/// by the OT router (each expert takes at most C tokens, chosen by sparsity-constrained OT) or by the
/// greedy top-k baseline (each token picks its best expert; an expert over capacity drops the rest).
///
/// For G groups of S tokens each (the tokens of a batch, in order):
///
/// * logits = x W + b, (G, S, E); gates = softmax(logits) over experts;
/// * the routing chooses, per group and expert, at most C token slots (from logits without gradient);
/// * y_t = Σ over the slots (t, e) of gates[t, e] · expert_e(x_t), and 0 for a token no expert took.
///
/// The gradient reaches the router through the gates of the routed pairs (the combine weights), as in
/// training with any top-k router; the choice of slots itself is piecewise constant. The top-k baseline
/// can add the usual load-balancing loss E · Σ_e f_e P_e (f_e: fraction of tokens whose first choice
/// is e, P_e: mean gate of e), returned in [`MoeOutput::aux_loss`] for the caller to weight and add.
#[derive(Module, Debug)]
pub struct MoeLayer {
    /// The router: d_model → E logits.
    pub gate: Linear,
    /// The experts.
    pub experts: Vec<Expert>,
    #[module(skip)]
    routing: LayerRouting,
    #[module(skip)]
    group_size: usize,
    #[module(skip)]
    d_model: usize,
}

impl MoeLayer {
    /// The router's logits (G, S, E) for tokens `x` (N, d_model), N = G · S.
    ///
    /// Errors: a token width other than d_model, or N not a positive multiple of the group size
    /// ([`Error::ShapeMismatch`]).
    pub fn logits(&self, x: Tensor<2>) -> Result<Tensor<3>> {
        let [n, d] = x.dims();
        if d != self.d_model {
            return Err(Error::ShapeMismatch {
                what: "token width (d_model)",
                expected: self.d_model,
                found: d,
            });
        }
        let s = self.group_size;
        if n == 0 || !n.is_multiple_of(s) {
            return Err(Error::ShapeMismatch {
                what: "tokens (a positive multiple of the group size)",
                expected: s * n.div_ceil(s).max(1),
                found: n,
            });
        }
        Ok(self.gate.forward(x).reshape([n / s, s, self.experts.len()]))
    }

    /// Routes tokens `x` (N, d_model), N = G · S, and applies the experts.
    ///
    /// Errors: as [`MoeLayer::logits`] and the router's (e.g. non-finite logits).
    pub fn forward(&self, x: Tensor<2>) -> Result<MoeOutput> {
        let logits = self.logits(x.clone())?;
        let [g, s, e] = logits.dims();
        let gates = softmax(logits.clone(), 2);
        let started = std::time::Instant::now();
        let routing = self.route(logits)?;
        let route_seconds = started.elapsed().as_secs_f64();
        let c = routing.capacity;
        let device = x.device();
        let valid = routing.slots.clone().greater_equal_elem(0).float();
        let local = routing.slots.clone().clamp_min(0);
        // The combine weights with their gradient: the gates at the slots, 0 in empty slots.
        let weights = gates.clone().swap_dims(1, 2).gather(2, local.clone()) * valid;
        let first = Tensor::<1, Int>::arange(0..g as i64, &device)
            .mul_scalar(s as i64)
            .reshape([g, 1, 1]);
        let global = local + first;
        let [n, d] = x.dims();
        let mut output = Tensor::<2>::zeros([n, d], &device);
        for (ex, expert) in self.experts.iter().enumerate() {
            let index = global
                .clone()
                .slice([0..g, ex..ex + 1, 0..c])
                .reshape([g * c]);
            let weight = weights
                .clone()
                .slice([0..g, ex..ex + 1, 0..c])
                .reshape([g * c, 1]);
            let y = expert.forward(x.clone().select(0, index.clone())) * weight;
            output = output.select_assign(0, index, y, IndexingUpdateOp::Add);
        }
        let aux_loss = balance_loss(gates, e);
        Ok(MoeOutput {
            output,
            aux_loss,
            routing,
            route_seconds,
        })
    }

    fn route(&self, logits: Tensor<3>) -> Result<TensorRouting> {
        match &self.routing {
            LayerRouting::Ot(router) => router.route(logits),
            LayerRouting::TopK {
                experts_per_token: k,
                capacity_factor,
            } => {
                let [_, s, e] = logits.dims();
                let device = logits.device().without_autodiff();
                let logits = host_logits(logits)?;
                let capacity = Router::tokens_choose(*k)?
                    .capacity_factor(*capacity_factor)?
                    .capacity(s, e);
                let routing = greedy_top_k(logits.view(), *k, capacity)?;
                Ok(upload(&routing, &device))
            }
        }
    }
}

/// E · Σ_e f_e P_e over all groups: f_e the fraction of tokens whose largest gate is e's (no
/// gradient), P_e the mean gate of e.
fn balance_loss(gates: Tensor<3>, experts: usize) -> Tensor<1> {
    let [g, s, e] = gates.dims();
    let flat = gates.reshape([g * s, e]);
    let best = flat.clone().detach().max_dim(1);
    let first_choice = flat.clone().detach().greater_equal(best).float();
    let f = first_choice.mean_dim(0);
    let p = flat.mean_dim(0);
    (f * p).sum().mul_scalar(experts as f64)
}
