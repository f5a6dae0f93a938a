//! Vectorisable exponential sums for log-domain Sinkhorn: Σ_k exp((y_k − c_k)·inv + w) over one lane.
//!
//! The exponential is a range reduction (x = n ln 2 + r, |r| ≤ ln 2 / 2) followed by a Taylor polynomial and a
//! scaling by 2ⁿ built from exponent bits, written without branches so that LLVM turns a lane loop into SIMD
//! code. Accuracy: about 1 ulp in f64 (degree 13) and about 2 ulp in f32 (degree 7), against the 0.5 ulp of
//! `f64::exp`; arguments below the smallest normal result give exactly 0 (no subnormals).
//!
//! Sums run in 16 interleaved accumulators, in the working precision over blocks of 16 terms each and in f64
//! across blocks, reduced in a fixed order, so results do not depend on the thread count. On x86-64 the sums
//! are also written with explicit AVX2 + FMA and AVX-512F vectors (`x86`, bit-identical to the generic code
//! with FMA, which LLVM leaves scalar), the widest one the CPU has chosen at run time ([`Kernels::detect`]);
//! elsewhere the portable build is used.

use std::borrow::Cow;
use std::ops::{Add, Mul, Sub};

use rayon::prelude::*;

/// A floating-point type the Sinkhorn inner loops can run in (f64 or f32).
#[cfg(target_arch = "x86_64")]
mod x86;
#[cfg(target_arch = "x86_64")]
use x86::X86 as Arch;

/// The per-architecture kernels an element type has (none outside x86-64).
#[cfg(not(target_arch = "x86_64"))]
pub(crate) trait Arch {}
#[cfg(not(target_arch = "x86_64"))]
impl Arch for f32 {}
#[cfg(not(target_arch = "x86_64"))]
impl Arch for f64 {}

