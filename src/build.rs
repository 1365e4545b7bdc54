//! `berth build`: read the context, Dockerfile and .dockerignore, print
//! the plan (`--dry-run`) or execute it with `berth_builder::exec`, then
//! write the image where `-t`, `--push` and `--output` say. Reading files
//! and printing live here; the Dockerfile logic is in `berth-builder`.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use berth_builder::exec::{BuildOptions, Executor};
use berth_builder::{DockerIgnore, PlanOptions};
use berth_client::location::{default_store_dir, Location};
use clap::Parser;
use serde_json::json;

use crate::build_output::Output;
use crate::session::{ClientArgs, Session, TransferArgs};
use berth_builder::exec::outputs::Compression;

#[derive(Parser, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct BuildArgs {
    #[command(subcommand)]
    action: Option<BuildAction>,
    /// The build context: a directory
    #[arg(required = true)]
    context: Option<PathBuf>,
    /// The Dockerfile [default: CONTEXT/Dockerfile]; `-` reads it from stdin
    #[arg(long, short = 'f', value_name = "FILE")]
    file: Option<String>,
    /// Value for an ARG; NAME alone takes the value from the environment
    /// (skipped when unset), as `docker build` does; repeatable
    #[arg(long = "build-arg", value_name = "NAME[=VALUE]")]
    build_args: Vec<String>,
    /// Build this stage (FROM ... AS NAME) instead of the last one
    #[arg(long, value_name = "STAGE")]
    target: Option<String>,
    /// Build for OS/ARCH[/VARIANT] [default: this machine's]; a comma list
    /// (linux/amd64,linux/arm64) builds each and writes an OCI image index.
    /// RUN for a platform this machine cannot run needs a qemu emulator
    /// registered with binfmt_misc (apt-get install qemu-user-static
    /// binfmt-support); `FROM --platform=$BUILDPLATFORM` stages run natively
    #[arg(long, value_name = "OS/ARCH[/VARIANT],...")]
    platform: Option<String>,
    /// Print the plan (stages, steps, cache keys) and stop; nothing runs
    #[arg(long)]
    dry_run: bool,
    /// Name the image (REPOSITORY[:TAG]) in the local store; with --push,
    /// also push it there; repeatable
    #[arg(long = "tag", short = 't', value_name = "REF")]
    tags: Vec<String>,
    /// Push the image to the registry each -t names
    #[arg(long)]
    push: bool,
    /// Take every FROM image from its registry, even a bare name the local
    /// store holds (by default `FROM app:1` uses the local app:1, as docker does)
    #[arg(long)]
    pull: bool,
    /// Also write the result: oci:DIR[:TAG], docker-archive:FILE[:REF], or
    /// as buildx: type=local,dest=DIR (the final filesystem; also a bare
    /// DIR), type=tar,dest=FILE, type=oci,dest=FILE[,tar=false],
    /// type=docker,dest=FILE[,name=REF], type=image|registry,name=REF[,push=true];
    /// repeatable
    #[arg(long, short = 'o', value_name = "DEST")]
    output: Vec<String>,
    /// Layer compression: gzip, zstd (OCI's tar+zstd; Docker >= 23,
    /// podman and containerd read it) or uncompressed. Base image layers
    /// stay as pulled unless --force-compression
    #[arg(long, value_name = "gzip|zstd|uncompressed")]
    compression: Option<String>,
    /// Recompress the base images' layers too
    #[arg(long)]
    force_compression: bool,
    /// Write the image digest (the index digest for several platforms) to FILE
    #[arg(long, value_name = "FILE")]
    iidfile: Option<PathBuf>,
    /// Write the build result as JSON to FILE (BuildKit's keys:
    /// containerimage.digest, containerimage.config.digest,
    /// containerimage.descriptor, image.name)
    #[arg(long, value_name = "FILE")]
    metadata_file: Option<PathBuf>,
    /// Set an image label (over the Dockerfile's LABEL); repeatable
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Add an annotation to the image manifest; prefix index: (multi-platform),
    /// manifest-descriptor: or manifest[OS/ARCH]: as buildx; repeatable
    #[arg(long = "annotation", value_name = "[TYPE:]KEY=VALUE")]
    annotations: Vec<String>,
    /// Provenance attestations are not supported yet: only
    /// --provenance=false is accepted
    #[arg(long, value_name = "false", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    provenance: Option<String>,
    /// SBOM attestations are not supported yet: only --sbom=false is accepted
    #[arg(long, value_name = "false", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    sbom: Option<String>,
    /// Build every step again instead of reusing cached layers
    #[arg(long)]
    no_cache: bool,
    /// Read a layer cache pushed by an earlier `--cache-to` (registry
    /// reference); repeatable; a missing one is only a warning
    #[arg(long, value_name = "REF")]
    cache_from: Vec<String>,
    /// Push this build's layer cache (keys and layers) to a registry reference
    #[arg(long, value_name = "REF")]
    cache_to: Option<String>,
    /// Add NAME:IP (IPv4 or IPv6; also NAME=IP) to /etc/hosts in every RUN;
    /// repeatable
    #[arg(long = "add-host", value_name = "NAME:IP")]
    add_hosts: Vec<String>,
    /// Give RUN --mount=type=secret,id=ID a secret: from a file (src=FILE)
    /// or an environment variable (env=VAR; id=ID alone reads $ID), as
    /// `docker build`; never stored in the image, the cache or the log; repeatable
    #[arg(long = "secret", value_name = "id=ID[,src=FILE|,env=VAR]")]
    secrets: Vec<String>,
    /// Forward an SSH agent to RUN --mount=type=ssh[,id=ID]: `default` (or
    /// ID=SOCKET, e.g. default=$SSH_AUTH_SOCK; `default` alone uses
    /// $SSH_AUTH_SOCK); key files are not supported; repeatable
    #[arg(long = "ssh", value_name = "ID[=SOCKET]")]
    ssh: Vec<String>,
    /// Grant an entitlement: security.insecure lets RUN --security=insecure
    /// run with every capability; network.host is accepted (RUN
    /// --network=host needs nothing more); repeatable
    #[arg(long = "allow", value_name = "ENTITLEMENT")]
    allow: Vec<String>,
    /// The network of every RUN without its own RUN --network: default and
    /// host share this machine's network, none has only loopback
    #[arg(long, value_name = "default|none|host")]
    network: Option<String>,
    /// The build cache (base images, layers, keys, cache mounts) [default: beside the local store]
    #[arg(long, value_name = "DIR", env = "BERTH_BUILD_CACHE")]
    cache_dir: Option<PathBuf>,
    /// How steps are shown: tty (live view of running steps with their last
    /// output lines), plain (one line per event), quiet, rawjson (a JSON
    /// object per event); auto is tty on a terminal, plain otherwise
    #[arg(long, value_enum, default_value = "auto")]
    progress: crate::build_progress::ProgressMode,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(clap::Subcommand, Debug)]
