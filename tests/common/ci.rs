//! Whether the tests run in CI, in one place for every test crate: `tests/common`
//! declares it as a module, and crates that cannot import `tests/common` (the client's
//! and builder's tests) include this file with `#[path = ".../tests/common/ci.rs"] mod ci;`.
//! Nothing else belongs here: those crates do not have `tests/common`'s dependencies.

/// True when running in CI (`CI=true` or `CI=1`, any case): a test that cannot run
/// (missing tool, daemon or privilege) must then fail, not skip.
/// `scripts/test.sh` sets `CI=true` unless it is given `CI=false`.
pub fn in_ci() -> bool {
    matches!(
        std::env::var("CI")
            .map(|v| v.to_ascii_lowercase())
            .as_deref(),
        Ok("true") | Ok("1")
    )
}
