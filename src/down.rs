//! `berth down APP -i INV`: removes what deploys of an app made (see `berth_deploy::down`).

use anyhow::{Context, Result};
use berth_deploy::AppSource;
use clap::Args;

use crate::deploy::{finish, load_inventory, options, CommonArgs, Printer};

#[derive(Args, Debug)]
pub struct DownArgs {
    /// `APP` is the app's name, or its app file (as for deploy), whose name is used
    #[command(flatten)]
    common: CommonArgs,
    /// Also remove the app's named volumes, and with them its data
    #[arg(long)]
    volumes: bool,
    /// Print the plan, change nothing
    #[arg(long)]
    check: bool,
    /// Push no deployment record saying the app's images were removed from its hosts
    #[arg(long)]
    no_record: bool,
}

pub fn down(args: DownArgs) -> Result<()> {
    let common = &args.common;
    // An existing file is an app file; anything else is the app's name.
    let app = if common.app.is_file() {
        AppSource::load(&common.app)?.name
    } else {
        common.app.to_string_lossy().into_owned()
    };
    let inventory = load_inventory(common)?;
    let hosts = berth_deploy::down::empty_hosts(&app, &inventory, common.limit.as_deref())?;
    if hosts.is_empty() {
        anyhow::bail!("no hosts selected from {}", common.inventory.display());
    }
    let mut options = options(common);
    options.check = args.check;
    let printer = Printer::new(common.json);
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let report = runtime.block_on(berth_deploy::down::down(
        &app,
        hosts,
        args.volumes,
        &options,
        &|event| printer.event(event),
    ));
    if !args.check && !args.no_record {
        // Only images whose registry digest the hosts knew; the stored login pushes them.
        let registry = crate::session::client_config(&[], None, None)?;
        let facts = crate::deploy_record::facts(&app, &common.inventory);
        let records = berth_deploy::record::container_records(
            &facts,
            &std::collections::BTreeMap::new(),
            &report,
        );
        crate::deploy_record::push(&runtime, &registry, records, &printer);
    }
    finish(&printer, &report, "down", None)
}
