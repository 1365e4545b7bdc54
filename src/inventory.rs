//! `berth inventory`: prints what Berth read from an inventory (with `-e` on top), in
//! `ansible-inventory`'s shapes, so users can check hosts, groups and variable precedence.
//! The reading is deploy's own (`Inventory::load_with_extra_vars`, `extra_vars::parse_all`).

use std::path::PathBuf;

use anyhow::{bail, Result};
use berth_deploy::Inventory;
use clap::{ArgGroup, Args};

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("action").required(true).args(["list", "host", "graph"])))]
pub(crate) struct InventoryArgs {
    /// Inventory: an Ansible hosts file (YAML or INI) or a directory of them, with
    /// group_vars/ and host_vars/ beside it
    #[arg(long, short = 'i')]
    inventory: PathBuf,
    /// Extra variables over every host's (highest precedence), as ansible-playbook -e:
    /// KEY=VALUE pairs, @FILE (YAML or JSON), or an inline JSON/YAML mapping; repeatable,
    /// later ones win
    #[arg(long = "extra-vars", short = 'e', value_name = "VARS")]
    extra_vars: Vec<String>,
    /// Every group and host, with each host's merged variables (`ansible-inventory --list` JSON)
    #[arg(long)]
    list: bool,
    /// One host's merged variables as JSON
    #[arg(long, value_name = "NAME")]
    host: Option<String>,
    /// The group tree from GROUP (default all), as `ansible-inventory --graph` draws it
    #[arg(long, value_name = "GROUP", num_args = 0..=1, default_missing_value = "all")]
    graph: Option<String>,
}

pub(crate) fn inventory(args: InventoryArgs) -> Result<()> {
    let extra = berth_deploy::inventory::extra_vars::parse_all(&args.extra_vars)?;
    let inventory = Inventory::load_with_extra_vars(&args.inventory, &extra)?;
    for warning in &inventory.warnings {
        eprintln!("berth: warning: {warning}");
    }
    if let Some(group) = &args.graph {
        match inventory.ansible_graph(Some(group)) {
            Some(graph) => print!("{graph}"),
            None => bail!(
                "{}: no group {group:?} in this inventory",
                args.inventory.display()
            ),
        }
    } else if let Some(host) = &args.host {
        match inventory.ansible_host(host) {
            Some(vars) => println!("{}", serde_json::to_string_pretty(&vars)?),
            None => bail!(
                "{}: no host {host:?} in this inventory",
                args.inventory.display()
            ),
        }
    } else {
        println!(
            "{}",
            serde_json::to_string_pretty(&inventory.ansible_list())?
        );
    }
    Ok(())
}
