//! Where a workspace's kernels find the cost: a stored matrix, or two point clouds from which every entry is
//! computed when a kernel needs it (`shaders/cost_points.wgsl`, shared by the Sinkhorn and sparse families).
//!
//! A family reads its matrix through its own provider (`shaders/cost_matrix.wgsl`, row-major, for
//! Sinkhorn; `shaders/cost_columns.wgsl`, column-major, for the sparse kernels), always at binding 1; the
//! point provider's bindings are 17 to 19 in every family, above every binding of the families' own.

use crate::error::{Error, Result};
use crate::gpu::buffers;
use crate::gpu::context::GpuContext;
use crate::points::PointProblem;
use crate::GroundCost;

/// The binding of a family's cost matrix.
const MATRIX_BINDING: u32 = 1;
/// The bindings of x, y and the ground cost's parameters (`shaders/cost_points.wgsl`).
const POINT_BINDINGS: [u32; 3] = [17, 18, 19];

/// The cost of a workspace's B problems.
pub(crate) enum CostBuffers {
    /// B matrices back to back, in the layout the family's matrix provider reads.
    Matrix(wgpu::Buffer),
    /// Point clouds, coordinate-major: x (d × m), y (d × n) and the ground cost's parameters.
    Points {
        xt: wgpu::Buffer,
        yt: wgpu::Buffer,
        ground: wgpu::Buffer,
    },
}

/// `GroundParams` of `shaders/cost_points.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct GroundParams {
    d: u32,
    kind: u32,
    p: f32,
    q: f32,
    scale: f32,
    offset: f32,
    _pad: [u32; 2],
}

impl CostBuffers {
    /// Buffers for B = `nb` problems of shape (m, n): a matrix (labelled `label`) when `points` is `None`,
    /// else clouds of dimension d = `points`.
    pub(crate) fn new(
        ctx: &GpuContext,
        label: &str,
        (m, n, nb): (usize, usize, usize),
        points: Option<usize>,
    ) -> Self {
        match points {
            None => CostBuffers::Matrix(buffers::storage(ctx, label, nb * m * n)),
            Some(d) => CostBuffers::Points {
                xt: buffers::storage(ctx, "x (coordinate-major)", nb * d * m),
                yt: buffers::storage(ctx, "y (coordinate-major)", nb * d * n),
                ground: buffers::uniform(ctx, "ground cost", &GroundParams::zeroed()),
            },
        }
    }

    /// Whether the cost is computed from points.
    pub(crate) fn is_points(&self) -> bool {
        matches!(self, CostBuffers::Points { .. })
    }

    /// `entries` of a pass that reads the cost, with the cost's own bindings added.
    pub(crate) fn with<'a>(
        &'a self,
        entries: &[(u32, &'a wgpu::Buffer)],
    ) -> Vec<(u32, &'a wgpu::Buffer)> {
        let mut e = entries.to_vec();
        match self {
            CostBuffers::Matrix(c) => e.push((MATRIX_BINDING, c)),
            CostBuffers::Points { xt, yt, ground } => {
                e.extend(POINT_BINDINGS.into_iter().zip([xt, yt, ground]))
            }
        }
        e
    }

    /// The matrix of a workspace made for cost matrices.
    pub(crate) fn matrix(&self) -> Result<&wgpu::Buffer> {
        match self {
            CostBuffers::Matrix(c) => Ok(c),
            CostBuffers::Points { .. } => Err(Error::Gpu(
                "internal: a point-cloud workspace was handed a cost matrix".into(),
            )),
        }
    }

    /// Bytes of cost one pass over every entry of one problem reads (0 for points: computed).
    pub(crate) fn bytes(&self, m: usize, n: usize) -> u64 {
        match self {
            CostBuffers::Matrix(_) => 4 * (m * n) as u64,
            CostBuffers::Points { .. } => 0,
        }
    }

    /// Uploads the clouds of `p` (one problem, B = 1) in f32, coordinate-major, and its ground cost, with
    /// `offset` subtracted from every entry: the kernels then compute c(x_i, y_j) / divisor − offset.
    ///
    /// Every ground cost depends on x − y only, so both clouds are first moved (in f64) by the same vector,
    /// the centre of their common bounding box: f32 then keeps the coordinates to its unit roundoff times
    /// the clouds' extent, not times their distance from the origin.
    pub(crate) fn upload_points(
        &self,
        ctx: &GpuContext,
        p: &PointProblem,
        offset: f64,
    ) -> Result<()> {
        let CostBuffers::Points { xt, yt, ground } = self else {
            return Err(Error::Gpu(
                "internal: a cost-matrix workspace was handed point clouds".into(),
            ));
        };
        let (x, y) = (p.x(), p.y());
        let centre: Vec<f64> = (0..p.dim())
            .map(|k| {
                let coords = x.column(k).into_iter().chain(y.column(k));
                let (lo, hi) = coords.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
                    (lo.min(v), hi.max(v))
                });
                0.5 * (lo + hi)
            })
            .collect();
        let coordinate_major = |v: ndarray::ArrayView2<'_, f64>| -> Vec<f32> {
            v.columns()
                .into_iter()
                .zip(&centre)
                .flat_map(|(c, &mid)| c.into_iter().map(move |&x| (x - mid) as f32))
                .collect()
        };
        buffers::upload(ctx, xt, &coordinate_major(x));
        buffers::upload(ctx, yt, &coordinate_major(y));
        let (kind, pw, q) = match p.ground_cost() {
            GroundCost::SqEuclidean => (0, 2.0, 2.0),
            GroundCost::Euclidean => (1, 2.0, 1.0),
            GroundCost::Minkowski { p, q } => (2, p as f32, q as f32),
        };
        let params = GroundParams {
            d: p.dim() as u32,
            kind,
            p: pw,
            q,
            scale: (1.0 / p.divisor()) as f32,
            offset: offset as f32,
            _pad: [0; 2],
        };
        ctx.queue()
            .write_buffer(ground, 0, bytemuck::bytes_of(&params));
        Ok(())
    }
}

impl GroundParams {
    fn zeroed() -> Self {
        bytemuck::Zeroable::zeroed()
    }
}

/// Refuses clouds whose coordinates do not fit one storage binding (f32, d × the larger cloud).
pub(crate) fn check_clouds(ctx: &GpuContext, m: usize, n: usize, d: usize) -> Result<()> {
    ctx.check_binding(
        "max_storage_buffer_binding_size (coordinates of a cloud, f32)",
        4 * (d as u64) * (m.max(n) as u64),
    )
}
