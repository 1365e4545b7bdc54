//! `berth man`: man pages from the clap definitions, so they never drift from `--help`.
//! Written when asked rather than at build time: a build script would need the CLI
//! definitions in a library of their own, and the pages are the same either way.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{CommandFactory, Parser};

#[derive(Parser, Debug)]
#[command(after_help = "Examples:
  berth man --dir /usr/local/share/man/man1 && man berth-build
  berth man | man -l -")]
pub struct ManArgs {
    /// Write berth.1 and berth-SUBCOMMAND.1 into this folder (created);
    /// without it, berth.1 goes to stdout
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

pub fn man<C: CommandFactory>(args: ManArgs) -> anyhow::Result<()> {
    let command = C::command().name("berth");
    match &args.dir {
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(command).render(&mut page)?;
            match std::io::Write::write_all(&mut std::io::stdout(), &page) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
                _ => Ok(()),
            }
        }
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let written = write_pages(&command, "berth", dir)?;
            eprintln!("wrote {written} man pages to {}", dir.display());
            Ok(())
        }
    }
}

/// `name.1` for `command`, then its subcommands' pages as `name-SUB.1`.
fn write_pages(command: &clap::Command, name: &str, dir: &Path) -> anyhow::Result<usize> {
    // clap names a page by its command: give subcommands their `berth-SUB` name (leaked:
    // without clap's `string` feature a name is a &'static str; a few bytes, once).
    let page_command = command.clone().name(clap::builder::Str::from(
        name.to_string().leak() as &'static str
    ));
    let path = dir.join(format!("{name}.1"));
    let mut page = Vec::new();
    clap_mangen::Man::new(page_command).render(&mut page)?;
    std::fs::write(&path, page).with_context(|| format!("cannot write {}", path.display()))?;
    let mut written = 1;
    for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
        written += write_pages(sub, &format!("{name}-{}", sub.get_name()), dir)?;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_per_subcommand_with_its_options() {
        let dir = tempfile::tempdir().expect("tempdir");
        let written = write_pages(&crate::Cli::command(), "berth", dir.path()).expect("pages");
        assert!(written > 20, "{written}");
        let build =
            std::fs::read_to_string(dir.path().join("berth-build.1")).expect("berth-build.1");
        assert!(build.starts_with(".ie") || build.contains(".TH"), "{build}");
        assert!(build.contains("progress"), "{build}");
        assert!(dir.path().join("berth-swarm-init.1").exists());
    }
}