pub(crate) trait Real:
    Arch
    + Copy
    + Send
    + Sync
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + 'static
{
    /// 0.
    const ZERO: Self;
    /// −∞, the identity of `max`.
    const NEG_INFINITY: Self;
    /// Sums of exponentials in [SAFE_LO, SAFE_HI] are trusted: no term overflowed and the terms flushed to
    /// zero are negligible against the sum. Outside, the lane is recomputed with a max shift.
    const SAFE_LO: f64;
    /// See [`Real::SAFE_LO`].
    const SAFE_HI: f64;
    /// Every exponential flushed to 0 by [`Real::exp_poly`] had a true value below this.
    const FLUSH: f64;
    /// Rounds from f64.
    fn from_f64(x: f64) -> Self;
    /// Widens (exactly) to f64.
    fn to_f64(self) -> f64;
    /// a·b + c, fused when `FMA` (only requested where the target has FMA).
    fn madd<const FMA: bool>(a: Self, b: Self, c: Self) -> Self;
    /// |self|.
    fn abs(self) -> Self;
    /// √self.
    fn sqrt(self) -> Self;
    /// self^e.
    fn powf(self, e: f64) -> Self;
    /// The polynomial exponential described in the module header.
    fn exp_poly<const FMA: bool>(self) -> Self;
    /// The cost in this precision and the offset subtracted from it (f64 borrows it unshifted; f32 copies it
    /// shifted to start at 0, which keeps its rounding errors small).
    fn working_cost(c: &[f64]) -> (Cow<'_, [Self]>, f64);
}

/// The constants of the f64 exponential ([`Real::exp_poly`]; the vector kernels use the same).
mod exp_f64 {
    pub(super) const LOG2E: f64 = std::f64::consts::LOG2_E;
    // ln 2 split so that n · LN2_HI is exact for |n| < 2^11 (fdlibm).
    pub(super) const LN2_HI: f64 = 0.693_147_180_369_123_8;
    pub(super) const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
    // 1.5 · 2^52: adding it rounds to an integer held in the low mantissa bits.
    pub(super) const MAGIC: f64 = 6_755_399_441_055_744.0;
    pub(super) const LO: f64 = -708.0;
    pub(super) const HI: f64 = 709.0;
    // Taylor coefficients 1/k!, k = 13 down to 0; |r| ≤ 0.347 so the remainder is below 5e-18.
    pub(super) const C: [f64; 14] = [
        1.0 / 6_227_020_800.0,
        1.0 / 479_001_600.0,
        1.0 / 39_916_800.0,
        1.0 / 3_628_800.0,
        1.0 / 362_880.0,
        1.0 / 40_320.0,
        1.0 / 5_040.0,
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ];
}

/// The constants of the f32 exponential.
mod exp_f32 {
    pub(super) const LOG2E: f32 = std::f32::consts::LOG2_E;
    // Cephes split of ln 2 for f32.
    pub(super) const LN2_HI: f32 = 0.693_359_4;
    pub(super) const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 · 2^23.
    pub(super) const MAGIC: f32 = 12_582_912.0;
    pub(super) const LO: f32 = -87.0;
    pub(super) const HI: f32 = 88.0;
    // Taylor coefficients 1/k!, k = 7 down to 0; remainder below 6e-9.
    pub(super) const C: [f32; 8] = [
        1.0 / 5040.0,
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ];
}

impl Real for f64 {
    const ZERO: Self = 0.0;
    const NEG_INFINITY: Self = f64::NEG_INFINITY;
    const SAFE_LO: f64 = 1e-250;
    const SAFE_HI: f64 = 1e250;
    const FLUSH: f64 = 3.4e-308; // e^-708

    fn working_cost(c: &[f64]) -> (Cow<'_, [Self]>, f64) {
        (Cow::Borrowed(c), 0.0)
    }

    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        x
    }

    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }

    #[inline(always)]
    fn abs(self) -> Self {
        f64::abs(self)
    }

    #[inline(always)]
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }

    #[inline(always)]
    fn powf(self, e: f64) -> Self {
        f64::powf(self, e)
    }

    #[inline(always)]
    fn madd<const FMA: bool>(a: Self, b: Self, c: Self) -> Self {
        if FMA {
            a.mul_add(b, c)
        } else {
            a * b + c
        }
    }

    #[inline(always)]
    fn exp_poly<const FMA: bool>(self) -> Self {
        use exp_f64::{C, HI, LN2_HI, LN2_LO, LO, LOG2E, MAGIC};
        let x = self.clamp(LO, HI);
        let t = Self::madd::<FMA>(x, LOG2E, MAGIC);
        let n = t - MAGIC;
        let r = Self::madd::<FMA>(-n, LN2_LO, Self::madd::<FMA>(-n, LN2_HI, x));
        let mut p = C[0];
        for &c in &C[1..] {
            p = Self::madd::<FMA>(p, r, c);
        }
        let n_int = t.to_bits().wrapping_sub(MAGIC.to_bits());
        let scale = f64::from_bits(n_int.wrapping_add(1023) << 52);
        if self < LO {
            0.0
        } else {
            p * scale
        }
    }
}

impl Real for f32 {
    const ZERO: Self = 0.0;
    const NEG_INFINITY: Self = f32::NEG_INFINITY;
    const SAFE_LO: f64 = 1e-20;
    const SAFE_HI: f64 = 1e30;
    const FLUSH: f64 = 1.7e-38; // e^-87