enum BuildAction {
    /// Empty the RUN --mount=type=cache folders of the build cache (kept
    /// across builds and --no-cache until then); says what it freed
    Prune(PruneArgs),
}

#[derive(Parser, Debug)]
pub struct PruneArgs {
    /// The build cache [default: beside the local store]
    #[arg(long, value_name = "DIR", env = "BERTH_BUILD_CACHE")]
    cache_dir: Option<PathBuf>,
    /// Berth's local image store (the default build cache is beside it)
    #[arg(long, value_name = "DIR", env = "BERTH_STORE")]
    store: Option<PathBuf>,
    /// Print the result as JSON
    #[arg(long)]
    json: bool,
}

impl BuildArgs {
    fn context(&self) -> &Path {
        self.context.as_deref().unwrap_or(Path::new("."))
    }
}

/// The build cache folder: --cache-dir, or `build-cache` beside the store.
fn cache_dir(cache_dir: &Option<PathBuf>, store: &Option<PathBuf>) -> PathBuf {
    cache_dir.clone().unwrap_or_else(|| {
        let store = store.clone().unwrap_or_else(default_store_dir);
        store
            .parent()
            .map(|p| p.join("build-cache"))
            .unwrap_or_else(|| PathBuf::from("build-cache"))
    })
}

/// `berth build prune`.
fn prune(args: PruneArgs) -> Result<()> {
    let dir = cache_dir(&args.cache_dir, &args.store);
    let pruned = berth_builder::exec::mounts::prune(&dir)
        .with_context(|| format!("cannot prune the cache mounts in {}", dir.display()))?;
    if args.json {
        println!(
            "{}",
            json!({"cache_dir": dir.display().to_string(), "cache_mounts": pruned.ids, "bytes": pruned.bytes})
        );
    } else {
        println!(
            "removed {} cache mount{} ({} bytes) from {}{}",
            pruned.ids.len(),
            if pruned.ids.len() == 1 { "" } else { "s" },
            pruned.bytes,
            dir.display(),
            if pruned.ids.is_empty() {
                String::new()
            } else {
                format!(": {}", pruned.ids.join(", "))
            }
        );
    }
    Ok(())
}

