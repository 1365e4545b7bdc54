//! `berth build` against a hostile Dockerfile and build context (a malicious repository built
//! in CI): whatever the Dockerfile asks, no file outside the build's own folders is written
//! or read on the host.
//!
//! Needs root and runc; with `CI=true` their absence fails the test.

mod common;

use std::fs;

use common::*;

/// `COPY --parents LINK LINK/FILE`: the first source puts the context's symlink (to a host
/// directory) in the staging folder; the second source's kept path `LINK/FILE` must not be
/// written through it onto the host.
#[test]
fn copy_parents_never_writes_through_a_copied_symlink() {
    if !can_build() {
        return;
    }
    let cli = BerthCli::new();
    let victim = cli.path("victim");
    fs::create_dir_all(&victim).unwrap();
    let context = cli.path("ctx");
    fs::create_dir_all(&context).unwrap();
    std::os::unix::fs::symlink(&victim, context.join("a")).unwrap();
    // What `a/pwned` names inside the context (the link's target taken from the context root).
    let inside = context.join(victim.strip_prefix("/").unwrap());
    write(&inside.join("pwned"), "written by the build", 0o644);
    write(
        &context.join("Dockerfile"),
        "FROM scratch\nCOPY --parents a a/pwned /out/\n",
        0o644,
    );
    let layout = cli.path("layout");
    let out_arg = format!("oci:{}:img", layout.display());
    let out = run(build_cmd(&cli, &context, &["--output", &out_arg]), BUILD_T);
    assert!(
        !victim.join("pwned").exists(),
        "the build wrote onto the host through a copied symlink:\n{}",
        out.describe()
    );
    assert!(out.status.success(), "{}", out.describe());
}
