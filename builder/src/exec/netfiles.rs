//! The network files of a RUN step, as BuildKit gives them: a resolv.conf
//! from the host's, an `/etc/hosts` with localhost, the build's hostname
//! and the `--add-host` entries. They are bind-mounted read-only over
//! `/etc/resolv.conf` and `/etc/hosts` for the step only: the layer never
//! holds them, and a base image's own files keep their content.

use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// The hostname RUN steps see (BuildKit's).
pub const HOSTNAME: &str = "buildkitsandbox";

/// Where the files go in the step's root, relative to it.
pub const TARGETS: [&str; 2] = ["etc/resolv.conf", "etc/hosts"];

/// The host's resolver file. `BERTH_BUILD_RESOLV_CONF` names another one
/// (for tests and odd hosts); otherwise `/etc/resolv.conf`.
fn host_resolv_path() -> PathBuf {
    std::env::var_os("BERTH_BUILD_RESOLV_CONF")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/resolv.conf"))
}

fn nameservers(text: &str) -> Vec<&str> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next())?
        })
        .collect()
}

/// The resolv.conf content for a step. With `--network=none`, none (an
/// empty file: nothing resolves, and nothing of the host's resolver setup
/// shows). BuildKit still mounts a generated file there (with loopback
/// servers replaced by public ones), but a step without network cannot
/// use it; the issue asks for none, and an empty file also hides a base
/// image's own. Otherwise the host's file: RUN shares the host's network
/// namespace, so its servers (loopback ones too) answer. When the host
/// points only at systemd-resolved's stub (127.0.0.53), the upstream file
/// the stub reads (`/run/systemd/resolve/resolv.conf`) is used instead, as
/// Docker does. A host without the file gives an empty one (the resolver
/// then asks localhost, as on the host).
pub fn resolv_conf(network_none: bool) -> String {
    if network_none {
        return String::new();
    }
    resolv_conf_from(
        &host_resolv_path(),
        Path::new("/run/systemd/resolve/resolv.conf"),
    )
}

fn resolv_conf_from(path: &Path, upstream: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    if nameservers(&text) == ["127.0.0.53"] {
        if let Ok(up) = fs::read_to_string(upstream) {
            return up;
        }
    }
    text
}

/// The hosts file for a step: localhost, the hostname, then `--add-host`s.
pub fn hosts(extra: &[(String, IpAddr)]) -> String {
    let mut s =
        format!("127.0.0.1\tlocalhost {HOSTNAME}\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for (name, ip) in extra {
        s.push_str(&format!("{ip}\t{name}\n"));
    }
    s
}

