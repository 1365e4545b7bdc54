//! The `berth` command line: argument parsing and dispatch to the command
//! modules. Configuration and process concerns live with the commands; the
//! registry itself is in `berth-registry`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod access;
mod all_tags;
mod build;
mod build_output;
mod build_progress;
mod catalog;
mod completion;
mod config;
mod config_blob;
mod deploy;
mod deploy_record;
mod down;
mod durations;
mod examples;
mod export;
mod gc;
mod hints;
mod images;
mod inventory;
mod local_images;
mod login_prompt;
mod man;
mod progress;
mod retention;
mod serve;
mod session;
mod ship;
mod swarm_init;
mod sync;
mod tls;
mod usage;

#[derive(Parser)]
#[command(
    name = "berth",
    version,
    about = "Container image registry, builder and deployer in one binary"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an OCI Distribution v1.1 registry (what `docker push HOST:5000/app` talks to).
    Serve(serve::ServeArgs),
    /// Reclaim disk space: remove blobs that no manifest needs any more.
    Gc(gc::GcArgs),
    /// Bytes and tags per repository, with the `[[quota]]` limits that apply.
    Usage(usage::UsageArgs),
    /// Apply the `[[retention]]` policies: remove old tags and untagged manifests (or --dry-run).
    Retention(retention::RetentionArgs),
    /// Send an image to a registry (from the local store, oci:DIR or docker-archive:FILE).
    Push(images::PushArgs),
    /// Fetch an image from a registry (into the local store, or oci:DIR / docker-archive:FILE).
    Pull(images::PullArgs),
    /// Copy an image between registries, OCI layouts, docker archives and the local store.
    Copy(images::CopyArgs),
    /// Replicate every repository under a prefix to another registry (tags by glob, all
    /// platforms, --referrers), skipping what is there by digest; --watch keeps syncing.
    Sync(sync::SyncArgs),
    /// Make an image from a root filesystem tarball (like `docker import`).
    Import(images::ImportArgs),
    /// Give an image on a registry another name there (no blob transfer).
    Tag(images::TagArgs),
    /// Show an image's manifest and config.
    Inspect(images::InspectArgs),
    /// List the tags of a repository.
    Ls(images::LsArgs),
    /// List the repositories of a registry.
    Catalog(catalog::CatalogArgs),
    /// Print shell completions (bash, zsh, fish, elvish, powershell).
    Completion(completion::CompletionArgs),
    /// Write man pages (berth.1 and one per subcommand), generated from this binary's help.
    Man(man::ManArgs),
    /// List the images in the local store (what `build -t`, `pull`, `tag` and `import` made).
    Images(local_images::ImagesArgs),
    /// Remove images from the local store by name.
    Rmi(local_images::RmiArgs),
    /// Remove a tag or manifest.
    Rm(images::RmArgs),
    /// Save credentials for a registry (shared with `docker login`).
    Login(images::LoginArgs),
    /// Forget the credentials for a registry.
    Logout(images::LogoutArgs),
    /// Build an image from a Dockerfile (runc + overlayfs, no daemon); --dry-run prints the plan;
    /// `berth build prune` empties the RUN --mount=type=cache folders
    Build(Box<build::BuildArgs>),
    /// Run an app on the hosts of an inventory: plan (printed with reasons), then apply
    /// with health-gated, rolled-back-on-failure replacement; --check only plans.
    Deploy(deploy::DeployArgs),
    /// Return every host of an inventory to the app's previous release.
    Rollback(deploy::RollbackArgs),
    /// Remove what deploys of an app made on the hosts of an inventory (containers, its
    /// networks others do not use; its volumes only with --volumes).
    Down(down::DownArgs),
    /// Swarm bootstrap: `berth swarm init -i INV` makes the inventory's managers and
    /// workers one Swarm, with node labels from `swarm_labels`.
    Swarm(swarm_init::SwarmArgs),
    /// Print what was read from an inventory (with -e on top), like ansible-inventory:
    /// --list, --host NAME or --graph [GROUP].
    Inventory(inventory::InventoryArgs),
    /// Build every service with a build context, push it, and deploy the pushed digests
    /// (for CI: no TTY needed, non-zero exit on any failure, --json report).
    Ship(ship::ShipArgs),
    /// Write the app for another engine: Kubernetes manifests with a kustomization
    /// (`export kubernetes`) or a `docker stack deploy` file (`export stack`).
    Export(export::ExportArgs),
}

fn main() -> ExitCode {
    let cli = examples::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::serve(args),
        Command::Gc(args) => gc::gc(args),
        Command::Usage(args) => usage::usage(args),
        Command::Retention(args) => retention::retention(args),
        Command::Push(args) => images::push(args),
        Command::Pull(args) => images::pull(args),
        Command::Copy(args) => images::copy(args),
        Command::Sync(args) => sync::run(args),
        Command::Import(args) => images::import(args),
        Command::Tag(args) => images::tag(args),
        Command::Inspect(args) => images::inspect(args),
        Command::Ls(args) => images::ls(args),
        Command::Catalog(args) => catalog::catalog(args),
        Command::Completion(args) => completion::completion::<Cli>(args),
        Command::Man(args) => man::man::<Cli>(args),
        Command::Images(args) => local_images::images(args),
        Command::Rmi(args) => local_images::rmi(args),
        Command::Rm(args) => images::rm(args),
        Command::Login(args) => images::login(args),
        Command::Logout(args) => images::logout(args),
        Command::Build(args) => build::build(*args),
        Command::Deploy(args) => deploy::deploy(args),
        Command::Rollback(args) => deploy::rollback(args),
        Command::Down(args) => down::down(args),
        Command::Swarm(args) => swarm_init::swarm(args),
        Command::Inventory(args) => inventory::inventory(args),
        Command::Ship(args) => ship::ship(args),
        Command::Export(args) => export::export(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
