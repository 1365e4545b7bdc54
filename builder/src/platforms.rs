//! Which platforms `berth build --platform` accepts, how their names are
//! normalised (as containerd does: `aarch64` is `linux/arm64`, `arm` means
//! `arm/v7`), and whether this machine can run a platform's programs:
//! natively, through a qemu emulator registered with binfmt_misc, or not.
//!
//! Pure functions over strings and a binfmt_misc directory, so the rules
//! are unit-tested without registering an emulator on the machine.

use std::fs;
use std::path::{Path, PathBuf};

use crate::plan::Platform;

/// Where the kernel lists registered binary formats.
pub const BINFMT_DIR: &str = "/proc/sys/fs/binfmt_misc";

/// What to install when no emulator is registered (Debian/Ubuntu names).
pub const EMULATOR_HINT: &str = "apt-get install qemu-user-static binfmt-support";

/// Architectures an image can be built for, with the variants each takes
/// (the first is the default when a variant matters), and the name of the
/// qemu binfmt_misc entry that runs its programs.
const ARCHITECTURES: &[(&str, &[&str], &str)] = &[
    ("amd64", &["v1", "v2", "v3", "v4"], "qemu-x86_64"),
    ("arm64", &["v8", "v9"], "qemu-aarch64"),
    ("arm", &["v7", "v6", "v5"], "qemu-arm"),
    ("386", &[], "qemu-i386"),
    ("ppc64le", &[], "qemu-ppc64le"),
    ("s390x", &[], "qemu-s390x"),
    ("riscv64", &[], "qemu-riscv64"),
    ("mips64le", &[], "qemu-mips64el"),
    ("mips64", &[], "qemu-mips64"),
    ("loong64", &[], "qemu-loongarch64"),
];

/// Parse and normalise one platform: `linux/aarch64` → `linux/arm64`,
/// `linux/arm64/v8` → `linux/arm64`, `linux/arm` → `linux/arm/v7`,
/// `linux/amd64/v1` → `linux/amd64`. Anything not buildable is an error
/// that lists what is.
pub fn normalize(text: &str) -> Result<Platform, String> {
    let trimmed = text.trim();
    let mut p = Platform::parse(trimmed)?;
    if p.os != "linux" {
        return Err(format!(
            "unsupported platform {trimmed:?}: berth build makes Linux images only (OS \"linux\"), e.g. linux/amd64"
        ));
    }
    let (arch, implied_variant) = match p.arch.as_str() {
        "x86_64" | "x86-64" => ("amd64", None),
        "aarch64" => ("arm64", None),
        "armhf" => ("arm", Some("v7")),
        "armel" => ("arm", Some("v6")),
        "i386" | "i686" => ("386", None),
        other => (other, None),
    };
    let Some((arch, variants, _)) = ARCHITECTURES.iter().find(|(a, _, _)| *a == arch) else {
        return Err(format!(
            "unsupported platform {trimmed:?}: unknown architecture {:?}; supported: {}",
            p.arch,
            supported().join(", ")
        ));
    };
    p.arch = arch.to_string();
    if p.variant.is_none() {
        p.variant = implied_variant.map(str::to_string);
    }
    if let Some(v) = &p.variant {
        let v = v.to_ascii_lowercase();
        if !variants.contains(&v.as_str()) {
            return Err(format!(
                "unsupported platform {trimmed:?}: {arch} has {}",
                if variants.is_empty() {
                    "no variants".to_string()
                } else {
                    format!("the variants {}", variants.join(", "))
                }
            ));
        }
        p.variant = Some(v);
    }
    // containerd's normal form: the default variant of amd64 and arm64 is
    // left out, arm's is written.
    match (p.arch.as_str(), p.variant.as_deref()) {
        ("amd64", Some("v1")) | ("arm64", Some("v8")) => p.variant = None,
        ("arm", None) => p.variant = Some("v7".into()),
        _ => {}
    }
    Ok(p)
}

/// A comma-separated `--platform` list, normalised, duplicates dropped
/// (first one wins), never empty.
pub fn parse_list(text: &str) -> Result<Vec<Platform>, String> {
    let mut out: Vec<Platform> = Vec::new();
    for part in text.split(',') {
        if part.trim().is_empty() {
            return Err(format!(
                "--platform {text:?}: an empty platform in the list; write e.g. linux/amd64,linux/arm64"
            ));
        }
        let p = normalize(part)?;
        if !out.contains(&p) {
            out.push(p);
        }
    }
    Ok(out)
}

/// The platforms `normalize` accepts, for messages.
pub fn supported() -> Vec<String> {
    ARCHITECTURES
        .iter()
        .map(|(arch, _, _)| match *arch {
            "arm" => "linux/arm/v7 (v6, v5)".to_string(),
            other => format!("linux/{other}"),
        })
        .collect()
}

/// Whether programs of `wanted` run on a machine of `host` without help.
pub fn runs_natively(host: &Platform, wanted: &Platform) -> bool {
    if wanted.os != host.os {
        return false;
    }
    // x86_64 kernels run 32-bit x86 programs (IA32 emulation is on in
    // every distribution kernel).
    wanted.arch == host.arch || (host.arch == "amd64" && wanted.arch == "386")
}

