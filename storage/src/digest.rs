//! Content digests and hashers now live in `berth_oci::digest`; this module
//! keeps the `crate::digest::...` paths of the storage backends working.

pub use berth_oci::digest::*;
