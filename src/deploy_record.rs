//! Pushing the deployment records of a finished `berth deploy`, `ship` or `down` (see
//! `berth_deploy::record`): after the hosts are done, every image at once; a record that
//! cannot be pushed is a warning on stderr, never a failed deploy.

use std::path::Path;

use berth_client::registry::ClientConfig;
use berth_deploy::record::{self, Pending, RunFacts};

use crate::deploy::Printer;

/// What every record of this run shares.
pub(crate) fn facts(app: &str, inventory: &Path) -> RunFacts {
    RunFacts {
        app: app.to_string(),
        inventory: record::inventory_name(inventory),
        time: record::now(),
        berth_version: env!("CARGO_PKG_VERSION").to_string(),
        local_user: record::local_user(),
    }
}

/// Pushes `records` and says what became of each.
pub(crate) fn push(
    runtime: &tokio::runtime::Runtime,
    config: &ClientConfig,
    records: Vec<Pending>,
    printer: &Printer,
) {
    if records.is_empty() {
        return;
    }
    for outcome in runtime.block_on(record::push_all(config, records)) {
        match outcome {
            Ok(line) => printer.line(&line),
            Err(warning) => eprintln!("{warning}"),
        }
    }
}
