//! The image commands: push, pull, copy, import, tag, inspect, ls, rm,
//! login, logout. Argument handling and output only; the work is in
//! `berth-client`, and what the commands share (flags, the client session)
//! in [`crate::session`].

use std::io::Read as _;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use berth_client::credentials::{Credentials, DockerConfig};
use berth_client::image::{ManifestKind, Platform};
use berth_client::location::{is_bare_name, parse_preferring_local, Location};
use berth_client::open::open_source;
use berth_client::reference::DOCKER_HUB;
use berth_client::registry::Client;
use clap::Parser;
use serde_json::json;

use crate::config_blob::read_small_blob;
use crate::progress::human_bytes;
use crate::session::{client_config, ClientArgs, Session, TransferArgs};

#[derive(Parser, Debug)]
pub struct PushArgs {
    /// What to push: a name in the local store, oci:DIR[:TAG] or docker-archive:FILE
    src: String,
    /// Registry reference to push to [default: SRC's name]
    dst: Option<String>,
    /// Push every tag the local store holds of SRC's repository (SRC without a tag)
    #[arg(long, short = 'a', conflicts_with = "dst")]
    all_tags: bool,
    #[command(flatten)]
    transfer: TransferArgs,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Parser, Debug)]
pub struct PullArgs {
    /// Registry reference to pull
    reference: String,
    /// Where to put it: oci:DIR[:TAG], docker-archive:FILE[:REF] or local:REF
    /// [default: the local store, under REFERENCE]
    dest: Option<String>,
    /// Pull every tag of the repository into the local store (REFERENCE without a tag)
    #[arg(long, short = 'a', conflicts_with = "dest")]
    all_tags: bool,
    #[command(flatten)]
    transfer: TransferArgs,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Parser, Debug)]
pub struct CopyArgs {
    /// Source: registry reference, oci:DIR[:TAG], docker-archive:FILE[:REF] or local:REF
    src: String,
    /// Destination, in the same forms
    dst: String,
    /// USER:PASSWORD for the source registry (as skopeo's --src-creds)
    #[arg(long, value_name = "USER:PASSWORD")]
    src_creds: Option<String>,
    /// USER:PASSWORD for the destination registry (as skopeo's --dest-creds)
    #[arg(long, value_name = "USER:PASSWORD")]
    dest_creds: Option<String>,
    #[command(flatten)]
    transfer: TransferArgs,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Parser, Debug)]
pub struct ImportArgs {
    /// Root filesystem tarball (plain, gzip or zstd); `-` reads stdin
    rootfs: String,
    /// Where the image goes: registry reference, oci:DIR[:TAG], docker-archive:FILE[:REF] or local:REF
    reference: String,
    /// Dockerfile instruction to apply to the image config, as `docker
    /// import --change` (CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, USER, WORKDIR,
    /// VOLUME, STOPSIGNAL, ONBUILD); repeatable
    #[arg(long, short = 'c')]
    change: Vec<String>,
    /// Comment for the image's history
    #[arg(long, short = 'm')]
    message: Option<String>,
    /// Platform the image is for [default: this machine's]
    #[arg(long, value_name = "OS/ARCH")]
    platform: Option<String>,
    /// Push a bare name (no registry host) to its registry (Docker Hub)
    /// instead of keeping it in the local store
    #[arg(long)]
    push: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Parser, Debug)]
pub struct TagArgs {
    /// Existing image: a bare name the local store holds (as `berth images`
    /// shows it) or local:REF tags in the local store; REGISTRY/NAME:TAG on a registry
    src: String,
    /// New name: in the local store for a local image (push it after with
    /// `berth push`); on the same registry otherwise, where only manifests
    /// move and blobs are mounted
    dst: String,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Parser, Debug)]
pub struct InspectArgs {
    /// Image: registry reference, oci:DIR[:TAG], docker-archive:FILE[:REF] or
    /// local:REF; a bare name (`app:1`) the local store holds is read from there
    reference: String,
    /// Print the manifest exactly as stored
    #[arg(long, conflicts_with = "config")]
    raw: bool,
    /// Print the image config exactly as stored
    #[arg(long)]
    config: bool,
    /// For a multi-platform image, describe the one for OS/ARCH[/VARIANT]
    #[arg(long, value_name = "OS/ARCH")]
    platform: Option<String>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Parser, Debug)]
