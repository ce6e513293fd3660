//! Code the fuzz targets share.

pub mod head;
