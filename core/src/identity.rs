//! The workload identity type: HBONE's SPIFFE identity, re-exported so the
//! config model and the data path share one type.

pub use hbone::{Identity, IdentityError};