pub struct LsArgs {
    /// Repository on a registry (REGISTRY/NAME), oci:DIR, or `local:` for the
    /// local store; a registry alone (HOST:PORT) lists its repositories
    repository: String,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Parser, Debug)]
pub struct RmArgs {
    /// REGISTRY/NAME:TAG removes the tag; REGISTRY/NAME@DIGEST removes the
    /// manifest and every tag on it; local:REF removes from the local store
    reference: String,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Parser, Debug)]
#[command(
    after_help = "Examples:\n  berth login 127.0.0.1:5000            (asks for user name and password)\n  echo \"$TOKEN\" | berth login -u ci --password-stdin registry.example.com"
)]
pub struct LoginArgs {
    /// Registry host[:port] [default: Docker Hub]
    registry: Option<String>,
    /// User name [default: asked on the terminal]
    #[arg(long, short)]
    username: Option<String>,
    /// Password (prefer --password-stdin: arguments show in `ps`)
    #[arg(long, short)]
    password: Option<String>,
    /// Read the password from stdin
    #[arg(long)]
    password_stdin: bool,
    /// Registry (HOST[:PORT]) to reach over plain HTTP or HTTPS without
    /// certificate checks. Loopback registries need no flag.
    #[arg(
        long,
        value_name = "REGISTRY",
        env = "BERTH_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    insecure: Vec<String>,
    /// Extra CA certificate(s) (PEM) to trust
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
}

#[derive(Parser, Debug)]
pub struct LogoutArgs {
    /// Registry host[:port] [default: Docker Hub]
    registry: Option<String>,
}

pub fn push(args: PushArgs) -> Result<()> {
    crate::hints::reject_path(&args.src)?;
    let session = Session::new(&args.client)?;
    let src = Location::parse_with_default(&args.src, true)?;
    if args.all_tags {
        return crate::all_tags::push_all(&session, &src, &args.transfer);
    }
    let dst = match (&args.dst, &src) {
        (Some(d), _) => Location::parse(d)?,
        (None, Location::Local(r)) => Location::Registry(r.clone()),
        (None, _) => bail!(
            "say where to push {}: berth push {} REGISTRY/NAME[:TAG]",
            args.src,
            args.src
        ),
    };
    if !matches!(dst, Location::Registry(_)) {
        bail!("push sends images to a registry; to write {dst} use `berth copy`");
    }
    let report = session.copy(&src, &dst, &args.transfer)?;
    session.report(&dst, &report);
    Ok(())
}

pub fn pull(args: PullArgs) -> Result<()> {
    crate::hints::reject_path(&args.reference)?;
    let session = Session::new(&args.client)?;
    let src = Location::parse(&args.reference)?;
    let Location::Registry(reference) = &src else {
        bail!("pull takes a registry reference; to read {src} use `berth copy`");
    };
    if args.all_tags {
        return crate::all_tags::pull_all(&session, reference, &args.transfer);
    }
    let dst = match &args.dest {
        Some(d) => Location::parse_with_default(d, true)?,
        None => Location::Local(reference.clone()),
    };
    let report = session.copy(&src, &dst, &args.transfer)?;
    session.report(&dst, &report);
    Ok(())
}

pub fn copy(args: CopyArgs) -> Result<()> {
    crate::hints::reject_path(&args.src)?;
    let session = Session::new(&args.client)?;
    let src = Location::parse(&args.src)?;
    let dst = Location::parse(&args.dst)?;
    // Per-side credentials (skopeo's flags) over --creds and the stored logins.
    let side = |creds: &Option<String>| -> Result<Option<Client>> {
        let Some(creds) = creds else { return Ok(None) };
        let c = &args.client;
        Ok(Some(Client::new(client_config(
            &c.insecure,
            c.ca_file.as_ref(),
            Some(creds),
        )?)))
    };
    let (src_client, dst_client) = (side(&args.src_creds)?, side(&args.dest_creds)?);
    let report = session.copy_between(
        src_client.as_ref().unwrap_or(&session.client),
        dst_client.as_ref().unwrap_or(&session.client),
        &src,
        &dst,
        &args.transfer,
    )?;
    session.report(&dst, &report);
    Ok(())
}