/// `--secret`, `--ssh` and `--allow`: the ids and entitlement for the
/// plan, the values for the executor.
type RunInputs = (
    berth_builder::mounts::RunInputs,
    BTreeMap<String, berth_builder::exec::mounts::Secret>,
    BTreeMap<String, PathBuf>,
);

fn run_inputs(args: &BuildArgs) -> Result<RunInputs> {
    use berth_builder::mounts::{parse_secret_flag, parse_ssh_flag, SecretSource};
    let mut inputs = berth_builder::mounts::RunInputs::default();
    let mut secrets = BTreeMap::new();
    for spec in &args.secrets {
        let (id, source) = parse_secret_flag(spec).map_err(|e| anyhow::anyhow!(e))?;
        let value = match source {
            SecretSource::File(path) => std::fs::read(&path)
                .with_context(|| format!("--secret id={id}: cannot read {}", path.display()))?,
            SecretSource::Env(var) => std::env::var_os(&var)
                .with_context(|| {
                    format!("--secret id={id}: the environment variable {var} is not set")
                })?
                .into_encoded_bytes(),
        };
        inputs.secrets.insert(id.clone());
        secrets.insert(id, berth_builder::exec::mounts::Secret::new(value));
    }
    let mut agents = BTreeMap::new();
    for spec in &args.ssh {
        let (id, socket) = parse_ssh_flag(spec).map_err(|e| anyhow::anyhow!(e))?;
        let socket = match socket {
            Some(s) => s,
            None => std::env::var_os("SSH_AUTH_SOCK")
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
                .with_context(|| format!("--ssh {spec}: SSH_AUTH_SOCK is not set: start an ssh-agent or write --ssh {id}=SOCKET"))?,
        };
        use std::os::unix::fs::FileTypeExt;
        if !std::fs::metadata(&socket).is_ok_and(|m| m.file_type().is_socket()) {
            bail!(
                "--ssh {spec}: {} is not a socket (an ssh-agent's SSH_AUTH_SOCK)",
                socket.display()
            );
        }
        inputs.ssh.insert(id.clone());
        agents.insert(id, socket);
    }
    if let Some(network) = &args.network {
        berth_builder::mounts::parse_network(Some(network))
            .map_err(|e| anyhow::anyhow!("--network {network}: use default, none or host ({e})"))?;
        inputs.network = Some(network.clone());
    }
    for entitlement in &args.allow {
        match entitlement.as_str() {
            "security.insecure" => inputs.allow_insecure = true,
            "network.host" => {}
            other => bail!("--allow {other}: use security.insecure or network.host"),
        }
    }
    Ok((inputs, secrets, agents))
}