    fn working_cost(c: &[f64]) -> (Cow<'_, [Self]>, f64) {
        let cmin = c.iter().fold(f64::INFINITY, |x, &v| x.min(v));
        (
            Cow::Owned(c.par_iter().map(|&v| (v - cmin) as f32).collect()),
            cmin,
        )
    }

    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        x as f32
    }

    #[inline(always)]
    fn to_f64(self) -> f64 {
        f64::from(self)
    }

    #[inline(always)]
    fn abs(self) -> Self {
        f32::abs(self)
    }

    #[inline(always)]
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }

    #[inline(always)]
    fn powf(self, e: f64) -> Self {
        f32::powf(self, e as f32)
    }

    #[inline(always)]
    fn madd<const FMA: bool>(a: Self, b: Self, c: Self) -> Self {
        if FMA {
            a.mul_add(b, c)
        } else {
            a * b + c
        }
    }

    #[inline(always)]
    fn exp_poly<const FMA: bool>(self) -> Self {
        use exp_f32::{C, HI, LN2_HI, LN2_LO, LO, LOG2E, MAGIC};
        let x = self.clamp(LO, HI);
        let t = Self::madd::<FMA>(x, LOG2E, MAGIC);
        let n = t - MAGIC;
        let r = Self::madd::<FMA>(-n, LN2_LO, Self::madd::<FMA>(-n, LN2_HI, x));
        let mut p = C[0];
        for &c in &C[1..] {
            p = Self::madd::<FMA>(p, r, c);
        }
        let n_int = t.to_bits().wrapping_sub(MAGIC.to_bits());
        let scale = f32::from_bits(n_int.wrapping_add(127) << 23);
        if self < LO {
            0.0
        } else {
            p * scale
        }
    }
}

/// Accumulator width: 16 lanes (two AVX2 registers of f32, four of f64).
pub(crate) const WIDTH: usize = 16;

/// Chunks per block: each accumulator sums BLOCK terms in the working precision before they are added to its
/// f64 total (in f32 this keeps the loop at full SIMD width instead of widening every term).
const BLOCK: usize = 16;

/// Entries of one complete block of the sums: a lane cut into pieces of multiples of this many entries
/// (the last piece excepted) and summed piece by piece, the accumulators carried from one piece to the
/// next ([`Acc`]), gives the same bits as the whole lane summed at once.
pub(crate) const LANE_BLOCK: usize = WIDTH * BLOCK;

/// The f64 totals of the 16 accumulators over the complete blocks summed so far (zeros for a new lane).
pub(crate) type Acc = [f64; WIDTH];

/// Σ_k exp((y_k − c_k)·inv + w), accumulated in f64 per block; with `STORE` the terms are also written to
/// `out` (same length as `y`), otherwise `out` is not touched. `acc` holds the accumulators' totals over
/// the blocks summed before this piece of the lane and receives them after its last complete block; the
/// result is the whole lane's sum so far (those totals, the unfinished block and the tail).
#[inline(always)]
fn sum_exp_impl<F: Real, const FMA: bool, const STORE: bool>(
    y: &[F],
    c: &[F],
    inv: F,
    w: F,
    out: &mut [F],
    acc: &mut Acc,
) -> f64 {
    debug_assert_eq!(y.len(), c.len());
    debug_assert!(!STORE || out.len() == y.len());
    let term = |yk: F, ck: F| F::madd::<FMA>(yk - ck, inv, w).exp_poly::<FMA>();
    let full = y.len() / WIDTH * WIDTH;
    let (yh, yt) = y.split_at(full);
    let (chd, ct) = c.split_at(full);
    let (oh, ot): (&mut [F], &mut [F]) = if STORE {
        out.split_at_mut(full)
    } else {
        (&mut [], &mut [])
    };
    let mut part = [F::ZERO; WIDTH];
    for (k, (yk, ck)) in yh
        .chunks_exact(WIDTH)
        .zip(chd.chunks_exact(WIDTH))
        .enumerate()
    {
        let t: [F; WIDTH] = std::array::from_fn(|l| term(yk[l], ck[l]));
        if STORE {
            oh[k * WIDTH..(k + 1) * WIDTH].copy_from_slice(&t);
        }
        for l in 0..WIDTH {
            part[l] = part[l] + t[l];
        }
        if k % BLOCK == BLOCK - 1 {
            for l in 0..WIDTH {
                acc[l] += part[l].to_f64();
                part[l] = F::ZERO;
            }
        }
    }
    let mut s = 0.0;
    for l in 0..WIDTH {
        s += acc[l] + part[l].to_f64();
    }
    for (k, (&yk, &ck)) in yt.iter().zip(ct).enumerate() {
        let t = term(yk, ck);
        if STORE {
            ot[k] = t;
        }
        s += t.to_f64();
    }
    s
}

