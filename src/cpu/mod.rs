//! The CPU reference path (f64). Every GPU result is tested against it.

pub(crate) mod adam;
pub(crate) mod exact;
pub(crate) mod finish;
pub(crate) mod lbfgs;
pub(crate) mod objective;
pub(crate) mod sinkhorn;
pub(crate) mod sparse;
