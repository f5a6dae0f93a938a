//! Kernel registry: which WGSL family holds which entry point, and the sources as compiled.
//!
//! Every family is `shaders/common.wgsl` followed by the family's own file (plain concatenation). Shapes and
//! parameters travel in uniform buffers; the only pipeline-overridable constant is the workgroup size `WG`,
//! so the pipeline cache key is (kernel, workgroup size) and a new problem shape never recompiles.

/// A WGSL file of kernels (one family per file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Family {
    /// Sinkhorn over a cost matrix.
    Sinkhorn,
    /// Sinkhorn over point clouds (the same kernels, the cost computed from the points).
    SinkhornPoints,
    /// The sparse (semi-)dual over a transposed cost matrix.
    SparseDual,
    /// The sparse (semi-)dual over point clouds (the same kernels, the cost computed from the points).
    SparseDualPoints,
    Lbfgs,
    Reduce,
    Adam,
    Router,
}

const COMMON: &str = include_str!("../../shaders/common.wgsl");
/// Adam's step of one problem, shared by the Adam family and the sparse family's fused recipe.
const ADAM_RULE: &str = include_str!("../../shaders/adam_rule.wgsl");

impl Family {
    pub(crate) const ALL: [Family; 8] = [
        Family::Sinkhorn,
        Family::SinkhornPoints,
        Family::SparseDual,
        Family::SparseDualPoints,
        Family::Lbfgs,
        Family::Reduce,
        Family::Adam,
        Family::Router,
    ];

    /// File name under `shaders/`.
    pub(crate) fn file(self) -> &'static str {
        match self {
            Family::Sinkhorn => "sinkhorn.wgsl",
            Family::SinkhornPoints => "sinkhorn.wgsl (cost_points.wgsl)",
            Family::SparseDual => "sparse_dual.wgsl (adam_rule.wgsl, cost_columns.wgsl)",
            Family::SparseDualPoints => "sparse_dual.wgsl (adam_rule.wgsl, cost_points.wgsl)",
            Family::Lbfgs => "lbfgs.wgsl",
            Family::Reduce => "reduce.wgsl",
            Family::Adam => "adam.wgsl (adam_rule.wgsl)",
            Family::Router => "router.wgsl",
        }
    }

    /// The full WGSL source as compiled: common helpers, then the family (Sinkhorn and the sparse kernels
    /// after their cost provider, the sparse and Adam families after Adam's step).
    pub(crate) fn source(self) -> String {
        const SINKHORN: &str = include_str!("../../shaders/sinkhorn.wgsl");
        const SPARSE: &str = include_str!("../../shaders/sparse_dual.wgsl");
        const POINTS: &str = include_str!("../../shaders/cost_points.wgsl");
        // (what the family is concatenated after, besides the common helpers; the family's own file)
        let (before, own): (&[&str], &str) = match self {
            Family::Sinkhorn => (&[include_str!("../../shaders/cost_matrix.wgsl")], SINKHORN),
            Family::SinkhornPoints => (&[POINTS], SINKHORN),
            Family::SparseDual => (
                &[ADAM_RULE, include_str!("../../shaders/cost_columns.wgsl")],
                SPARSE,
            ),
            Family::SparseDualPoints => (&[ADAM_RULE, POINTS], SPARSE),
            Family::Lbfgs => (&[], include_str!("../../shaders/lbfgs.wgsl")),
            Family::Reduce => (&[], include_str!("../../shaders/reduce.wgsl")),
            Family::Adam => (&[ADAM_RULE], include_str!("../../shaders/adam.wgsl")),
            Family::Router => (&[], include_str!("../../shaders/router.wgsl")),
        };
        format!("{COMMON}\n{}\n{own}", before.join("\n"))
    }
}

/// One compute entry point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kernel {
    SinkhornSweep,
    SinkhornRows,
    SinkhornColumns,
    SinkhornMerge,
    PointsSweep,
    PointsRows,
    PointsColumns,
    PointsMerge,
    MaxAbs,
    Transpose,
    LogInto,
    Range,
    Column,
    Row,
    Finalize,
    Extract,
    Recipe,
    PointsColumn,
    PointsRow,
    PointsExtract,
    Trial,
    Accept,
    Direction,
    AdamStep,
    RouterGates,
    RouterGather,
}

impl Kernel {
    pub(crate) fn family(self) -> Family {
        match self {
            Kernel::SinkhornSweep
            | Kernel::SinkhornRows
            | Kernel::SinkhornColumns
            | Kernel::SinkhornMerge => Family::Sinkhorn,
            Kernel::PointsSweep
            | Kernel::PointsRows
            | Kernel::PointsColumns
            | Kernel::PointsMerge => Family::SinkhornPoints,
            Kernel::MaxAbs | Kernel::Transpose | Kernel::LogInto | Kernel::Range => Family::Reduce,
            Kernel::Column | Kernel::Row | Kernel::Finalize | Kernel::Extract | Kernel::Recipe => {
                Family::SparseDual
            }
            Kernel::PointsColumn | Kernel::PointsRow | Kernel::PointsExtract => {
                Family::SparseDualPoints
            }
            Kernel::Trial | Kernel::Accept | Kernel::Direction => Family::Lbfgs,
            Kernel::AdamStep => Family::Adam,
            Kernel::RouterGates | Kernel::RouterGather => Family::Router,
        }
    }

    pub(crate) fn entry(self) -> &'static str {
        match self {
            Kernel::SinkhornSweep | Kernel::PointsSweep => "sweep",
            Kernel::SinkhornRows | Kernel::PointsRows => "update_f",
            Kernel::SinkhornColumns | Kernel::PointsColumns => "columns",
            Kernel::SinkhornMerge | Kernel::PointsMerge => "merge",
            Kernel::MaxAbs => "max_abs",
            Kernel::Transpose => "transpose",
            Kernel::LogInto => "log_into",
            Kernel::Range => "range",
            Kernel::Column | Kernel::PointsColumn => "column_pass",
            Kernel::Row | Kernel::PointsRow => "row_pass",
            Kernel::Finalize => "finalize",
            Kernel::Extract | Kernel::PointsExtract => "extract",
            Kernel::Recipe => "recipe",
            Kernel::Trial => "trial",
            Kernel::Accept => "accept",
            Kernel::Direction => "direction",
            Kernel::AdamStep => "adam_step",
            Kernel::RouterGates => "router_gates",
            Kernel::RouterGather => "router_gather",
        }
    }
}

/// The WGSL sources the GPU path compiles, as `(file name, full source)` pairs (common helpers prepended).
///
/// Exposed so that shaders can be parsed and validated (e.g. with `wgpu::naga`) on machines without a GPU.
pub fn shader_sources() -> Vec<(&'static str, String)> {
    Family::ALL.iter().map(|f| (f.file(), f.source())).collect()
}
