//! The examples at the end of each subcommand's `--help` (clap's after_help),
//! kept in one table so the argument structs stay about arguments. Commands
//! that define their own (images, rmi, catalog, completion, login) are not here.

use clap::Command;

const EXAMPLES: &[(&str, &str)] = &[
    ("serve", "berth serve --addr 127.0.0.1:5000 --storage /srv/berth\n  berth serve --addr :5000 --htpasswd /etc/berth/htpasswd\n  berth serve --storage s3://bucket/registry --s3-endpoint https://minio.example.com"),
    ("gc", "berth gc --storage /srv/berth --dry-run\n  berth gc --storage /srv/berth --grace 30m"),
    ("usage", "berth usage --storage /srv/berth\n  berth usage --storage /srv/berth --config /etc/berth/berth.toml --json"),
    ("retention", "berth retention --config /etc/berth/berth.toml --dry-run\n  berth retention --config /etc/berth/berth.toml --json"),
    ("push", "berth push 127.0.0.1:5000/app:1            (from the local store)\n  berth push app:1 127.0.0.1:5000/team/app:1\n  berth push --all-tags 127.0.0.1:5000/app"),
    ("pull", "berth pull 127.0.0.1:5000/app:1\n  berth pull -a 127.0.0.1:5000/app\n  berth pull --platform linux/arm64 busybox oci:./busybox-arm64"),
    ("copy", "berth copy 127.0.0.1:5000/app:1 docker-archive:app.tar:app:1\n  berth copy oci:./layout:v1 registry.example.com/app:v1\n  berth copy --src-creds u:p --dest-creds v:q reg-a.example.com/app:1 reg-b.example.com/app:1"),
    ("import", "berth import rootfs.tar base:1                 (into the local store)\n  berth import -c 'CMD [\"/bin/sh\"]' rootfs.tar.gz 127.0.0.1:5000/base:1\n  tar -C rootfs -c . | berth import - base:1"),
    ("tag", "berth tag app:1 127.0.0.1:5000/app:1          (local, then `berth push`)\n  berth tag 127.0.0.1:5000/app:1 127.0.0.1:5000/app:stable   (on the registry)"),
    ("inspect", "berth inspect app:1\n  berth inspect --config 127.0.0.1:5000/app:1\n  berth inspect --raw docker-archive:app.tar"),
    ("ls", "berth ls 127.0.0.1:5000/app         (its tags)\n  berth ls 127.0.0.1:5000             (its repositories)\n  berth ls local:"),
    ("rm", "berth rm 127.0.0.1:5000/app:1\n  berth rm 127.0.0.1:5000/app@sha256:...\n  berth rm local:app:1"),
    ("logout", "berth logout 127.0.0.1:5000"),
    ("build", "berth build -t app:1 .\n  berth build -t 127.0.0.1:5000/app:1 --push -f docker/Dockerfile .\n  berth build --dry-run --target test ."),
    ("deploy", "berth deploy -i examples/origin/production examples/origin/app.yml --check\n  berth deploy -i inventory.ini app.yml -l web --connect-timeout 5\n  berth deploy -i testing/inventory compose.yaml -e image_tag=v2"),
    ("rollback", "berth rollback -i inventory.ini app.yml"),
    ("inventory", "berth inventory -i inventory.ini --list\n  berth inventory -i inventory.ini --graph web"),
    ("ship", "berth ship -i inventory.ini app.yml --json\n  berth ship -i inventory.ini compose.yaml"),
    ("down", "berth down -i inventory.ini app.yml --check\n  berth down -i inventory.ini compose.yaml --volumes\n  berth down -i inventory.ini myapp            (by the app's name)"),
    ("swarm", "berth swarm init -i inventory.ini          (group managers inits, the others join)"),
];

/// `command` with the examples of each subcommand it has.
pub fn with_examples(mut command: Command) -> Command {
    for (name, text) in EXAMPLES {
        if command.find_subcommand(name).is_some() {
            let help = format!("Examples:\n  {text}");
            command = command.mut_subcommand(name, |c| c.after_help(help));
        }
    }
    command
}

/// Parse the command line with the examples in place (for `--help`).
pub fn parse() -> crate::Cli {
    use clap::{CommandFactory, FromArgMatches};
    let matches = with_examples(crate::Cli::command()).get_matches();
    crate::Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every subcommand of the list shows examples (a renamed one would lose them).
    #[test]
    fn subcommands_have_examples() {
        let command = with_examples(crate::Cli::command());
        for name in [
            "serve",
            "gc",
            "push",
            "pull",
            "copy",
            "import",
            "tag",
            "inspect",
            "ls",
            "rm",
            "login",
            "logout",
            "build",
            "images",
            "rmi",
            "catalog",
            "completion",
            "deploy",
            "rollback",
            "inventory",
            "ship",
            "down",
            "swarm",
        ] {
            let sub = command
                .find_subcommand(name)
                .unwrap_or_else(|| panic!("no subcommand {name}"));
            let help = sub
                .get_after_help()
                .map(|h| h.to_string())
                .unwrap_or_default();
            assert!(
                help.contains("Examples:") && help.contains("berth "),
                "{name}: {help:?}"
            );
        }
    }
}
