//! `berth-conformance --url http://127.0.0.1:5000`: runs the OCI
//! distribution-spec conformance checks and prints one line per check, then
//! `N passed, N failed`. Exits 1 when any check fails.

use berth_conformance::{list, run_with, Options};
use clap::Parser;
use std::io::Write;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "berth-conformance",
    about = "OCI distribution-spec v1.1 conformance checks, runnable against any registry URL"
)]
struct Args {
    /// Registry base URL, e.g. http://127.0.0.1:5000
    #[arg(long, env = "CONFORMANCE_URL", required_unless_present = "list")]
    url: Option<String>,
    /// Repository namespace; a unique run-<random> component is appended
    #[arg(long, default_value = "conformance/test")]
    namespace: String,
    /// Print one JSON document (results and counts) on stdout instead of lines;
    /// the summary line then goes to stderr
    #[arg(long)]
    json: bool,
    /// Run only the checks whose id contains this substring (`=ID[,ID...]`: exactly these checks)
    #[arg(long)]
    only: Option<String>,
    /// List the checks (id, level, description) and exit
    #[arg(long)]
    list: bool,
    /// User name for registries with auth on (Basic or token flow)
    #[arg(long, env = "OCI_USERNAME", requires = "password")]
    username: Option<String>,
    /// Password for --username
    #[arg(long, env = "OCI_PASSWORD", requires = "username")]
    password: Option<String>,
    /// Also check the features after v1.1 (several tags per manifest PUT, sparse indexes,
    /// digests on every GET/HEAD); the registry must have its options for them on
    #[arg(long)]
    next: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if args.list {
        for c in list() {
            println!("{:<50} {:<6} {}", c.id, c.level.as_str(), c.about);
        }
        return ExitCode::SUCCESS;
    }
    let opts = Options {
        url: args.url.unwrap_or_default(),
        namespace: args.namespace,
        only: args.only,
        credentials: args.username.zip(args.password),
        next: args.next,
    };
    let json = args.json;
    let report = run_with(&opts, |r| {
        if !json {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(
                out,
                "{} {} - {}",
                if r.passed { "PASS" } else { "FAIL" },
                r.id,
                r.detail
            );
            let _ = out.flush();
        }
    })
    .await;
    let failed = report.results.len() - report.passed_count();
    if json {
        let doc = serde_json::json!({
            "url": opts.url,
            "results": report.results,
            "passed": report.passed_count(),
            "failed": failed,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
        );
        eprintln!("{}", report.summary());
    } else {
        println!("{}", report.summary());
    }
    if report.results.is_empty() {
        eprintln!("no check matched --only");
        return ExitCode::from(2);
    }
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