/// Entries of `acc` one pass of [`axpy_rows_impl`] keeps in registers: four independent accumulator
/// registers of AVX-512 f64 (eight of AVX2), so that consecutive rows' multiply-adds do not wait on each
/// other's latency.
const AXPY_CHUNK: usize = 32;

/// acc_k += r_l · e_{l·stride + k} for every row l of `r` in turn: each acc_k receives its rows'
/// multiply-adds in row order, one rounding each, which gives the bits of one row-at-a-time axpy per row,
/// while `acc` is read and written once for all the rows instead of once per row.
#[inline(always)]
fn axpy_rows_impl<F: Real, const FMA: bool>(acc: &mut [f64], r: &[f64], e: &[F], stride: usize) {
    let len = acc.len();
    if let Some(last) = r.len().checked_sub(1) {
        assert!(
            e.len() >= last * stride + len,
            "axpy_rows: rows out of range"
        );
    }
    let full = len / AXPY_CHUNK * AXPY_CHUNK;
    let (head, tail) = acc.split_at_mut(full);
    for (c, chunk) in head.chunks_exact_mut(AXPY_CHUNK).enumerate() {
        let j = c * AXPY_CHUNK;
        let mut sum: [f64; AXPY_CHUNK] = std::array::from_fn(|q| chunk[q]);
        for (l, &rl) in r.iter().enumerate() {
            let row = &e[l * stride + j..][..AXPY_CHUNK];
            for q in 0..AXPY_CHUNK {
                sum[q] = f64::madd::<FMA>(rl, row[q].to_f64(), sum[q]);
            }
        }
        chunk.copy_from_slice(&sum);
    }
    for (q, a) in tail.iter_mut().enumerate() {
        for (l, &rl) in r.iter().enumerate() {
            *a = f64::madd::<FMA>(rl, e[l * stride + full + q].to_f64(), *a);
        }
    }
}