pub fn tag(args: TagArgs) -> Result<()> {
    let session = Session::new(&args.client)?;
    let src = session
        .runtime
        .block_on(parse_preferring_local(&args.src, &session.store))?;
    if let Location::Local(_) = &src {
        // docker tag: another name for a local image, in the local store.
        let dst_text = args.dst.strip_prefix("local:").unwrap_or(&args.dst);
        let dst = Location::Local(berth_client::ImageRef::parse(dst_text)?);
        let report = session.copy(&src, &dst, &every_platform())?;
        session.report(&dst, &report);
        return Ok(());
    }
    let (Location::Registry(src), Location::Registry(dst)) = (src, Location::parse(&args.dst)?)
    else {
        bail!("tag works on registry references; use `berth copy` for other locations");
    };
    if src.registry != dst.registry {
        bail!("tag stays on one registry ({} vs {}): use `berth copy` to move images between registries", src.registry, dst.registry);
    }
    let dst = Location::Registry(dst);
    let report = session.copy(&Location::Registry(src), &dst, &every_platform())?;
    session.report(&dst, &report);
    Ok(())
}

/// Every platform and the index itself: a tag names the same manifest.
fn every_platform() -> TransferArgs {
    TransferArgs {
        platform: None,
        all: true,
        jobs: 4,
        preserve_digests: true,
    }
}

pub fn import(args: ImportArgs) -> Result<()> {
    let session = Session::new(&args.client)?;
    // As `docker import`, a bare name makes a local image; a name with a
    // registry host (or --push) goes to that registry.
    let dst = if is_bare_name(&args.reference) && !args.push {
        Location::Local(berth_client::ImageRef::parse(&args.reference)?)
    } else {
        Location::parse(&args.reference)?
    };
    let platform = match &args.platform {
        Some(p) => p.parse::<Platform>()?,
        None => Platform::current(),
    };
    let options = berth_client::import::ImportOptions {
        changes: args.change.clone(),
        message: args.message.clone(),
        platform: Some(platform.clone()),
        ..Default::default()
    };
    // The image is made in a scratch OCI layout first, then copied like any
    // other image, so every destination works the same way.
    let scratch = tempfile::Builder::new()
        .prefix("berth-import-")
        .tempdir()
        .context("cannot create a temporary folder")?;
    let layout = scratch.path().join("layout");
    session
        .runtime
        .block_on(berth_client::import::import_rootfs(
            std::path::Path::new(&args.rootfs),
            &layout,
            Some("import"),
            &options,
        ))?;
    let src = Location::Oci {
        dir: layout,
        tag: Some("import".into()),
    };
    let transfer = TransferArgs {
        platform: Some(platform.to_string()),
        all: false,
        jobs: 4,
        preserve_digests: true,
    };
    let report = session.copy(&src, &dst, &transfer)?;
    session.report(&dst, &report);
    Ok(())
}

