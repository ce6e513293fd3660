//! The `trellis-cni` plugin: a chained CNI plugin that asks the node's
//! Trellis CNI agent to enroll each new pod of the mesh, and fails the
//! sandbox (fail-closed, unless `failOpen`) when the node proxy does not
//! confirm capture in time.

pub mod error;
pub mod run;
pub mod spec;
