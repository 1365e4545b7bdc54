//! Berth's registry client: talks to any OCI / Docker registry (anonymous,
//! Basic and Bearer-token auth), and moves images between registries, OCI
//! image layouts (`oci:DIR[:TAG]`) and docker archives (`docker-archive:FILE`).
//!
//! The pieces: [`reference`] parses image names, [`location`] parses the
//! transports, [`image`] holds the [`ImageSource`]/[`ImageDest`] traits every
//! transport implements, and [`copy`] moves an image from a source to a
//! destination (blobs in parallel, manifest last).

pub mod archive;
pub mod auth;
pub mod copy;
pub mod credentials;
pub mod error;
pub mod image;
pub mod import;
pub mod layout;
pub mod location;
pub mod open;
pub mod reference;
pub mod registry;
pub mod remote;
pub mod sync;

pub use error::{Error, Result};
pub use image::{
    BlobInfo, BlobOutcome, BlobProgress, ImageDest, ImageSource, Manifest, Platform, Progress,
};
pub use reference::ImageRef;

/// A stream of bytes (a blob being read).
pub use berth_oci::ByteStream;
pub use berth_oci::Digest;
