//! The OCI vocabulary every Berth crate speaks: content digests and the
//! hashers behind them, the byte stream blobs travel as, repository names and
//! tags (one grammar), Docker token scopes, percent-coding and media types.
//!
//! The ground floor of the workspace: it depends on no other Berth crate and
//! on nothing heavier than `sha2` and `serde`, so the client and the builder
//! can use it without pulling in storage backends.

use std::io;
use std::pin::Pin;

use bytes::Bytes;
use futures_core::Stream;

pub mod deployment;
pub mod digest;
pub mod glob;
pub mod media_type;
pub mod names;
pub mod percent;
pub mod scope;

pub use digest::{Algorithm, Digest, DigestError, Hasher};
pub use scope::{Actions, Scope, ScopeError};

/// A stream of bytes: a blob being read or written.
pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;
