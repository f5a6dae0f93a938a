//! A problem whose data already lives in GPU buffers: the input of the buffer entry points
//! ([`crate::SparseOt::solve_buffers`], [`crate::Sinkhorn::solve_buffers`]).

use crate::error::{Error, Result};

/// A problem whose data already lives in the application's GPU buffers (f32, on this context's device).
///
/// Every buffer needs `STORAGE | COPY_SRC` usage; `cost` is m×n row-major. The values are not
/// checked on the host (that would need a readback): they must be finite, the marginals positive (the
/// semi-dual divides by b_j) with equal sums.
#[derive(Debug, Clone, Copy)]
pub struct GpuProblem<'a> {
    /// Number of sources (rows).
    pub m: usize,
    /// Number of targets (columns).
    pub n: usize,
    /// Source marginal, m f32.
    pub a: &'a wgpu::Buffer,
    /// Target marginal, n f32.
    pub b: &'a wgpu::Buffer,
    /// Cost, m×n f32 row-major.
    pub cost: &'a wgpu::Buffer,
}

impl GpuProblem<'_> {
    /// Checks the shape against the buffers' sizes.
    pub(crate) fn check(&self) -> Result<()> {
        let (m, n) = (self.m, self.n);
        if m == 0 || n == 0 {
            return Err(Error::Empty {
                what: if m == 0 { "a" } else { "b" },
            });
        }
        let sizes = [
            ("a buffer", self.a, m),
            ("b buffer", self.b, n),
            ("cost buffer", self.cost, m * n),
        ];
        for (what, buf, len) in sizes {
            if buf.size() < 4 * len as u64 {
                return Err(Error::ShapeMismatch {
                    what,
                    expected: 4 * len,
                    found: buf.size() as usize,
                });
            }
        }
        Ok(())
    }
}
