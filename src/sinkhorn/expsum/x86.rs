//! The exponential sums of [`super`] written with explicit x86-64 vectors: AVX2 + FMA (8 f32 or 4 f64 per
//! register) and AVX-512F (16 f32 or 8 f64). LLVM leaves the generic lane loop scalar (its clamp and
//! select around the polynomial do not vectorise), so these spell the same operations out.
//!
//! Bit-identical to the generic kernel with FMA: every lane runs the same IEEE operations in the same
//! order (clamp, range reduction, Horner polynomial, exponent bits, select below the underflow bound), and
//! the 16 accumulators (carried in and out), their blocks and the final reduction are those of
//! [`super::sum_exp_impl`]. Lanes of fewer than 16 entries at the end use the scalar [`Real::exp_poly`].

use std::arch::x86_64::*;

use super::{exp_f32, exp_f64, Acc, Real, BLOCK, WIDTH};

/// A SIMD register of `LANES` values of `Elem` and the operations the sum needs.
trait Vector: Copy {
    type Elem: Real;
    const LANES: usize;
    /// # Safety
    /// The vector's target features must be enabled (as for every method here).
    unsafe fn splat(x: Self::Elem) -> Self;
    /// # Safety
    /// `p` must point to `LANES` readable values.
    unsafe fn load(p: *const Self::Elem) -> Self;
    /// # Safety
    /// `p` must point to `LANES` writable values.
    unsafe fn store(self, p: *mut Self::Elem);
    unsafe fn sub(self, o: Self) -> Self;
    unsafe fn add(self, o: Self) -> Self;
    /// self · b + c, fused.
    unsafe fn fma(self, b: Self, c: Self) -> Self;
    /// [`Real::exp_poly`] with FMA, lane by lane.
    unsafe fn exp(self) -> Self;
}

/// Σ_k exp((y_k − c_k)·inv + w) as [`super::sum_exp_impl`] computes it, with `STORE` writing the terms.
///
/// # Safety
/// `V`'s target features must be enabled by the caller.
#[inline(always)]
unsafe fn sum_exp<V: Vector, const STORE: bool>(
    y: &[V::Elem],
    c: &[V::Elem],
    inv: V::Elem,
    w: V::Elem,
    out: &mut [V::Elem],
    acc: &mut Acc,
) -> f64 {
    debug_assert_eq!(y.len(), c.len());
    debug_assert!(!STORE || out.len() == y.len());
    let per = WIDTH / V::LANES;
    let full = y.len() / WIDTH * WIDTH;
    let (vinv, vw) = (V::splat(inv), V::splat(w));
    let zero = V::splat(V::Elem::ZERO);
    let mut part = [zero; 4];
    let mut spill = [V::Elem::ZERO; WIDTH];
    let (yp, cp, op) = (y.as_ptr(), c.as_ptr(), out.as_mut_ptr());
    for k in 0..full / WIDTH {
        for (q, pq) in part.iter_mut().enumerate().take(per) {
            let at = k * WIDTH + q * V::LANES;
            // The cost streams from memory; fetching it PREFETCH bytes ahead keeps the stream going across
            // page boundaries, where the hardware prefetcher stops (a hint: it never faults).
            if q * V::LANES * std::mem::size_of::<V::Elem>() % 64 == 0 {
                let ahead = cp.wrapping_add(at).cast::<i8>().wrapping_add(PREFETCH);
                _mm_prefetch::<_MM_HINT_T0>(ahead);
            }
            let t = V::load(yp.add(at))
                .sub(V::load(cp.add(at)))
                .fma(vinv, vw)
                .exp();
            if STORE {
                t.store(op.add(at));
            }
            *pq = pq.add(t);
        }
        if k % BLOCK == BLOCK - 1 {
            flush::<V>(&mut part[..per], &mut spill, acc, zero);
        }
    }
    for (q, pq) in part.iter().enumerate().take(per) {
        pq.store(spill.as_mut_ptr().add(q * V::LANES));
    }
    let mut s = 0.0;
    for l in 0..WIDTH {
        s += acc[l] + spill[l].to_f64();
    }
    for k in full..y.len() {
        let t = V::Elem::madd::<true>(y[k] - c[k], inv, w).exp_poly::<true>();
        if STORE {
            out[k] = t;
        }
        s += t.to_f64();
    }
    s
}