/// A qemu emulator registered with binfmt_misc.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Emulator {
    /// The binfmt_misc entry (`qemu-aarch64`).
    pub name: String,
    /// The interpreter the kernel runs (`/usr/bin/qemu-aarch64-static`).
    pub interpreter: PathBuf,
    /// The `F` flag: the kernel opened the interpreter when it was
    /// registered, so it works inside a container's root too. Without it
    /// the interpreter must be reachable at its path inside the container.
    pub fix_binary: bool,
}

/// How a RUN for some platform executes here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Execution {
    Native,
    Emulated(Emulator),
}

/// How RUN for `wanted` can execute on this machine, or why it cannot
/// (naming the platform and what to install).
pub fn execution_for(wanted: &Platform) -> Result<Execution, String> {
    execution_in(&Platform::host(), wanted, Path::new(BINFMT_DIR))
}

/// [`execution_for`] with the host and the binfmt_misc directory given.
pub fn execution_in(
    host: &Platform,
    wanted: &Platform,
    binfmt_dir: &Path,
) -> Result<Execution, String> {
    if runs_natively(host, wanted) {
        return Ok(Execution::Native);
    }
    let entry = ARCHITECTURES
        .iter()
        .find(|(arch, _, _)| *arch == wanted.arch)
        .map(|(_, _, entry)| *entry);
    let why = match entry {
        None => format!(
            "berth knows no emulator for the architecture {:?}",
            wanted.arch
        ),
        Some(name) => match read_emulator(binfmt_dir, name) {
            Ok(emulator) => return Ok(Execution::Emulated(emulator)),
            Err(why) => why,
        },
    };
    Err(format!(
        "cannot run a {wanted} program on this {host} machine: no emulation ({why}). Install an emulator ({EMULATOR_HINT}, which registers qemu with binfmt_misc), or run the commands in a `FROM --platform=$BUILDPLATFORM` stage and cross-compile for $TARGETPLATFORM"
    ))
}

/// Read `binfmt_dir/name`: usable when enabled and its interpreter can be
/// reached (the `F` flag, or the file exists here to be bind-mounted).
fn read_emulator(binfmt_dir: &Path, name: &str) -> Result<Emulator, String> {
    if !binfmt_dir.join("register").exists() && !binfmt_dir.join("status").exists() {
        return Err(format!(
            "binfmt_misc is not mounted at {} (no emulator is registered)",
            binfmt_dir.display()
        ));
    }
    let path = binfmt_dir.join(name);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(_) => {
            // Some installers register e.g. `qemu-aarch64-static`.
            let alt = binfmt_dir.join(format!("{name}-static"));
            fs::read_to_string(&alt).map_err(|_| {
                format!(
                    "no {name} emulator is registered in {}",
                    binfmt_dir.display()
                )
            })?
        }
    };
    parse_entry(name, &text)
}