pub fn build(mut args: BuildArgs) -> Result<()> {
    if let Some(BuildAction::Prune(prune_args)) = args.action.take() {
        return prune(prune_args);
    }
    let (dockerfile_name, text, ignore, options, plan) = prepare(&args)?;
    if !args.dry_run {
        // Everything above is checked first, so a broken Dockerfile gets
        // its real error before anything is pulled or run.
        let built = execute(
            &args,
            dockerfile_name,
            text,
            ignore.map(|(_, r)| r),
            options,
        )?;
        if args.client.json {
            println!("{}", built.json);
        } else {
            println!("{}", built.digest);
        }
        return Ok(());
    }
    if args.client.json {
        let mut value = serde_json::to_value(&plan)?;
        value["dockerfile"] = dockerfile_name.clone().into();
        value["dockerignore"] = match &ignore {
            Some((path, rules)) => serde_json::json!({
                "file": path.display().to_string(),
                "rules": rules.rules(),
            }),
            None => serde_json::Value::Null,
        };
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!("dockerfile: {dockerfile_name}");
        let platforms = target_platforms(&args)?;
        if platforms.len() > 1 {
            println!(
                "platforms: {} (one image each under an OCI index; the plan below is {}'s)",
                platforms.join(", "),
                platforms[0]
            );
        }
        match &ignore {
            Some((path, rules)) => println!(
                "context: {} ({} rules from {})",
                args.context().display(),
                rules.rules().len(),
                path.display()
            ),
            None => println!("context: {} (no .dockerignore)", args.context().display()),
        }
        print!("{plan}");
    }
    Ok(())
}

/// The checked inputs of a build: the Dockerfile's name and text, its .dockerignore, the
/// plan options and the plan.
type Prepared = (
    String,
    String,
    Option<(PathBuf, DockerIgnore)>,
    PlanOptions,
    berth_builder::Plan,
);

fn prepare(args: &BuildArgs) -> Result<Prepared> {
    if !args.context().is_dir() {
        bail!(
            "the build context {} is not a directory: give the folder with your sources, e.g. `berth build --dry-run .`",
            args.context().display()
        );
    }
    let (dockerfile_name, text) = read_dockerfile(args)?;
    let ignore = read_dockerignore(args, &dockerfile_name)?;

    let platforms = target_platforms(args)?;
    for (flag, value) in [("--provenance", &args.provenance), ("--sbom", &args.sbom)] {
        if let Some(v) = value {
            if !matches!(v.to_ascii_lowercase().as_str(), "false" | "0" | "off") {
                bail!("{flag}={v}: attestations are not supported yet by berth build; leave the flag out or pass {flag}=false");
            }
        }
    }
    let options = PlanOptions {
        build_args: build_args(&args.build_args)?,
        target: args.target.clone(),
        target_platform: platforms.first().cloned(),
        build_platform: None,
        base_images: BTreeMap::new(),
        run_inputs: run_inputs(args)?.0,
    };
    let plan = berth_builder::plan(&text, &options)
        .map_err(|e| anyhow::anyhow!("{}", e.in_file(&dockerfile_name)))?;
    Ok((dockerfile_name, text, ignore, options, plan))
}

/// The normalised `--platform` list (empty: this machine's).
fn target_platforms(args: &BuildArgs) -> Result<Vec<String>> {
    match &args.platform {
        None => Ok(Vec::new()),
        Some(p) => Ok(berth_builder::platforms::parse_list(p)
            .map_err(|e| anyhow::anyhow!("--platform {p}: {e}"))?
            .iter()
            .map(|p| p.to_string())
            .collect()),
    }
}

/// `KEY=VALUE` options (`--label`).
fn key_values(flag: &str, raw: &[String]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for kv in raw {
        match kv.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                out.insert(k.trim().to_string(), v.to_string());
            }
            _ => bail!("{flag} {kv:?}: write {flag} KEY=VALUE"),
        }
    }
    Ok(out)
}

/// One build of `berth ship`: a service's build context, pushed to the image it names.
pub(crate) struct ServiceBuild {
    pub context: PathBuf,
    /// The Dockerfile, relative to the context [default: CONTEXT/Dockerfile].
    pub dockerfile: Option<String>,
    pub args: BTreeMap<String, String>,
    pub target: Option<String>,
    /// Where the image goes (REGISTRY/NAME:TAG).
    pub reference: String,
    pub no_cache: bool,
    pub cache_dir: Option<PathBuf>,
}