/// max_k (y_k − c_k).
#[inline(always)]
fn max_diff_impl<F: Real>(y: &[F], c: &[F]) -> F {
    debug_assert_eq!(y.len(), c.len());
    let yc = y.chunks_exact(WIDTH);
    let cc = c.chunks_exact(WIDTH);
    let (yr, cr) = (yc.remainder(), cc.remainder());
    let mut acc = [F::NEG_INFINITY; WIDTH];
    for (yk, ck) in yc.zip(cc) {
        for l in 0..WIDTH {
            let d = yk[l] - ck[l];
            acc[l] = if d > acc[l] { d } else { acc[l] };
        }
    }
    let mut best = F::NEG_INFINITY;
    for a in acc
        .into_iter()
        .chain(yr.iter().zip(cr).map(|(&yk, &ck)| yk - ck))
    {
        best = if a > best { a } else { best };
    }
    best
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::Real;

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn max_diff<F: Real>(y: &[F], c: &[F]) -> F {
        super::max_diff_impl::<F>(y, c)
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn axpy_rows<F: Real>(acc: &mut [f64], r: &[f64], e: &[F], stride: usize) {
        super::axpy_rows_impl::<F, true>(acc, r, e, stride)
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::Real;

    /// # Safety
    /// The CPU must support AVX-512F, AVX2 and FMA.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn axpy_rows<F: Real>(acc: &mut [f64], r: &[f64], e: &[F], stride: usize) {
        super::axpy_rows_impl::<F, true>(acc, r, e, stride)
    }
}

/// acc_k += Σ_l r_l · e_{l·stride + k}, row after row ([`axpy_rows_impl`]).
type AxpyRows<F> = fn(&mut [f64], &[f64], &[F], usize);

/// Σ exp over a piece of a lane, writing the terms and carrying the accumulators ([`sum_exp_impl`]).
type SumExpStore<F> = fn(&[F], &[F], F, F, &mut [F], &mut Acc) -> f64;

/// The lane kernels chosen for this CPU.
#[derive(Clone, Copy)]
pub(crate) struct Kernels<F> {
    sum_exp: fn(&[F], &[F], F, F) -> f64,
    sum_exp_store: SumExpStore<F>,
    max_diff: fn(&[F], &[F]) -> F,
    axpy_rows: AxpyRows<F>,
    name: &'static str,
}

impl<F: Real> Kernels<F> {
    /// The widest kernels this CPU runs: AVX-512F, else AVX2 + FMA (x86-64), else the portable build.
    pub(crate) fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if let Some(k) = Self::avx512().or_else(Self::avx2) {
                return k;
            }
        }
        Self::portable()
    }

    /// The AVX2 + FMA kernels, if the CPU has both.
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn avx2() -> Option<Self> {
        if !(std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma"))
        {
            return None;
        }
        // SAFETY (all four): both features were detected just above.
        Some(Self {
            sum_exp: |y, c, inv, w| unsafe {
                F::sum_exp_avx2::<false>(y, c, inv, w, &mut [], &mut [0.0; WIDTH])
            },
            sum_exp_store: |y, c, inv, w, out, acc| unsafe {
                F::sum_exp_avx2::<true>(y, c, inv, w, out, acc)
            },
            max_diff: |y, c| unsafe { avx2::max_diff(y, c) },
            axpy_rows: |acc, r, e, stride| unsafe { avx2::axpy_rows(acc, r, e, stride) },
            name: "avx2",
        })
    }

    /// The AVX-512F kernels (with AVX2 + FMA for the rest), if the CPU has them.
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn avx512() -> Option<Self> {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return None;
        }
        let base = Self::avx2()?;
        // SAFETY: AVX-512F was detected just above (AVX2 and FMA by `avx2`).
        Some(Self {
            sum_exp: |y, c, inv, w| unsafe {
                F::sum_exp_avx512::<false>(y, c, inv, w, &mut [], &mut [0.0; WIDTH])
            },
            sum_exp_store: |y, c, inv, w, out, acc| unsafe {
                F::sum_exp_avx512::<true>(y, c, inv, w, out, acc)
            },
            axpy_rows: |acc, r, e, stride| unsafe { avx512::axpy_rows(acc, r, e, stride) },
            name: "avx512",
            ..base
        })
    }

    /// The build without target features (FMA on aarch64, where it is part of the base ISA).
    pub(crate) fn portable() -> Self {
        const FMA: bool = cfg!(target_arch = "aarch64");
        Self {
            sum_exp: |y, c, inv, w| {
                sum_exp_impl::<F, FMA, false>(y, c, inv, w, &mut [], &mut [0.0; WIDTH])
            },
            sum_exp_store: sum_exp_impl::<F, FMA, true>,
            max_diff: max_diff_impl::<F>,
            axpy_rows: axpy_rows_impl::<F, FMA>,
            name: "portable",
        }
    }

    /// Which build these are: `"avx512"`, `"avx2"` or `"portable"`.
    pub(crate) fn name(&self) -> &'static str {
        self.name
    }

    /// acc_k += r · e_k.
    #[inline]
    pub(crate) fn axpy(&self, acc: &mut [f64], r: f64, e: &[F]) {
        (self.axpy_rows)(acc, &[r], e, 0)
    }

    /// acc_k += r_l · e_{l·stride + k} for the rows l of `r` in order: the bits of one [`Kernels::axpy`]
    /// per row, with `acc` read and written once. Panics if `e` is shorter than the last row's end.
    #[inline]
    pub(crate) fn axpy_rows(&self, acc: &mut [f64], r: &[f64], e: &[F], stride: usize) {
        (self.axpy_rows)(acc, r, e, stride)
    }

    /// Like [`Kernels::log_sum_exp`], and writes the terms exp((y_k − c_k)·inv + w − shift) to `out`; returns
    /// (ln Σ, shift) with shift = 0 unless the one-pass sum left the safe range, so Σ_k out_k = exp(ln Σ − shift).
    #[inline]
    pub(crate) fn log_sum_exp_store(
        &self,
        y: &[F],
        c: &[F],
        inv: f64,
        w: f64,
        out: &mut [F],
    ) -> (f64, f64) {
        let s = self.sum_exp_store(y, c, inv, w, out, &mut [0.0; WIDTH]);
        self.settle_store(s, y, c, inv, w, out)
    }

    /// Σ_k exp((y_k − c_k)·inv + w) over one piece of a lane, writing the terms to `out`: the one-pass sum
    /// of [`Kernels::log_sum_exp_store`] computed piece by piece. Pieces are consecutive, each but the last a
    /// multiple of [`LANE_BLOCK`] long, `acc` carried from one to the next (zeros before the first); the
    /// last piece returns the same bits as the whole lane would.
    #[inline]
    pub(crate) fn sum_exp_store(
        &self,
        y: &[F],
        c: &[F],
        inv: f64,
        w: f64,
        out: &mut [F],
        acc: &mut Acc,
    ) -> f64 {
        (self.sum_exp_store)(y, c, F::from_f64(inv), F::from_f64(w), out, acc)
    }

    /// [`Kernels::log_sum_exp_store`] given its one-pass sum `s` over the whole lane (y, c): (ln s, 0) when
    /// `s` is in the safe range (`out` already holds the terms), otherwise the lane is summed again shifted
    /// by its maximum.
    #[inline]
    pub(crate) fn settle_store(
        &self,
        s: f64,
        y: &[F],
        c: &[F],
        inv: f64,
        w: f64,
        out: &mut [F],
    ) -> (f64, f64) {
        if Self::safe(s) {
            return (s.ln(), 0.0);
        }
        let zmax = (self.max_diff)(y, c).to_f64() * inv + w;
        if !zmax.is_finite() {
            return (zmax, 0.0);
        }
        let s = self.sum_exp_store(y, c, inv, w - zmax, out, &mut [0.0; WIDTH]);
        (zmax + s.ln(), zmax)
    }

    /// Whether a one-pass sum is trusted as it is ([`Real::SAFE_LO`]).
    #[inline]
    pub(crate) fn safe(s: f64) -> bool {
        (F::SAFE_LO..=F::SAFE_HI).contains(&s)
    }

    /// ln Σ_k exp((y_k − c_k)·inv + w) for `inv` > 0, exact to rounding whatever the range of the exponents:
    /// one pass when the sum lies in the safe range, otherwise a second pass shifted by the lane maximum.
    #[inline]
    pub(crate) fn log_sum_exp(&self, y: &[F], c: &[F], inv: f64, w: f64) -> f64 {
        let s = (self.sum_exp)(y, c, F::from_f64(inv), F::from_f64(w));
        if Self::safe(s) {
            return s.ln();
        }
        let zmax = (self.max_diff)(y, c).to_f64() * inv + w;
        if !zmax.is_finite() {
            return zmax;
        }
        let s = (self.sum_exp)(y, c, F::from_f64(inv), F::from_f64(w - zmax));
        zmax + s.ln()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(a: f64, b: f64) -> f64 {
        if b == 0.0 {
            a.abs()
        } else {
            ((a - b) / b).abs()
        }
    }

    #[test]
    fn exp_poly_f64_matches_std() {
        let mut worst: f64 = 0.0;
        let mut x = -707.5;
        while x < 709.0 {
            worst = worst.max(rel(x.exp_poly::<false>(), x.exp()));
            worst = worst.max(rel(x.exp_poly::<true>(), x.exp()));
            x += 0.012_345_6;
        }
        assert!(worst < 1e-15, "worst relative error {worst:e}");
        assert_eq!((-710.0f64).exp_poly::<false>(), 0.0);
        assert_eq!(0.0f64.exp_poly::<false>(), 1.0);
    }

    #[test]
    fn exp_poly_f32_matches_std() {
        let mut worst: f64 = 0.0;
        let mut x = -86.5f32;
        while x < 88.0 {
            worst = worst.max(rel(f64::from(x.exp_poly::<false>()), f64::from(x).exp()));
            x += 0.001_234_5;
        }
        assert!(worst < 5e-7, "worst relative error {worst:e}");
        assert_eq!((-90.0f32).exp_poly::<false>(), 0.0);
    }

    /// Every build of the kernels gives the same bits: the explicit vectors run the generic code's operations
    /// lane for lane (with FMA), over lanes with and without a tail, across the underflow bound, with NaN.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_builds_equal_the_generic_kernel_bit_for_bit() {
        fn case<F: Real + std::fmt::Debug>(to: fn(f64) -> F, lo: f64) {
            let generic = |y: &[F], c: &[F], inv: F, w: F, out: &mut [F]| {
                sum_exp_impl::<F, true, true>(y, c, inv, w, out, &mut [0.0; WIDTH])
            };
            for n in [0usize, 5, 16, 37, 256, 600, 4099] {
                let y: Vec<F> = (0..n).map(|k| to((k as f64 * 0.37).sin() * 3.0)).collect();
                let mut c: Vec<F> = (0..n).map(|k| to((k as f64 * 0.11).cos())).collect();
                if n > 40 {
                    c[7] = to(f64::NAN);
                }
                for (inv, w) in [
                    (1.0, 0.0),
                    (20.0, -30.0),
                    (-lo / 3.0, lo * 0.9),
                    (1.0, lo + 1.0),
                ] {
                    let (inv, w) = (to(inv), to(w));
                    let mut want = vec![F::ZERO; n];
                    let s0 = generic(&y, &c, inv, w, &mut want);
                    for k in [Kernels::<F>::avx2(), Kernels::<F>::avx512()]
                        .into_iter()
                        .flatten()
                    {
                        let mut got = vec![F::ZERO; n];
                        let s1 = (k.sum_exp_store)(&y, &c, inv, w, &mut got, &mut [0.0; WIDTH]);
                        let s2 = (k.sum_exp)(&y, &c, inv, w);
                        // Bit for bit, except that a NaN is any NaN (IEEE leaves the sign and payload of
                        // a NaN result to the implementation, and codegen differs between builds).
                        let same = |x: f64, y: f64| {
                            x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan())
                        };
                        assert!(same(s1, s0), "{} n={n} sum: {s1:e} vs {s0:e}", k.name());
                        assert!(same(s2, s0), "{} n={n} sum: {s2:e} vs {s0:e}", k.name());
                        for (g, e) in got.iter().zip(&want) {
                            assert!(
                                same(g.to_f64(), e.to_f64()),
                                "{} n={n}: {g:?} vs {e:?}",
                                k.name()
                            );
                        }
                    }
                }
            }
        }
        case::<f64>(|x| x, -708.0);
        case::<f32>(|x| x as f32, -87.0);
    }

    /// A lane summed in pieces (each but the last a multiple of LANE_BLOCK, accumulators carried) gives the
    /// bits and the terms of the whole lane summed at once, in every build.
    #[test]
    fn a_lane_summed_in_pieces_equals_the_whole_lane_bit_for_bit() {
        fn case<F: Real + std::fmt::Debug>(to: fn(f64) -> F) {
            let n = 3 * LANE_BLOCK + 2 * WIDTH + 5;
            let y: Vec<F> = (0..n).map(|k| to((k as f64 * 0.37).sin() * 3.0)).collect();
            let c: Vec<F> = (0..n).map(|k| to((k as f64 * 0.11).cos())).collect();
            let mut builds = vec![Kernels::<F>::portable()];
            #[cfg(target_arch = "x86_64")]
            builds.extend(
                [Kernels::<F>::avx2(), Kernels::<F>::avx512()]
                    .into_iter()
                    .flatten(),
            );
            for k in builds {
                let mut whole = vec![F::ZERO; n];
                let want = k.sum_exp_store(&y, &c, 2.0, -1.0, &mut whole, &mut [0.0; WIDTH]);
                for cuts in [
                    vec![LANE_BLOCK],
                    vec![LANE_BLOCK, 3 * LANE_BLOCK],
                    vec![0, 2 * LANE_BLOCK],
                ] {
                    let mut got = vec![F::ZERO; n];
                    let mut acc = [0.0; WIDTH];
                    let mut s = 0.0;
                    let mut bounds = cuts.clone();
                    bounds.push(n);
                    let mut start = 0;
                    for end in bounds {
                        s = k.sum_exp_store(
                            &y[start..end],
                            &c[start..end],
                            2.0,
                            -1.0,
                            &mut got[start..end],
                            &mut acc,
                        );
                        start = end;
                    }
                    assert_eq!(
                        s.to_bits(),
                        want.to_bits(),
                        "{} cuts {cuts:?}: {s:e} vs {want:e}",
                        k.name()
                    );
                    assert!(got
                        .iter()
                        .zip(&whole)
                        .all(|(a, b)| a.to_f64().to_bits() == b.to_f64().to_bits()));
                }
            }
        }
        case::<f64>(|x| x);
        case::<f32>(|x| x as f32);
    }

    /// Several rows added at once give, in every build, the bits of adding them one after another with a
    /// plain f64 multiply-add (fused where the build fuses), chunks and a ragged tail included.
    #[test]
    fn rows_added_at_once_equal_rows_added_one_by_one() {
        fn case<F: Real>(to: fn(f64) -> F, fused: bool, k: Kernels<F>) {
            let (len, stride) = (2 * AXPY_CHUNK + 7, 3 * AXPY_CHUNK + 1);
            let r: Vec<f64> = (0..5).map(|l| 0.3 + (l as f64 * 1.7).sin()).collect();
            let e: Vec<F> = (0..4 * stride + len)
                .map(|q| to((q as f64 * 0.23).cos() * 1e3))
                .collect();
            let start: Vec<f64> = (0..len).map(|q| (q as f64 * 0.7).sin()).collect();
            let mut want = start.clone();
            for (l, &rl) in r.iter().enumerate() {
                for (q, w) in want.iter_mut().enumerate() {
                    let v = e[l * stride + q].to_f64();
                    *w = if fused {
                        rl.mul_add(v, *w)
                    } else {
                        rl * v + *w
                    };
                }
            }
            let mut got = start;
            k.axpy_rows(&mut got, &r, &e, stride);
            assert!(
                got.iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{}",
                k.name()
            );
        }
        fn builds<F: Real>(to: fn(f64) -> F) {
            case(to, cfg!(target_arch = "aarch64"), Kernels::<F>::portable());
            #[cfg(target_arch = "x86_64")]
            for k in [Kernels::<F>::avx2(), Kernels::<F>::avx512()]
                .into_iter()
                .flatten()
            {
                case(to, true, k);
            }
        }
        builds::<f64>(|x| x);
        builds::<f32>(|x| x as f32);
    }

    #[test]
    fn log_sum_exp_is_exact_in_every_range() {
        // Lanes shorter than one block, and longer with a remainder.
        for n in [37, 600] {
            log_sum_exp_case(n);
        }
    }

    fn log_sum_exp_case(n: usize) {
        let y: Vec<f64> = (0..n).map(|k| (k as f64 * 0.37).sin()).collect();
        let c: Vec<f64> = (0..n).map(|k| (k as f64 * 0.11).cos()).collect();
        let eps: f64 = 0.003;
        for w in [0.0, -900.0, 900.0, -1e5] {
            let z: Vec<f64> = y.iter().zip(&c).map(|(a, b)| (a - b) / eps + w).collect();
            let zmax = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let exact = zmax + z.iter().map(|v| (v - zmax).exp()).sum::<f64>().ln();
            for (name, k) in [
                ("detected", Kernels::<f64>::detect()),
                ("portable", Kernels::<f64>::portable()),
            ] {
                let got = k.log_sum_exp(&y, &c, 1.0 / eps, w);
                assert!(
                    (got - exact).abs() <= 1e-12 * exact.abs().max(1.0),
                    "{name} w={w}: {got} vs {exact}"
                );
            }
            let y32: Vec<f32> = y.iter().map(|&v| v as f32).collect();
            let c32: Vec<f32> = c.iter().map(|&v| v as f32).collect();
            let got = Kernels::<f32>::detect().log_sum_exp(&y32, &c32, 1.0 / eps, w);
            assert!(
                (got - exact).abs() <= 1e-3 * exact.abs().max(1.0),
                "f32 w={w}: {got} vs {exact}"
            );
        }
    }
}
