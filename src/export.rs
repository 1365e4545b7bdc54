//! `berth export kubernetes|stack`: argument handling, digest pinning and writing files;
//! the mapping itself is in `berth_deploy::export`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use berth_client::credentials::DockerConfig;
use berth_client::registry::Client;
use berth_client::ImageRef;
use berth_deploy::export::{self, Export, ExportOptions, Rendered};
use berth_deploy::{AppSource, Inventory};
use clap::{Args, Subcommand};

#[derive(Args, Debug)]
pub struct ExportArgs {
    #[command(subcommand)]
    target: Target,
}

#[derive(Subcommand, Debug)]
enum Target {
    /// Kubernetes manifests (Deployments, Services, PersistentVolumeClaims, Secrets) with a
    /// kustomization.yaml for `kubectl apply -k DIR`; several -i give one overlay each
    Kubernetes(KubernetesArgs),
    /// A compose file for `docker stack deploy`, with the swarm mode's `deploy:` keys
    Stack(StackArgs),
}

#[derive(Args, Debug)]
struct KubernetesArgs {
    #[command(flatten)]
    common: SharedArgs,
    /// Namespace for every object (also the kustomization's `namespace`)
    #[arg(long, value_name = "NS")]
    namespace: Option<String>,
    /// All objects in one multi-document file instead of one file per object
    #[arg(long)]
    single_file: bool,
    /// Put secret values into the manifests (base64 Secret objects) instead of files under
    /// DIR/secrets/ that kustomize's secretGenerator reads
    #[arg(long)]
    inline_secrets: bool,
}

#[derive(Args, Debug)]
struct StackArgs {
    #[command(flatten)]
    common: SharedArgs,
}

#[derive(Args, Debug)]
struct SharedArgs {
    /// The app file (Berth app file or compose file)
    app: PathBuf,
    /// Inventory whose variables render the app, as a deploy would; `kubernetes` takes it
    /// more than once (one overlay per inventory, named after its file or folder)
    #[arg(long, short = 'i', required = true)]
    inventory: Vec<PathBuf>,
    /// Extra variables over every host's (as deploy's -e); repeatable
    #[arg(long = "extra-vars", short = 'e', value_name = "VARS")]
    extra_vars: Vec<String>,
    /// Only these hosts or groups (Ansible's --limit patterns)
    #[arg(long, short = 'l')]
    limit: Option<String>,
    /// Folder to write into [default: print to stdout, which needs no secret files]
    #[arg(long, short = 'o', value_name = "DIR")]
    output: Option<PathBuf>,
    /// Keep image tags as written instead of pinning each to its registry digest
    #[arg(long)]
    no_pin: bool,
    /// Registry (HOST[:PORT]) to reach over plain HTTP or unverified HTTPS for digests
    #[arg(long = "insecure", value_name = "REGISTRY", value_delimiter = ',')]
    insecure: Vec<String>,
    /// Extra CA certificate (PEM) to trust when resolving digests
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// USER:PASSWORD for the registry instead of the stored login
    #[arg(
        long,
        value_name = "USER:PASSWORD",
        env = "BERTH_CREDS",
        hide_env_values = true
    )]
    creds: Option<String>,
}

pub fn export(args: ExportArgs) -> Result<()> {
    match args.target {
        Target::Kubernetes(args) => kubernetes(args),
        Target::Stack(args) => stack(args),
    }
}

fn kubernetes(args: KubernetesArgs) -> Result<()> {
    let rendered = render_all(&args.common)?;
    if rendered.len() > 1 && args.common.output.is_none() {
        bail!("several inventories make overlays in folders: give --output DIR");
    }
    let mut options = options(&args.common, &rendered)?;
    options.namespace = args.namespace.clone();
    options.inline_secrets = args.inline_secrets;
    options.single_file = args.single_file || args.common.output.is_none();
    let exported = export::kubernetes::export(&rendered, &options)?;
    finish(&args.common, exported, "kubernetes", "--inline-secrets")
}

fn stack(args: StackArgs) -> Result<()> {
    if args.common.inventory.len() > 1 {
        bail!("a stack file is for one swarm: give one -i");
    }
    let rendered = render_all(&args.common)?;
    let options = options(&args.common, &rendered)?;
    let exported = export::stack::export(&rendered[0].1, &options)?;
    finish(&args.common, exported, "stack", "an external secret")
}

