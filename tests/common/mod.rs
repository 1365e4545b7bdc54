//! Shared helpers for Berth's end-to-end tests.
//!
//! * [`Server`] starts `berth serve` on a free 127.0.0.1 port with a private temporary storage
//!   directory and stops it by PID when dropped (also when the test panics). It can be
//!   restarted gracefully ([`Server::restart`]) or killed hard ([`Server::kill9`]) and started
//!   again on the same port and storage ([`Server::start_again`]).
//! * [`require_tool`] decides whether a test that needs an external tool (docker, skopeo, ...)
//!   runs: outside CI a missing tool skips the test, with `CI=true` it fails loudly.
//! * [`run`] / [`run_ok`] / [`run_fail`] run commands with captured output and a timeout.
//! * Small registry helpers (push a blob or manifest over HTTP, parse the spec's JSON errors)
//!   and a storage-tree snapshot used to prove that rejected requests changed nothing.
//!
//! Debug knob: `BERTH_TEST_SERVER=distribution` runs the same tests against Debian's
//! `docker-registry` (distribution 2.8) instead of Berth, to tell client problems from server
//! problems.

#![allow(dead_code)]

// Each test binary compiles this folder on its own and uses only part of it, hence the
// `dead_code` allowance above and `unused_imports` on every re-export below. Tests reach
// everything as `common::NAME` (they all `use common::*;`).

mod build;
mod certs;
mod ci;
mod cli;
mod deploy;
mod docker_hosts;
mod env;
mod raw_http;
mod registry;
mod rootfs;
mod run;
mod s3;
mod server;
mod snapshot;
mod swarm;

#[allow(unused_imports)]
pub use build::*;
#[allow(unused_imports)]
pub use certs::*;
/// True when running in CI (`CI=true` or `CI=1`): missing tools are then hard failures.
/// Defined in `ci.rs`, which the client's and builder's tests share.
pub use ci::in_ci;
#[allow(unused_imports)]
pub use cli::*;
#[allow(unused_imports)]
pub use deploy::*;
#[allow(unused_imports)]
pub use docker_hosts::*;
#[allow(unused_imports)]
pub use env::*;
#[allow(unused_imports)]
pub use raw_http::*;
#[allow(unused_imports)]
pub use registry::*;
#[allow(unused_imports)]
pub use rootfs::*;
#[allow(unused_imports)]
pub use run::*;
#[allow(unused_imports)]
pub use s3::*;
#[allow(unused_imports)]
pub use server::*;
#[allow(unused_imports)]
pub use snapshot::*;
#[allow(unused_imports)]
pub use swarm::*;