/// Builds a service's image and pushes it; returns the pushed manifest digest.
pub(crate) fn build_and_push(build: &ServiceBuild, client: ClientArgs) -> Result<String> {
    let args = BuildArgs {
        file: build
            .dockerfile
            .as_ref()
            .map(|file| build.context.join(file).display().to_string()),
        action: None,
        context: Some(build.context.clone()),
        build_args: build
            .args
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect(),
        target: build.target.clone(),
        platform: None,
        dry_run: false,
        tags: vec![build.reference.clone()],
        push: true,
        // As `docker compose build`: a bare FROM the local store holds is used.
        pull: false,
        output: Vec::new(),
        compression: None,
        force_compression: false,
        iidfile: None,
        metadata_file: None,
        labels: Vec::new(),
        annotations: Vec::new(),
        provenance: None,
        sbom: None,
        no_cache: build.no_cache,
        cache_from: Vec::new(),
        cache_to: None,
        add_hosts: Vec::new(),
        secrets: Vec::new(),
        ssh: Vec::new(),
        allow: Vec::new(),
        network: None,
        cache_dir: build.cache_dir.clone(),
        progress: crate::build_progress::ProgressMode::Auto,
        client,
    };
    let (dockerfile_name, text, ignore, options, _) = prepare(&args)?;
    let built = execute(
        &args,
        dockerfile_name,
        text,
        ignore.map(|(_, r)| r),
        options,
    )?;
    Ok(built.digest)
}

/// What a build made: the manifest digest, and the JSON `--json` prints.
struct Built {
    digest: String,
    json: serde_json::Value,
}

