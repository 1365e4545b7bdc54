//! `berth swarm init -i INV`: one Swarm of the inventory's `managers` and `workers` (see
//! `berth_deploy::swarm::init`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use berth_deploy::Inventory;
use clap::{Args, Subcommand};

#[derive(Args, Debug)]
pub struct SwarmArgs {
    #[command(subcommand)]
    command: SwarmCommand,
}

#[derive(Subcommand, Debug)]
enum SwarmCommand {
    /// Init a swarm on the first host of group `managers` (advertising its ansible_host),
    /// join the other managers and the `workers`, set node labels from `swarm_labels`
    Init(InitArgs),
}

#[derive(Args, Debug)]
struct InitArgs {
    /// Inventory: an Ansible hosts file (YAML or INI) or a directory of them
    #[arg(long, short = 'i')]
    inventory: PathBuf,
    /// Extra variables over every host's (highest precedence), as ansible-playbook -e
    #[arg(long = "extra-vars", short = 'e', value_name = "VARS")]
    extra_vars: Vec<String>,
    /// Print the result as one JSON document on stdout
    #[arg(long)]
    json: bool,
    /// Seconds a host may take to answer before it counts as unreachable
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    connect_timeout: Duration,
}

pub fn swarm(args: SwarmArgs) -> Result<()> {
    match args.command {
        SwarmCommand::Init(args) => init(args),
    }
}

fn init(args: InitArgs) -> Result<()> {
    let extra = berth_deploy::inventory::extra_vars::parse_all(&args.extra_vars)?;
    let inventory = Inventory::load_with_extra_vars(&args.inventory, &extra)?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let report = match runtime.block_on(berth_deploy::swarm::init::init(
        &inventory,
        args.connect_timeout,
    )) {
        Ok(report) => report,
        Err(refusal) => bail!("swarm init: {refusal}"),
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("cannot format the report")?
        );
    } else {
        print!("{}", report.render());
    }
    if !report.succeeded() {
        let failed: Vec<&str> = report
            .hosts
            .iter()
            .filter(|h| h.error.is_some())
            .map(|h| h.host.as_str())
            .collect();
        bail!("swarm init failed on {}", failed.join(", "));
    }
    Ok(())
}