/// Bytes ahead of the entry being read at which [`sum_exp`] asks for the cost.
const PREFETCH: usize = 1024;

/// acc_l += part_l in f64, then part = 0 (the end of a block).
#[inline(always)]
unsafe fn flush<V: Vector>(part: &mut [V], spill: &mut [V::Elem; WIDTH], acc: &mut Acc, zero: V) {
    for (q, pq) in part.iter_mut().enumerate() {
        pq.store(spill.as_mut_ptr().add(q * V::LANES));
        *pq = zero;
    }
    for (a, s) in acc.iter_mut().zip(spill.iter()) {
        *a += s.to_f64();
    }
}

#[derive(Clone, Copy)]
struct F32x8(__m256);
#[derive(Clone, Copy)]
struct F64x4(__m256d);
#[derive(Clone, Copy)]
struct F32x16(__m512);
#[derive(Clone, Copy)]
struct F64x8(__m512d);

impl Vector for F32x8 {
    type Elem = f32;
    const LANES: usize = 8;
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        Self(_mm256_set1_ps(x))
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        Self(_mm256_loadu_ps(p))
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        _mm256_storeu_ps(p, self.0)
    }
    #[inline(always)]
    unsafe fn sub(self, o: Self) -> Self {
        Self(_mm256_sub_ps(self.0, o.0))
    }
    #[inline(always)]
    unsafe fn add(self, o: Self) -> Self {
        Self(_mm256_add_ps(self.0, o.0))
    }
    #[inline(always)]
    unsafe fn fma(self, b: Self, c: Self) -> Self {
        Self(_mm256_fmadd_ps(self.0, b.0, c.0))
    }
    #[inline(always)]
    unsafe fn exp(self) -> Self {
        let s = _mm256_set1_ps;
        // clamp: max(LO, x) then min(HI, ·) keep a NaN as f32::clamp does.
        let x = _mm256_min_ps(s(exp_f32::HI), _mm256_max_ps(s(exp_f32::LO), self.0));
        let t = _mm256_fmadd_ps(x, s(exp_f32::LOG2E), s(exp_f32::MAGIC));
        let n = _mm256_sub_ps(t, s(exp_f32::MAGIC));
        let neg = _mm256_xor_ps(n, s(-0.0));
        let r = _mm256_fmadd_ps(
            neg,
            s(exp_f32::LN2_LO),
            _mm256_fmadd_ps(neg, s(exp_f32::LN2_HI), x),
        );
        let mut p = s(exp_f32::C[0]);
        for &c in &exp_f32::C[1..] {
            p = _mm256_fmadd_ps(p, r, s(c));
        }
        let bits = _mm256_sub_epi32(
            _mm256_castps_si256(t),
            _mm256_set1_epi32(exp_f32::MAGIC.to_bits() as i32),
        );
        let scale = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
            bits,
            _mm256_set1_epi32(127),
        )));
        let below = _mm256_cmp_ps::<_CMP_LT_OQ>(self.0, s(exp_f32::LO));
        Self(_mm256_andnot_ps(below, _mm256_mul_ps(p, scale)))
    }
}