fn execute(
    args: &BuildArgs,
    dockerfile_name: String,
    text: String,
    ignore: Option<DockerIgnore>,
    plan_options: PlanOptions,
) -> Result<Built> {
    if args.push && args.tags.is_empty() {
        bail!("--push needs a name to push to: add -t REGISTRY/NAME[:TAG]");
    }
    let mut destinations = Vec::new();
    for t in &args.tags {
        let reference = berth_client::ImageRef::parse(t)
            .with_context(|| format!("-t {t}: not an image reference"))?;
        destinations.push(Location::Local(reference.clone()));
        if args.push {
            destinations.push(Location::Registry(reference));
        }
    }
    let mut layer_attrs = crate::build_output::LayerAttrs {
        compression: args.compression.clone(),
        force_compression: args.force_compression,
    };
    let mut other_outputs = Vec::new();
    for o in &args.output {
        match crate::build_output::parse(o, &mut layer_attrs)? {
            Output::Image(location) => destinations.push(location),
            other => other_outputs.push(other),
        }
    }
    let compression = match &layer_attrs.compression {
        Some(c) => Compression::parse(c).map_err(|e| anyhow::anyhow!("--compression: {e}"))?,
        None => Compression::Gzip,
    };
    let platforms = target_platforms(args)?;
    let annotations = args
        .annotations
        .iter()
        .map(|a| berth_builder::exec::outputs::Annotation::parse(a))
        .collect::<Result<Vec<_>, String>>()
        .map_err(|e| anyhow::anyhow!(e))?;
    berth_builder::exec::outputs::check_annotations(&annotations, platforms.len() > 1)
        .map_err(|e| anyhow::anyhow!(e))?;
    let labels = key_values("--label", &args.labels)?;
    if platforms.len() > 1 {
        if let Some(archive) = destinations
            .iter()
            .find(|d| matches!(d, Location::DockerArchive { .. }))
        {
            bail!("--output {archive}: a docker archive holds one image, and a build for {} platforms makes an index: write oci:DIR or type=oci, push it, or build one --platform", platforms.len());
        }
    }
    let source_date_epoch = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.trim().is_empty() => Some(v.trim().parse::<u64>().with_context(|| {
            format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds since 1970")
        })?),
        _ => None,
    };
    let add_hosts = args
        .add_hosts
        .iter()
        .map(|h| berth_builder::exec::netfiles::parse_add_host(h))
        .collect::<Result<Vec<_>, String>>()
        .map_err(|e| anyhow::anyhow!(e))?;
    let session = Session::new(&args.client)?;
    let cache_dir = cache_dir(&args.cache_dir, &args.client.store);
    let (_, secrets, ssh_agents) = run_inputs(args)?;
    let options = BuildOptions {
        context: args.context().to_path_buf(),
        dockerfile_name,
        dockerfile_text: text,
        ignore,
        plan_options,
        cache_dir,
        no_cache: args.no_cache,
        source_date_epoch,
        cache_from: args.cache_from.clone(),
        cache_to: args.cache_to.clone(),
        add_hosts,
        secrets,
        ssh_agents,
        platforms: if platforms.len() > 1 {
            platforms
        } else {
            Vec::new()
        },
        compression,
        force_compression: layer_attrs.force_compression,
        labels,
        annotations,
        local_store: (!args.pull).then(|| session.store.clone()),
    };
    let view = crate::build_progress::BuildProgress::new(
        args.progress.resolve(args.client.quiet || args.client.json),
    );
    let progress = |line: &str| view.line(line);
    let handle = session.runtime.handle().clone();
    let started = std::time::Instant::now();
    let built = match Executor::new(&options, &session.client, &handle, &progress)
        .and_then(|e| e.build())
    {
        Ok(built) => built,
        Err(e) => {
            view.failed();
            bail!("{e}");
        }
    };
    session.progress.line(&format!(
        "built {} in {:.2}s: {} layer steps, {} cached",
        built.manifest.digest,
        started.elapsed().as_secs_f64(),
        built.steps,
        built.cached
    ));
    let source = Location::Oci {
        dir: built.layout.clone(),
        tag: Some(built.tag.clone()),
    };
    let transfer = TransferArgs {
        platform: None,
        all: built.manifest.is_index(),
        jobs: 4,
        preserve_digests: true,
    };
    let mut written = Vec::new();
    for dst in &destinations {
        let report = session.copy(&source, dst, &transfer)?;
        session.progress.line(&format!("wrote {dst}"));
        written.push(json!({"destination": dst.to_string(), "digest": report.digest.to_string()}));
    }
    for output in &other_outputs {
        let what = write_output(
            &built,
            output,
            &session,
            &source,
            &transfer,
            &options.cache_dir,
        )?;
        session.progress.line(&format!("wrote {what}"));
        written.push(json!({"destination": what}));
    }
    let single_config = (!built.manifest.is_index()).then_some(&built.config);
    if let Some(file) = &args.iidfile {
        std::fs::write(file, built.manifest.digest.to_string())
            .with_context(|| format!("--iidfile: cannot write {}", file.display()))?;
    }
    if let Some(file) = &args.metadata_file {
        let value = berth_builder::exec::outputs::metadata(
            &built.manifest,
            single_config,
            &args.tags,
            &BTreeMap::new(),
        );
        std::fs::write(file, serde_json::to_vec_pretty(&value)?)
            .with_context(|| format!("--metadata-file: cannot write {}", file.display()))?;
    }
    let per_platform: Vec<serde_json::Value> = built
        .images
        .iter()
        .map(|i| json!({"platform": i.platform, "digest": i.manifest.digest.to_string(), "config": i.config.digest.to_string()}))
        .collect();
    Ok(Built {
        digest: built.manifest.digest.to_string(),
        json: json!({
            "digest": built.manifest.digest.to_string(),
            "config": built.config.digest.to_string(),
            "steps": built.steps,
            "cached": built.cached,
            "isolation": built.isolation,
            "outputs": written,
            "media_type": built.manifest.media_type,
            "platforms": per_platform,
        }),
    })
}

