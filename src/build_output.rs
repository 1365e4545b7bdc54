//! `berth build -o/--output`: berth's `oci:DIR[:TAG]` and
//! `docker-archive:FILE[:REF]`, and docker buildx's `type=...` forms
//! (`local`, `tar`, `oci`, `docker`, `image`, `registry`), plus a bare
//! directory (buildx's shorthand for `type=local,dest=DIR`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use berth_client::location::Location;

/// Where one `--output` goes.
#[derive(Debug, PartialEq)]
pub(crate) enum Output {
    /// An image destination the copier writes (OCI layout, docker
    /// archive, the local store, a registry).
    Image(Location),
    /// The final filesystem as a directory (`type=local`).
    Local(PathBuf),
    /// The final filesystem as a tar file (`type=tar`).
    Tar(PathBuf),
    /// An OCI layout in a tar file (`type=oci`, buildx's default form).
    OciTar { file: PathBuf, name: Option<String> },
}

/// What the `type=` forms may say about the layers, to merge with
/// `--compression`.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct LayerAttrs {
    pub compression: Option<String>,
    pub force_compression: bool,
}

/// Parse one `--output` value.
pub(crate) fn parse(value: &str, attrs: &mut LayerAttrs) -> Result<Output> {
    if !value.contains("type=") {
        if value.starts_with("oci:") || value.starts_with("docker-archive:") {
            return Ok(Output::Image(Location::parse(value)?));
        }
        if value == "-" {
            bail!("--output -: writing to stdout is not supported; give type=tar,dest=FILE");
        }
        if value.contains(':') {
            bail!("--output {value}: write oci:DIR[:TAG], docker-archive:FILE[:REF], DIR, or type=local|tar|oci|docker|image|registry,... (use -t and --push for registries)");
        }
        return Ok(Output::Local(PathBuf::from(value)));
    }
    let mut fields = BTreeMap::new();
    for part in value.split(',') {
        let (k, v) = part
            .split_once('=')
            .with_context(|| format!("--output {value}: {part:?} is not KEY=VALUE"))?;
        fields.insert(k.trim().to_string(), v.trim().to_string());
    }
    let kind = fields.remove("type").unwrap_or_default();
    let dest = fields.remove("dest");
    let name = fields.remove("name");
    if let Some(c) = fields.remove("compression") {
        if attrs.compression.as_ref().is_some_and(|old| old != &c) {
            bail!("--output {value}: compression={c} conflicts with another output's or --compression");
        }
        attrs.compression = Some(c);
    }
    if let Some(f) = fields.remove("force-compression") {
        attrs.force_compression |= f == "true";
    }
    let push = fields.remove("push").is_some_and(|v| v == "true");
    let tar = fields.remove("tar").map(|v| v != "false").unwrap_or(true);
    // Attributes that change nothing here (BuildKit's OCI/docker exporter knobs).
    for ignored in ["oci-mediatypes", "compression-level", "platform-split"] {
        fields.remove(ignored);
    }
    if let Some(unknown) = fields.keys().next() {
        bail!("--output {value}: the attribute {unknown:?} is not supported");
    }
    let need_dest = |what: &str| -> Result<PathBuf> {
        match &dest {
            Some(d) if d == "-" => {
                bail!("--output {value}: writing to stdout is not supported; give dest=FILE")
            }
            Some(d) if !d.is_empty() => Ok(PathBuf::from(d)),
            _ => bail!("--output {value}: type={kind} needs dest={what}"),
        }
    };
    Ok(match kind.as_str() {
        "local" => Output::Local(need_dest("DIR")?),
        "tar" => Output::Tar(need_dest("FILE")?),
        "oci" if !tar => Output::Image(Location::Oci {
            dir: need_dest("DIR")?,
            tag: name,
        }),
        "oci" => Output::OciTar {
            file: need_dest("FILE")?,
            name,
        },
        "docker" => Output::Image(Location::DockerArchive {
            file: need_dest("FILE")?,
            reference: name,
        }),
        "image" | "registry" => {
            let name = name.with_context(|| format!("--output {value}: type={kind} needs name=REF"))?;
            let reference = berth_client::ImageRef::parse(&name)
                .with_context(|| format!("--output {value}: name={name} is not an image reference"))?;
            if kind == "registry" || push {
                Output::Image(Location::Registry(reference))
            } else {
                Output::Image(Location::Local(reference))
            }
        }
        "" => bail!("--output {value}: say type=local, tar, oci, docker, image or registry"),
        other => bail!("--output {value}: unknown type {other:?}: use local, tar, oci, docker, image or registry"),
    })
}

/// Write an OCI layout as a tar file (buildx's `type=oci` output).
pub(crate) fn tar_directory(dir: &Path, file: &Path) -> Result<()> {
    let out =
        std::fs::File::create(file).with_context(|| format!("cannot create {}", file.display()))?;
    let mut tar = tar::Builder::new(std::io::BufWriter::new(out));
    tar.follow_symlinks(false);
    tar.append_dir_all(".", dir)
        .and_then(|_| tar.into_inner())
        .and_then(|mut w| std::io::Write::flush(&mut w))
        .with_context(|| format!("cannot write {}", file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(v: &str) -> Result<Output> {
        parse(v, &mut LayerAttrs::default())
    }

    #[test]
    fn output_forms() {
        assert_eq!(
            p("type=local,dest=out").unwrap(),
            Output::Local("out".into())
        );
        assert_eq!(p("out/dir").unwrap(), Output::Local("out/dir".into()));
        assert_eq!(
            p("type=tar,dest=fs.tar").unwrap(),
            Output::Tar("fs.tar".into())
        );
        assert_eq!(
            p("type=oci,dest=img.tar,name=app").unwrap(),
            Output::OciTar {
                file: "img.tar".into(),
                name: Some("app".into())
            }
        );
        assert!(matches!(
            p("type=oci,dest=d,tar=false").unwrap(),
            Output::Image(Location::Oci { .. })
        ));
        assert!(matches!(
            p("type=docker,dest=i.tar,name=app:1").unwrap(),
            Output::Image(Location::DockerArchive { .. })
        ));
        assert!(matches!(
            p("type=image,name=127.0.0.1:5000/app:1,push=true").unwrap(),
            Output::Image(Location::Registry(_))
        ));
        assert!(matches!(
            p("type=image,name=app:1").unwrap(),
            Output::Image(Location::Local(_))
        ));
        assert!(matches!(
            p("oci:dir:tag").unwrap(),
            Output::Image(Location::Oci { .. })
        ));
        for bad in [
            "type=local",
            "type=bogus,dest=x",
            "type=local,dest=x,foo=1",
            "type=tar,dest=-",
            "127.0.0.1:5000/app",
            "type=image",
        ] {
            assert!(p(bad).is_err(), "{bad}");
        }
        let mut attrs = LayerAttrs::default();
        parse(
            "type=image,name=a,compression=zstd,force-compression=true",
            &mut attrs,
        )
        .unwrap();
        assert_eq!(attrs.compression.as_deref(), Some("zstd"));
        assert!(attrs.force_compression);
        assert!(parse("type=oci,dest=x,compression=gzip", &mut attrs).is_err());
    }
}