impl Vector for F64x4 {
    type Elem = f64;
    const LANES: usize = 4;
    #[inline(always)]
    unsafe fn splat(x: f64) -> Self {
        Self(_mm256_set1_pd(x))
    }
    #[inline(always)]
    unsafe fn load(p: *const f64) -> Self {
        Self(_mm256_loadu_pd(p))
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f64) {
        _mm256_storeu_pd(p, self.0)
    }
    #[inline(always)]
    unsafe fn sub(self, o: Self) -> Self {
        Self(_mm256_sub_pd(self.0, o.0))
    }
    #[inline(always)]
    unsafe fn add(self, o: Self) -> Self {
        Self(_mm256_add_pd(self.0, o.0))
    }
    #[inline(always)]
    unsafe fn fma(self, b: Self, c: Self) -> Self {
        Self(_mm256_fmadd_pd(self.0, b.0, c.0))
    }
    #[inline(always)]
    unsafe fn exp(self) -> Self {
        let s = _mm256_set1_pd;
        let x = _mm256_min_pd(s(exp_f64::HI), _mm256_max_pd(s(exp_f64::LO), self.0));
        let t = _mm256_fmadd_pd(x, s(exp_f64::LOG2E), s(exp_f64::MAGIC));
        let n = _mm256_sub_pd(t, s(exp_f64::MAGIC));
        let neg = _mm256_xor_pd(n, s(-0.0));
        let r = _mm256_fmadd_pd(
            neg,
            s(exp_f64::LN2_LO),
            _mm256_fmadd_pd(neg, s(exp_f64::LN2_HI), x),
        );
        let mut p = s(exp_f64::C[0]);
        for &c in &exp_f64::C[1..] {
            p = _mm256_fmadd_pd(p, r, s(c));
        }
        let bits = _mm256_sub_epi64(
            _mm256_castpd_si256(t),
            _mm256_set1_epi64x(exp_f64::MAGIC.to_bits() as i64),
        );
        let scale = _mm256_castsi256_pd(_mm256_slli_epi64::<52>(_mm256_add_epi64(
            bits,
            _mm256_set1_epi64x(1023),
        )));
        let below = _mm256_cmp_pd::<_CMP_LT_OQ>(self.0, s(exp_f64::LO));
        Self(_mm256_andnot_pd(below, _mm256_mul_pd(p, scale)))
    }
}

impl Vector for F32x16 {
    type Elem = f32;
    const LANES: usize = 16;
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        Self(_mm512_set1_ps(x))
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        Self(_mm512_loadu_ps(p))
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        _mm512_storeu_ps(p, self.0)
    }
    #[inline(always)]
    unsafe fn sub(self, o: Self) -> Self {
        Self(_mm512_sub_ps(self.0, o.0))
    }
    #[inline(always)]
    unsafe fn add(self, o: Self) -> Self {
        Self(_mm512_add_ps(self.0, o.0))
    }
    #[inline(always)]
    unsafe fn fma(self, b: Self, c: Self) -> Self {
        Self(_mm512_fmadd_ps(self.0, b.0, c.0))
    }
    #[inline(always)]
    unsafe fn exp(self) -> Self {
        let s = _mm512_set1_ps;
        let x = _mm512_min_ps(s(exp_f32::HI), _mm512_max_ps(s(exp_f32::LO), self.0));
        let t = _mm512_fmadd_ps(x, s(exp_f32::LOG2E), s(exp_f32::MAGIC));
        let n = _mm512_sub_ps(t, s(exp_f32::MAGIC));
        let neg = _mm512_castsi512_ps(_mm512_xor_si512(
            _mm512_castps_si512(n),
            _mm512_set1_epi32(i32::MIN),
        ));
        let r = _mm512_fmadd_ps(
            neg,
            s(exp_f32::LN2_LO),
            _mm512_fmadd_ps(neg, s(exp_f32::LN2_HI), x),
        );
        let mut p = s(exp_f32::C[0]);
        for &c in &exp_f32::C[1..] {
            p = _mm512_fmadd_ps(p, r, s(c));
        }
        let bits = _mm512_sub_epi32(
            _mm512_castps_si512(t),
            _mm512_set1_epi32(exp_f32::MAGIC.to_bits() as i32),
        );
        let scale = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(
            bits,
            _mm512_set1_epi32(127),
        )));
        let below = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(self.0, s(exp_f32::LO));
        Self(_mm512_maskz_mov_ps(!below, _mm512_mul_ps(p, scale)))
    }
}