/// Parse one binfmt_misc entry's text.
pub fn parse_entry(name: &str, text: &str) -> Result<Emulator, String> {
    let mut enabled = false;
    let mut interpreter = None;
    let mut flags = "";
    for line in text.lines() {
        let line = line.trim();
        if line == "enabled" {
            enabled = true;
        } else if let Some(path) = line.strip_prefix("interpreter ") {
            interpreter = Some(PathBuf::from(path.trim()));
        } else if let Some(f) = line.strip_prefix("flags:") {
            flags = f.trim();
        }
    }
    if !enabled {
        return Err(format!("the {name} emulator is registered but disabled"));
    }
    let interpreter =
        interpreter.ok_or_else(|| format!("the {name} binfmt_misc entry names no interpreter"))?;
    let fix_binary = flags.contains('F');
    if !fix_binary && !interpreter.is_file() {
        return Err(format!(
            "the {name} emulator's interpreter {} does not exist (and it is registered without the F flag)",
            interpreter.display()
        ));
    }
    Ok(Emulator {
        name: name.to_string(),
        interpreter,
        fix_binary,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> String {
        normalize(s).map(|p| p.to_string()).unwrap_or_else(|e| e)
    }

    #[test]
    fn platforms_are_normalised_like_containerd() {
        assert_eq!(p("linux/amd64"), "linux/amd64");
        assert_eq!(p("linux/x86_64"), "linux/amd64");
        assert_eq!(p("linux/aarch64"), "linux/arm64");
        assert_eq!(p("linux/arm64/v8"), "linux/arm64");
        assert_eq!(p("linux/arm"), "linux/arm/v7");
        assert_eq!(p("linux/armhf"), "linux/arm/v7");
        assert_eq!(p("linux/arm/v6"), "linux/arm/v6");
        assert_eq!(p("linux/amd64/v3"), "linux/amd64/v3");
        assert_eq!(p("Linux/AMD64"), "linux/amd64");
    }

    #[test]
    fn unsupported_platforms_say_what_is_supported() {
        let e = p("linux/sparc");
        assert!(
            e.contains("unknown architecture \"sparc\"") && e.contains("linux/arm64"),
            "{e}"
        );
        assert!(p("windows/amd64").contains("Linux images only"));
        assert!(p("linux/arm64/v7").contains("v8, v9"));
        assert!(p("linux").contains("OS/ARCH"));
        assert!(p("linux/386/v2").contains("no variants"));
        let list = parse_list("linux/amd64, linux/arm64,linux/amd64").unwrap();
        assert_eq!(
            list.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            ["linux/amd64", "linux/arm64"]
        );
        assert!(parse_list("linux/amd64,,linux/arm64").is_err());
        assert!(parse_list("linux/amd64,linux/sparc").is_err());
    }

    #[test]
    fn one_reference_on_two_platforms_gets_each_platforms_image() {
        use crate::plan::{plan, Base, BaseImage, PlanOptions};
        let text = "FROM --platform=$BUILDPLATFORM img AS build\nARG TARGETARCH\nRUN echo $TARGETARCH\nFROM img\nCOPY --from=build / /\n";
        let mut o = PlanOptions {
            build_platform: Some("linux/amd64".into()),
            target_platform: Some("linux/arm64".into()),
            ..Default::default()
        };
        for (platform, digest) in [("linux/amd64", "sha256:a"), ("linux/arm64", "sha256:b")] {
            o.base_images.insert(
                PlanOptions::image_key("img", platform),
                BaseImage {
                    digest: Some(digest.into()),
                    ..Default::default()
                },
            );
        }
        let p = plan(text, &o).unwrap();
        let digest = |i: usize| match &p.stages[i].base {
            Base::Image { digest, .. } => digest.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            digest(0).as_deref(),
            Some("sha256:a"),
            "the build platform's image"
        );
        assert_eq!(
            digest(1).as_deref(),
            Some("sha256:b"),
            "the target platform's image"
        );
        assert!(!p
            .stages
            .iter()
            .any(|s| s.steps.iter().any(|st| st.provisional)));
        // An unsupported FROM --platform is the Dockerfile's error.
        let e = plan("FROM --platform=linux/sparc img\n", &o).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("Dockerfile:1: FROM: unsupported platform"),
            "{e}"
        );
    }

    #[test]
    fn emulators_are_found_in_binfmt_misc() {
        let amd64 = normalize("linux/amd64").unwrap();
        let arm64 = normalize("linux/arm64").unwrap();
        let dir = tempfile::tempdir().unwrap();
        // Not mounted: no `register`/`status` file.
        let e = execution_in(&amd64, &arm64, dir.path()).unwrap_err();
        assert!(
            e.contains("linux/arm64") && e.contains(EMULATOR_HINT) && e.contains("not mounted"),
            "{e}"
        );
        assert_eq!(
            execution_in(&amd64, &amd64, dir.path()),
            Ok(Execution::Native)
        );
        assert_eq!(
            execution_in(&amd64, &normalize("linux/386").unwrap(), dir.path()),
            Ok(Execution::Native)
        );
        fs::write(dir.path().join("status"), "enabled\n").unwrap();
        let e = execution_in(&amd64, &arm64, dir.path()).unwrap_err();
        assert!(e.contains("no qemu-aarch64 emulator"), "{e}");
        // With the F flag the interpreter need not exist here.
        fs::write(
            dir.path().join("qemu-aarch64"),
            "enabled\ninterpreter /nonexistent/qemu-aarch64-static\nflags: OCF\noffset 0\nmagic 7f454c46\n",
        )
        .unwrap();
        assert_eq!(
            execution_in(&amd64, &arm64, dir.path()),
            Ok(Execution::Emulated(Emulator {
                name: "qemu-aarch64".into(),
                interpreter: "/nonexistent/qemu-aarch64-static".into(),
                fix_binary: true,
            }))
        );
        // Without it, the interpreter must exist (it is bind-mounted in).
        fs::write(
            dir.path().join("qemu-aarch64"),
            "enabled\ninterpreter /nonexistent/qemu-aarch64-static\nflags: \n",
        )
        .unwrap();
        let e = execution_in(&amd64, &arm64, dir.path()).unwrap_err();
        assert!(e.contains("does not exist"), "{e}");
        let interp = dir.path().join("qemu-aarch64-static");
        fs::write(&interp, "").unwrap();
        fs::write(
            dir.path().join("qemu-aarch64"),
            format!("enabled\ninterpreter {}\nflags: \n", interp.display()),
        )
        .unwrap();
        assert!(matches!(
            execution_in(&amd64, &arm64, dir.path()),
            Ok(Execution::Emulated(Emulator {
                fix_binary: false,
                ..
            }))
        ));
        fs::write(
            dir.path().join("qemu-aarch64"),
            "disabled\ninterpreter /x\nflags: F\n",
        )
        .unwrap();
        assert!(execution_in(&amd64, &arm64, dir.path())
            .unwrap_err()
            .contains("disabled"));
        let e = execution_in(&amd64, &normalize("linux/s390x").unwrap(), dir.path()).unwrap_err();
        assert!(
            e.contains("no qemu-s390x emulator") && e.contains("linux/s390x"),
            "{e}"
        );
    }
}