/// Parse `--add-host NAME:IP` (or `NAME=IP`; an IPv6 address may be in
/// brackets), as `docker build` takes it.
pub fn parse_add_host(arg: &str) -> Result<(String, IpAddr), String> {
    let bad = |why: &str| {
        format!("--add-host {arg:?}: {why}; use NAME:IP, e.g. db.internal:10.0.0.5 or v6.internal:[fd00::1]")
    };
    let (name, ip) = match (arg.find('='), arg.find(':')) {
        (Some(e), Some(c)) if e < c => arg.split_at(e),
        (Some(e), None) => arg.split_at(e),
        (_, Some(c)) => arg.split_at(c),
        (None, None) => return Err(bad("no IP address")),
    };
    let ip = &ip[1..];
    if name.is_empty() {
        return Err(bad("no host name"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        || name.starts_with(['-', '.'])
    {
        return Err(bad("not a valid host name"));
    }
    if ip == "host-gateway" {
        return Err(bad(
            "host-gateway is not supported (RUN shares the host network: use 127.0.0.1)",
        ));
    }
    let bare = ip
        .strip_prefix('[')
        .and_then(|i| i.strip_suffix(']'))
        .unwrap_or(ip);
    let ip: IpAddr = bare
        .parse()
        .map_err(|_| bad(&format!("{ip:?} is not an IPv4 or IPv6 address")))?;
    Ok((name.to_string(), ip))
}

/// The generated files of one step, on the host.
pub struct NetFiles {
    pub resolv_conf: PathBuf,
    pub hosts: PathBuf,
}

impl NetFiles {
    /// Write the files into `dir`.
    pub fn write(dir: &Path, network_none: bool, extra: &[(String, IpAddr)]) -> io::Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        fs::create_dir_all(dir)?;
        let files = NetFiles {
            resolv_conf: dir.join("resolv.conf"),
            hosts: dir.join("hosts"),
        };
        fs::write(&files.resolv_conf, resolv_conf(network_none))?;
        fs::write(&files.hosts, hosts(extra))?;
        for p in [&files.resolv_conf, &files.hosts] {
            fs::set_permissions(p, fs::Permissions::from_mode(0o644))?;
        }
        Ok(files)
    }

    /// (target in the root, source on the host).
    pub fn pairs(&self) -> [(&'static str, &Path); 2] {
        [
            (TARGETS[0], self.resolv_conf.as_path()),
            (TARGETS[1], self.hosts.as_path()),
        ]
    }
}

/// Whether a file can be mounted at `rel` under `root`: it is missing or
/// a regular file. A symlink (or anything else) there is left alone: its
/// target could lie outside the root, or be created in the layer.
pub fn mountable(root: &Path, rel: &str) -> bool {
    match fs::symlink_metadata(root.join(rel)) {
        Ok(m) => m.is_file(),
        Err(_) => fs::symlink_metadata(root.join("etc")).map_or(true, |m| m.is_dir()),
    }
}

/// A bottom overlay layer with an empty `/etc/resolv.conf` and
/// `/etc/hosts`: where the image has none, the mount points come from it,
/// so runc creates nothing in the step's upper directory.
pub fn mount_point_layer(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let etc = dir.join("etc");
    fs::create_dir_all(&etc)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    fs::set_permissions(&etc, fs::Permissions::from_mode(0o755))?;
    for t in TARGETS {
        fs::write(dir.join(t), b"")?;
        fs::set_permissions(dir.join(t), fs::Permissions::from_mode(0o644))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_host_forms() {
        let ok = |s: &str| parse_add_host(s).unwrap();
        assert_eq!(
            ok("db:10.0.0.5"),
            ("db".into(), "10.0.0.5".parse().unwrap())
        );
        assert_eq!(ok("db=10.0.0.5").1, "10.0.0.5".parse::<IpAddr>().unwrap());
        assert_eq!(ok("v6.internal:::1").1, "::1".parse::<IpAddr>().unwrap());
        assert_eq!(ok("v6:[fd00::1]").1, "fd00::1".parse::<IpAddr>().unwrap());
        assert_eq!(ok("v6=fd00::1").1, "fd00::1".parse::<IpAddr>().unwrap());
        for bad in [
            "db",
            ":1.2.3.4",
            "db:",
            "db:1.2.3",
            "db:host-gateway",
            "a b:1.2.3.4",
        ] {
            let e = parse_add_host(bad).unwrap_err();
            assert!(e.contains("--add-host"), "{bad}: {e}");
        }
    }

    #[test]
    fn hosts_content() {
        let h = hosts(&[("x.internal".into(), "127.0.88.2".parse().unwrap())]);
        assert!(h.starts_with("127.0.0.1\tlocalhost buildkitsandbox\n"));
        assert!(h.ends_with("127.0.88.2\tx.internal\n"));
    }

    #[test]
    fn systemd_stub_uses_upstream() {
        let dir = tempfile::tempdir().unwrap();
        let (stub, up, plain) = (
            dir.path().join("stub"),
            dir.path().join("up"),
            dir.path().join("plain"),
        );
        fs::write(&stub, "nameserver 127.0.0.53\noptions edns0\n").unwrap();
        fs::write(&up, "nameserver 10.1.1.1\n").unwrap();
        fs::write(&plain, "nameserver 127.0.88.1\n").unwrap();
        assert_eq!(resolv_conf_from(&stub, &up), "nameserver 10.1.1.1\n");
        assert_eq!(resolv_conf_from(&plain, &up), "nameserver 127.0.88.1\n");
        // No upstream file: the stub's own file.
        assert!(resolv_conf_from(&stub, &dir.path().join("none")).contains("127.0.0.53"));
        assert_eq!(resolv_conf_from(&dir.path().join("none"), &up), "");
        assert_eq!(resolv_conf(true), "");
    }
}
