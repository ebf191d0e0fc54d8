//! The cluster's data: databases, tables with typed schemas, extents, values.

pub mod cluster;
pub mod table;
pub mod value;
