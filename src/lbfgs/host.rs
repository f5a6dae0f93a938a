//! Host-vector backend of the L-BFGS driver ([`crate::lbfgs`]). Allocates once per solve.

use crate::lbfgs::{Backend, Eval};

/// A differentiable objective to minimise on the host.
pub(crate) trait Objective {
    /// Number of variables.
    fn dim(&self) -> usize;
    /// Writes ∇f(x) into `grad` and returns f(x).
    fn eval(&mut self, x: &[f64], grad: &mut [f64]) -> f64;
}

/// x, g, d, the trial point and a ring buffer of (s, y) pairs.
pub(crate) struct HostLbfgs<'o, O: Objective> {
    obj: &'o mut O,
    pub x: Vec<f64>,
    pub g: Vec<f64>,
    d: Vec<f64>,
    xt: Vec<f64>,
    gt: Vec<f64>,
    ft: f64,
    s: Vec<Vec<f64>>,
    y: Vec<Vec<f64>>,
    rho: Vec<f64>,
    coef: Vec<f64>,
    /// Number of stored pairs and the ring position of the newest.
    len: usize,
    head: usize,
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn max_abs(a: &[f64]) -> f64 {
    a.iter().fold(0.0, |m, v| m.max(v.abs()))
}

impl<'o, O: Objective> HostLbfgs<'o, O> {
    pub(crate) fn new(obj: &'o mut O, x0: Vec<f64>, memory: usize) -> Self {
        let n = obj.dim();
        debug_assert_eq!(x0.len(), n);
        let memory = memory.max(1);
        Self {
            obj,
            x: x0.clone(),
            g: vec![0.0; n],
            d: vec![0.0; n],
            xt: x0,
            gt: vec![0.0; n],
            ft: f64::NAN,
            s: vec![vec![0.0; n]; memory],
            y: vec![vec![0.0; n]; memory],
            rho: vec![0.0; memory],
            coef: vec![0.0; memory],
            len: 0,
            head: 0,
        }
    }

    /// First step for a steepest-descent direction d = −g: a unit max-norm move.
    fn first_step(&self) -> f64 {
        let gmax = max_abs(&self.g);
        if gmax > 0.0 {
            1.0 / gmax
        } else {
            1.0
        }
    }
}

impl<O: Objective> Backend for HostLbfgs<'_, O> {
    fn evaluate(&mut self, t: f64) -> Eval {
        for ((xt, &x), &d) in self.xt.iter_mut().zip(&self.x).zip(&self.d) {
            *xt = x + t * d;
        }
        self.ft = self.obj.eval(&self.xt, &mut self.gt);
        Eval {
            value: self.ft,
            slope: dot(&self.gt, &self.d),
            grad_norm: max_abs(&self.gt),
        }
    }

    fn accept(&mut self) {
        let m = self.s.len();
        // Test the pair before storing it: the slot may hold the oldest pair still in use.
        let (mut sy, mut yy, mut ss) = (0.0, 0.0, 0.0);
        for i in 0..self.x.len() {
            let (si, yi) = (self.xt[i] - self.x[i], self.gt[i] - self.g[i]);
            sy += si * yi;
            yy += yi * yi;
            ss += si * si;
        }
        if sy > 1e-12 * yy.sqrt() * ss.sqrt() && sy > 0.0 {
            let slot = (self.head + 1) % m;
            let (s, y) = (&mut self.s[slot], &mut self.y[slot]);
            for i in 0..self.x.len() {
                s[i] = self.xt[i] - self.x[i];
                y[i] = self.gt[i] - self.g[i];
            }
            self.rho[slot] = 1.0 / sy;
            self.head = slot;
            self.len = (self.len + 1).min(m);
        }
        std::mem::swap(&mut self.x, &mut self.xt);
        std::mem::swap(&mut self.g, &mut self.gt);
    }

    fn direction(&mut self) -> (f64, f64) {
        if self.len == 0 {
            return self.steepest();
        }
        let m = self.s.len();
        self.d.iter_mut().zip(&self.g).for_each(|(d, g)| *d = -g);
        // First loop: newest to oldest.
        for k in 0..self.len {
            let i = (self.head + m - k) % m;
            let c = self.rho[i] * dot(&self.s[i], &self.d);
            self.coef[i] = c;
            self.d
                .iter_mut()
                .zip(&self.y[i])
                .for_each(|(d, y)| *d -= c * y);
        }
        let h = &self.head;
        let scale = 1.0 / (self.rho[*h] * dot(&self.y[*h], &self.y[*h]));
        self.d.iter_mut().for_each(|d| *d *= scale);
        // Second loop: oldest to newest.
        for k in (0..self.len).rev() {
            let i = (self.head + m - k) % m;
            let beta = self.rho[i] * dot(&self.y[i], &self.d);
            let c = self.coef[i] - beta;
            self.d
                .iter_mut()
                .zip(&self.s[i])
                .for_each(|(d, s)| *d += c * s);
        }
        (dot(&self.g, &self.d), 1.0)
    }

    fn steepest(&mut self) -> (f64, f64) {
        self.len = 0;
        self.d.iter_mut().zip(&self.g).for_each(|(d, g)| *d = -g);
        (dot(&self.g, &self.d), self.first_step())
    }
}
