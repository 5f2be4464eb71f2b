//! The disk image: partition layout, partition tables, and assembling partition images
//! into one disk file.

pub mod layout;
pub mod tables;

pub use layout::{
    DiskPlan, LayoutError, MIB, PartitionKind, PartitionRequest, PlacedPartition, TableType, plan,
};
pub use tables::{derived_guid, write_table};