pub fn inspect(args: InspectArgs) -> Result<()> {
    crate::hints::reject_path(&args.reference)?;
    let session = Session::new(&args.client)?;
    let loc = session
        .runtime
        .block_on(parse_preferring_local(&args.reference, &session.store))?;
    let inspected = session.runtime.block_on(async {
        let source = open_source(&session.client, &loc, &session.store).await?;
        let top = source.manifest().await?;
        if args.raw {
            use std::io::Write;
            std::io::stdout().write_all(&top.bytes).context("writing to stdout")?;
            return Ok(());
        }
        let (image, platform) = match top.parse()? {
            ManifestKind::Image { .. } => (top.clone(), None),
            ManifestKind::Index { manifests } => {
                let wanted = match &args.platform {
                    Some(p) => p.parse()?,
                    None => Platform::current(),
                };
                match berth_client::copy::select_platform(&manifests, &wanted) {
                    Ok(entry) => (source.manifest_by_digest(&entry.blob.digest).await?, entry.platform.clone()),
                    Err(e) if !args.config && !session.json => {
                        print_index(&loc, &top, &manifests);
                        eprintln!("({e})");
                        return Ok(());
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        let ManifestKind::Image { config, layers } = image.parse()? else {
            bail!("{loc}: nested image indexes are not supported");
        };
        let config_bytes = read_small_blob(source.as_ref(), &config).await?;
        if args.config {
            use std::io::Write;
            std::io::stdout().write_all(&config_bytes).context("writing to stdout")?;
            return Ok(());
        }
        let config_json: serde_json::Value = serde_json::from_slice(&config_bytes).context("the image config is not JSON")?;
        if session.json {
            let out = json!({
                "name": loc.to_string(),
                "digest": top.digest.to_string(),
                "mediaType": top.media_type,
                "imageDigest": image.digest.to_string(),
                "platform": platform.as_ref().map(|p| p.to_string()),
                "manifest": serde_json::from_slice::<serde_json::Value>(&image.bytes).unwrap_or_default(),
                "config": config_json,
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
            return Ok(());
        }
        let c = &config_json["config"];
        println!("Name:        {loc}");
        println!("Digest:      {}", top.digest);
        if image.digest != top.digest {
            println!("Image:       {} ({})", image.digest, platform.map(|p| p.to_string()).unwrap_or_default());
        }
        println!("MediaType:   {}", image.media_type);
        println!(
            "Platform:    {}/{}{}",
            config_json["os"].as_str().unwrap_or("?"),
            config_json["architecture"].as_str().unwrap_or("?"),
            config_json["variant"].as_str().map(|v| format!("/{v}")).unwrap_or_default()
        );
        if let Some(created) = config_json["created"].as_str() {
            println!("Created:     {created}");
        }
        for (label, key) in [("Entrypoint", "Entrypoint"), ("Cmd", "Cmd"), ("WorkingDir", "WorkingDir"), ("User", "User"), ("Env", "Env"), ("ExposedPorts", "ExposedPorts"), ("Labels", "Labels"), ("Volumes", "Volumes"), ("StopSignal", "StopSignal")] {
            let v = &c[key];
            if !v.is_null() && v != "" {
                println!("{:<12} {}", format!("{label}:"), v);
            }
        }
        let total: u64 = layers.iter().map(|l| l.size).sum();
        println!("Layers:      {} ({})", layers.len(), human_bytes(total));
        for l in &layers {
            println!("  {}  {:>10}  {}", l.digest, human_bytes(l.size), l.media_type);
        }
        Ok(())
    });
    match inspected {
        Ok(()) => Ok(()),
        Err(e) => {
            Err(session
                .runtime
                .block_on(crate::hints::explain_missing(&session.client, &loc, e)))
        }
    }
}

fn print_index(
    loc: &Location,
    top: &berth_client::Manifest,
    entries: &[berth_client::image::IndexEntry],
) {
    println!("Name:        {loc}");
    println!("Digest:      {}", top.digest);
    println!("MediaType:   {}", top.media_type);
    println!("Manifests:   {}", entries.len());
    for e in entries {
        let p = e
            .platform
            .as_ref()
            .map(|p| p.to_string())
            .unwrap_or_else(|| "-".into());
        println!(
            "  {}  {:<16} {}",
            e.blob.digest,
            p,
            human_bytes(e.blob.size)
        );
    }
}

pub fn ls(args: LsArgs) -> Result<()> {
    if crate::catalog::looks_like_registry(&args.repository) {
        return crate::catalog::list(&args.repository, 1000, &args.client);
    }
    let session = Session::new(&args.client)?;
    let tags = if args.repository == "local:" || args.repository == "local" {
        session
            .runtime
            .block_on(berth_client::layout::OciLayout::new(&session.store).tags())?
    } else {
        match Location::parse(&args.repository)? {
            Location::Registry(r) => {
                if r.tag.is_some() || r.digest.is_some() {
                    bail!("ls takes a repository without tag: {}", r.name());
                }
                session.runtime.block_on(async {
                    let registry = session.client.registry(&r.registry)?;
                    registry.tags(&r.repository).await
                })?
            }
            Location::Oci { dir, .. } => session
                .runtime
                .block_on(berth_client::layout::OciLayout::new(dir).tags())?,
            other => bail!(
                "ls lists a registry repository, an OCI layout or the local store, not {other}"
            ),
        }
    };
    if session.json {
        println!("{}", json!(tags));
    } else {
        for t in tags {
            println!("{t}");
        }
    }
    Ok(())
}

pub fn rm(args: RmArgs) -> Result<()> {
    let session = Session::new(&args.client)?;
    match Location::parse(&args.reference)? {
        Location::Registry(r) => session.runtime.block_on(async {
            let registry = session.client.registry(&r.registry)?;
            match (&r.digest, &r.tag) {
                (Some(d), _) => registry.manifest_delete(&r.repository, &d.to_string()).await?,
                (None, Some(t)) => registry.manifest_delete(&r.repository, t).await.map_err(|e| match e {
                    berth_client::Error::Registry { status: 400 | 405, .. } => anyhow::anyhow!(
                        "{e}\nthis registry cannot delete a tag alone; `berth rm {}@DIGEST` deletes the manifest with all its tags",
                        r.name()
                    ),
                    other => other.into(),
                })?,
                (None, None) => bail!("say what to remove: {}:TAG or {}@DIGEST", r.name(), r.name()),
            }
            Ok::<_, anyhow::Error>(())
        })?,
        Location::Local(r) => {
            if !session.runtime.block_on(berth_client::layout::OciLayout::new(&session.store).remove_tag(&Location::store_name(&r)))? {
                bail!("{} is not in the local store ({})", r, session.store.display());
            }
        }
        Location::Oci { dir, tag: Some(tag) } => {
            if !session.runtime.block_on(berth_client::layout::OciLayout::new(&dir).remove_tag(&tag))? {
                bail!("{tag} is not in {}", dir.display());
            }
        }
        other => bail!("rm removes a registry tag or manifest, or a tag of an OCI layout, not {other}"),
    }
    if !session.json {
        session
            .progress
            .line(&format!("removed {}", args.reference));
    }
    Ok(())
}

pub fn login(args: LoginArgs) -> Result<()> {
    use crate::login_prompt::{ask, ask_hidden, can_prompt};
    let registry_name = normalise_registry(args.registry.as_deref());
    let username = match args.username {
        Some(u) => u,
        None if args.password_stdin => bail!(
            "--password-stdin reads only the password: give the user name with --username (-u)"
        ),
        None if can_prompt() => ask("Username: ")?,
        None => bail!(
            "no terminal to ask for the user name: run `berth login -u USER --password-stdin {registry_name}` with the password on stdin"
        ),
    };
    if username.is_empty() {
        bail!("the user name is empty");
    }
    let password = if args.password_stdin {
        let mut p = String::new();
        std::io::stdin()
            .read_to_string(&mut p)
            .context("reading the password from stdin")?;
        p.trim_end_matches(['\n', '\r']).to_string()
    } else if let Some(p) = args.password {
        eprintln!("WARNING! Using --password via the command line is insecure (other users see it in `ps`); use --password-stdin");
        p
    } else if can_prompt() {
        ask_hidden("Password: ")?
    } else {
        bail!("no terminal to ask for the password: pipe it with --password-stdin, e.g. `echo \"$TOKEN\" | berth login -u {username} --password-stdin {registry_name}`");
    };
    if password.is_empty() {
        bail!("the password is empty");
    }
    // Only the connection settings: login's credentials are the ones asked for.
    let session = Session::new(&ClientArgs {
        insecure: args.insecure,
        ca_file: args.ca_file,
        creds: None,
        store: None,
        quiet: false,
        json: false,
    })?;
    session
        .runtime
        .block_on(async {
            let registry = session.client.registry(&registry_name)?;
            registry
                .login(Credentials::Basic {
                    username: username.clone(),
                    password: password.clone(),
                })
                .await
        })
        .map_err(|e| match e {
            berth_client::Error::Unauthorized { .. } => anyhow::anyhow!(
                "{registry_name} refused the user name or password of {username:?}; nothing was saved. Check them and run `berth login {registry_name}` again"
            ),
            other => other.into(),
        })?;
    let path = session.client.config().docker_config.clone();
    let mut config = DockerConfig::load(&path)?;
    config.store(&registry_name, &username, &password)?;
    if config.credential_helper(&registry_name).is_none() {
        // docker's warning: config.json holds the password, only base64-encoded.
        eprintln!(
            "WARNING! Your password is stored unencrypted (base64) in {}.\nConfigure a credential helper (credsStore or credHelpers in that file) to remove this warning.",
            path.display()
        );
    }
    eprintln!("Login Succeeded");
    Ok(())
}

pub fn logout(args: LogoutArgs) -> Result<()> {
    let registry_name = normalise_registry(args.registry.as_deref());
    let path = DockerConfig::default_path();
    let mut config = DockerConfig::load(&path)?;
    if config.erase(&registry_name)? {
        eprintln!("Removed login credentials for {registry_name}");
    } else {
        eprintln!("Not logged in to {registry_name}");
    }
    Ok(())
}

fn normalise_registry(input: Option<&str>) -> String {
    match input {
        None => DOCKER_HUB.to_string(),
        Some(r) => {
            let r = r
                .trim_start_matches("https://")
                .trim_start_matches("http://")
                .trim_end_matches('/');
            match r {
                "index.docker.io" | "registry-1.docker.io" | "index.docker.io/v1" => {
                    DOCKER_HUB.to_string()
                }
                other => other.split('/').next().unwrap_or(other).to_string(),
            }
        }
    }
}