impl Vector for F64x8 {
    type Elem = f64;
    const LANES: usize = 8;
    #[inline(always)]
    unsafe fn splat(x: f64) -> Self {
        Self(_mm512_set1_pd(x))
    }
    #[inline(always)]
    unsafe fn load(p: *const f64) -> Self {
        Self(_mm512_loadu_pd(p))
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f64) {
        _mm512_storeu_pd(p, self.0)
    }
    #[inline(always)]
    unsafe fn sub(self, o: Self) -> Self {
        Self(_mm512_sub_pd(self.0, o.0))
    }
    #[inline(always)]
    unsafe fn add(self, o: Self) -> Self {
        Self(_mm512_add_pd(self.0, o.0))
    }
    #[inline(always)]
    unsafe fn fma(self, b: Self, c: Self) -> Self {
        Self(_mm512_fmadd_pd(self.0, b.0, c.0))
    }
    #[inline(always)]
    unsafe fn exp(self) -> Self {
        let s = _mm512_set1_pd;
        let x = _mm512_min_pd(s(exp_f64::HI), _mm512_max_pd(s(exp_f64::LO), self.0));
        let t = _mm512_fmadd_pd(x, s(exp_f64::LOG2E), s(exp_f64::MAGIC));
        let n = _mm512_sub_pd(t, s(exp_f64::MAGIC));
        let neg = _mm512_castsi512_pd(_mm512_xor_si512(
            _mm512_castpd_si512(n),
            _mm512_set1_epi64(i64::MIN),
        ));
        let r = _mm512_fmadd_pd(
            neg,
            s(exp_f64::LN2_LO),
            _mm512_fmadd_pd(neg, s(exp_f64::LN2_HI), x),
        );
        let mut p = s(exp_f64::C[0]);
        for &c in &exp_f64::C[1..] {
            p = _mm512_fmadd_pd(p, r, s(c));
        }
        let bits = _mm512_sub_epi64(
            _mm512_castpd_si512(t),
            _mm512_set1_epi64(exp_f64::MAGIC.to_bits() as i64),
        );
        let scale = _mm512_castsi512_pd(_mm512_slli_epi64::<52>(_mm512_add_epi64(
            bits,
            _mm512_set1_epi64(1023),
        )));
        let below = _mm512_cmp_pd_mask::<_CMP_LT_OQ>(self.0, s(exp_f64::LO));
        Self(_mm512_maskz_mov_pd(!below, _mm512_mul_pd(p, scale)))
    }
}

/// The element types with explicit vector kernels.
pub(crate) trait X86: Sized {
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    unsafe fn sum_exp_avx2<const STORE: bool>(
        y: &[Self],
        c: &[Self],
        inv: Self,
        w: Self,
        out: &mut [Self],
        acc: &mut Acc,
    ) -> f64;
    /// # Safety
    /// The CPU must support AVX-512F (and AVX2 and FMA).
    unsafe fn sum_exp_avx512<const STORE: bool>(
        y: &[Self],
        c: &[Self],
        inv: Self,
        w: Self,
        out: &mut [Self],
        acc: &mut Acc,
    ) -> f64;
}

macro_rules! x86_kernels {
    ($t:ty, $v2:ty, $v5:ty) => {
        impl X86 for $t {
            #[target_feature(enable = "avx2,fma")]
            unsafe fn sum_exp_avx2<const STORE: bool>(
                y: &[$t],
                c: &[$t],
                inv: $t,
                w: $t,
                out: &mut [$t],
                acc: &mut Acc,
            ) -> f64 {
                sum_exp::<$v2, STORE>(y, c, inv, w, out, acc)
            }

            #[target_feature(enable = "avx512f,avx2,fma")]
            unsafe fn sum_exp_avx512<const STORE: bool>(
                y: &[$t],
                c: &[$t],
                inv: $t,
                w: $t,
                out: &mut [$t],
                acc: &mut Acc,
            ) -> f64 {
                sum_exp::<$v5, STORE>(y, c, inv, w, out, acc)
            }
        }
    };
}

x86_kernels!(f32, F32x8, F32x16);
x86_kernels!(f64, F64x4, F64x8);
