//! `berth build`: for now, the plan only (`--dry-run`). Reading files and
//! printing live here; the Dockerfile logic is in `berth-builder`.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use berth_builder::{DockerIgnore, PlanOptions};
use clap::Parser;

#[derive(Parser, Debug)]
pub struct BuildArgs {
    /// The build context: a directory
    context: PathBuf,
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
    /// Build for OS/ARCH[/VARIANT] [default: this machine's]
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    platform: Option<String>,
    /// Print the plan (stages, steps, cache keys) and stop; nothing runs
    #[arg(long)]
    dry_run: bool,
    /// Print the plan as JSON
    #[arg(long)]
    json: bool,
}

pub fn build(args: BuildArgs) -> Result<()> {
    if !args.context.is_dir() {
        bail!(
            "the build context {} is not a directory: give the folder with your sources, e.g. `berth build --dry-run .`",
            args.context.display()
        );
    }
    let (dockerfile_name, text) = read_dockerfile(&args)?;
    let ignore = read_dockerignore(&args, &dockerfile_name)?;

    if let Some(platform) = &args.platform {
        if platform.contains(',') {
            bail!("--platform {platform}: one platform at a time for now (multi-platform builds are not implemented yet)");
        }
    }
    let options = PlanOptions {
        build_args: build_args(&args.build_args)?,
        target: args.target.clone(),
        target_platform: args.platform.clone(),
        build_platform: None,
        base_images: BTreeMap::new(),
    };
    let plan = berth_builder::plan(&text, &options)
        .map_err(|e| anyhow::anyhow!("{}", e.in_file(&dockerfile_name)))?;

    if !args.dry_run {
        // Everything above is checked first, so a broken Dockerfile still
        // gets its real error.
        bail!(
            "building is not implemented yet: `berth build` can only plan so far; add --dry-run to print the plan"
        );
    }
    if args.json {
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
        match &ignore {
            Some((path, rules)) => println!(
                "context: {} ({} rules from {})",
                args.context.display(),
                rules.rules().len(),
                path.display()
            ),
            None => println!("context: {} (no .dockerignore)", args.context.display()),
        }
        print!("{plan}");
    }
    Ok(())
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
            let path = args.context.join("Dockerfile");
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
    candidates.push(args.context.join(".dockerignore"));
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