/// Write a `--output` that is not an image destination; returns what was written.
fn write_output(
    built: &berth_builder::exec::Built,
    output: &Output,
    session: &Session,
    source: &Location,
    transfer: &TransferArgs,
    cache_dir: &Path,
) -> Result<String> {
    use berth_builder::exec::outputs::{export_rootfs, export_rootfs_tar};
    // Several platforms: one folder per platform (linux_amd64), as buildx.
    let trees: Vec<(Option<String>, &[PathBuf])> = built
        .images
        .iter()
        .map(|i| {
            let sub = (built.images.len() > 1).then(|| i.platform.replace('/', "_"));
            (sub, i.layer_dirs.as_slice())
        })
        .collect();
    match output {
        Output::Image(_) => unreachable!("image outputs are copied"),
        Output::Local(dir) => {
            for (sub, dirs) in &trees {
                let dest = match sub {
                    Some(s) => dir.join(s),
                    None => dir.clone(),
                };
                export_rootfs(dirs, &dest).with_context(|| {
                    format!("--output type=local: cannot write {}", dest.display())
                })?;
            }
            Ok(format!("type=local,dest={}", dir.display()))
        }
        Output::Tar(file) => {
            export_rootfs_tar(&trees, file, cache_dir)
                .with_context(|| format!("--output type=tar: cannot write {}", file.display()))?;
            Ok(format!("type=tar,dest={}", file.display()))
        }
        Output::OciTar { file, name } => {
            let tmp = tempfile::Builder::new()
                .prefix("oci-output-")
                .tempdir_in(cache_dir)
                .context("cannot create a temporary directory")?;
            let layout = Location::Oci {
                dir: tmp.path().join("layout"),
                tag: name.clone(),
            };
            session.copy(source, &layout, transfer)?;
            crate::build_output::tar_directory(&tmp.path().join("layout"), file)?;
            Ok(format!("type=oci,dest={}", file.display()))
        }
    }
}

/// The Dockerfile's display name and text.
fn read_dockerfile(args: &BuildArgs) -> Result<(String, String)> {
    match args.file.as_deref() {
        Some("-") => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("cannot read the Dockerfile from stdin")?;
            Ok(("Dockerfile".into(), text))
        }
        Some(file) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read the Dockerfile {file} (given with -f)"))?;
            Ok((file.to_string(), text))
        }
        None => {
            let path = args.context().join("Dockerfile");
            let text = std::fs::read_to_string(&path).with_context(|| {
                format!(
                    "cannot read {}: put a Dockerfile in the context or name one with -f",
                    path.display()
                )
            })?;
            Ok((path.display().to_string(), text))
        }
    }
}

/// `FILE.dockerignore` beside a `-f FILE` wins over the context's
/// `.dockerignore`, as in BuildKit.
fn read_dockerignore(
    args: &BuildArgs,
    dockerfile_name: &str,
) -> Result<Option<(PathBuf, DockerIgnore)>> {
    let mut candidates = Vec::new();
    if args.file.as_deref().is_some_and(|f| f != "-") {
        candidates.push(PathBuf::from(format!("{dockerfile_name}.dockerignore")));
    }
    candidates.push(args.context().join(".dockerignore"));
    for path in candidates {
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let rules = DockerIgnore::parse(&text)
                    .map_err(|e| anyhow::anyhow!("{}", e.in_file(&display(&path))))?;
                return Ok(Some((path, rules)));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }
    Ok(None)
}

fn display(path: &Path) -> String {
    path.display().to_string()
}

/// `NAME=VALUE`, or `NAME` for the environment's value (left out when the
/// environment has none, as `docker build` does).
fn build_args(raw: &[String]) -> Result<BTreeMap<String, String>> {
    let mut args = BTreeMap::new();
    for arg in raw {
        let (name, value) = match arg.split_once('=') {
            Some((name, value)) => (name, Some(value.to_string())),
            None => (arg.as_str(), std::env::var(arg).ok()),
        };
        if name.is_empty() {
            bail!("--build-arg {arg:?}: the name is empty; write --build-arg NAME=VALUE");
        }
        if let Some(value) = value {
            args.insert(name.to_string(), value);
        }
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_args_take_values_or_the_environment() {
        std::env::set_var("BERTH_TEST_BUILD_ARG", "from-env");
        let args = build_args(&[
            "A=1".into(),
            "B=".into(),
            "C=x=y".into(),
            "BERTH_TEST_BUILD_ARG".into(),
            "BERTH_TEST_UNSET_ARG".into(),
        ])
        .unwrap();
        assert_eq!(args["A"], "1");
        assert_eq!(args["B"], "");
        assert_eq!(args["C"], "x=y");
        assert_eq!(args["BERTH_TEST_BUILD_ARG"], "from-env");
        assert!(!args.contains_key("BERTH_TEST_UNSET_ARG"));
        assert!(build_args(&["=x".into()]).is_err());
    }
}
