//! Repository names and tags now live in `berth_oci::names` (one grammar for
//! storage paths, token scopes and image references); this module keeps the
//! `berth_storage::names::...` paths working.

pub use berth_oci::names::*;