/// The app rendered for each inventory, named after its file or folder.
fn render_all(common: &SharedArgs) -> Result<Vec<(String, Rendered)>> {
    let source = AppSource::load(&common.app)?;
    let extra = berth_deploy::inventory::extra_vars::parse_all(&common.extra_vars)?;
    let mut rendered = Vec::new();
    let mut names = BTreeSet::new();
    for path in &common.inventory {
        let name = path
            .file_stem()
            .map(|s| export::dns_label(&s.to_string_lossy()))
            .unwrap_or_else(|| "inventory".to_string());
        if !names.insert(name.clone()) {
            bail!("two inventories are both named `{name}` (the overlay's name): rename one");
        }
        let inventory = Inventory::load_with_extra_vars(path, &extra)?;
        let app =
            export::render(&source, &inventory, common.limit.as_deref()).with_context(|| {
                format!("rendering {} for {}", common.app.display(), path.display())
            })?;
        rendered.push((name, app));
    }
    Ok(rendered)
}

/// Digests for every image (unless --no-pin) and the registries Berth holds a login for.
fn options(common: &SharedArgs, rendered: &[(String, Rendered)]) -> Result<ExportOptions> {
    let images: BTreeSet<String> = rendered
        .iter()
        .flat_map(|(_, r)| r.services.values().map(|s| s.service.image.clone()))
        .collect();
    let config = crate::session::client_config(
        &common.insecure,
        common.ca_file.as_ref(),
        common.creds.as_deref(),
    )?;
    let docker_config = DockerConfig::load(&config.docker_config).ok();
    let mut logins = BTreeSet::new();
    for image in &images {
        let Ok(reference) = ImageRef::parse(image) else {
            continue;
        };
        let stored = docker_config
            .as_ref()
            .and_then(|c| c.credentials_for(&reference.registry).ok().flatten());
        if common.creds.is_some() || stored.is_some() {
            logins.insert(reference.registry.clone());
        }
    }
    let mut pins = BTreeMap::new();
    if !common.no_pin {
        let client = Client::new(config);
        let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
        let results = runtime.block_on(berth_deploy::run::resolve_digests(&client, &images));
        let mut failed = Vec::new();
        for (image, result) in results {
            match result {
                Ok(digest) => {
                    pins.insert(image, digest);
                }
                Err(message) => failed.push(message),
            }
        }
        if !failed.is_empty() {
            bail!(
                "{}\n(images are pinned to registry digests; give --no-pin to export the tags as written)",
                failed.join("\n")
            );
        }
    }
    Ok(ExportOptions {
        pins,
        logins,
        ..ExportOptions::default()
    })
}

/// Prints the notes, then writes the files into --output (or prints the one YAML file).
fn finish(common: &SharedArgs, exported: Export, what: &str, inline_hint: &str) -> Result<()> {
    for note in &exported.notes {
        eprintln!("warning: {note}");
    }
    let Some(dir) = &common.output else {
        if exported.files.iter().any(|f| f.secret) {
            bail!(
                "the app has secrets, which are written as files beside the manifests: give --output DIR (or use {inline_hint})"
            );
        }
        let text: Vec<String> = exported
            .files
            .iter()
            .filter(|f| f.path.file_name() != Some(std::ffi::OsStr::new("kustomization.yaml")))
            .map(|f| String::from_utf8_lossy(&f.contents).into_owned())
            .collect();
        print!("{}", text.join("---\n"));
        return Ok(());
    };
    for file in &exported.files {
        write_file(dir, &file.path, &file.contents, file.secret)?;
    }
    eprintln!(
        "export {what}: wrote {} file(s) to {} ({} warning(s))",
        exported.files.len(),
        dir.display(),
        exported.notes.len()
    );
    Ok(())
}

fn write_file(dir: &Path, relative: &Path, contents: &[u8], secret: bool) -> Result<()> {
    let path = dir.join(relative);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let mut open = std::fs::OpenOptions::new();
    open.write(true);
    if secret {
        // A fresh file, so the mode applies and a planted symlink is not followed.
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("cannot replace {}", path.display()))
            }
            _ => {}
        }
        open.create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
    } else {
        open.create(true).truncate(true);
    }
    let mut file = open
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    std::io::Write::write_all(&mut file, contents)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
