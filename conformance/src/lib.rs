//! `berth-conformance`: spec-derived conformance checks for the OCI
//! distribution-spec v1.1, runnable against any registry URL.
//!
//! Every check is self-contained: it pushes what it needs into repositories
//! whose names start with a per-run unique prefix (`<namespace>/run-<random>`),
//! so checks can be filtered with [`Options::only`] and reruns never collide.
//! A check that gets an unexpected response fails with a detail message
//! (request, status, body excerpt); it never aborts the run.

mod checks;
mod http;
mod util;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub use checks::Level;

/// What to run and against which registry.
#[derive(Clone, Debug)]
pub struct Options {
    /// Base URL of the registry, e.g. `http://127.0.0.1:5000`.
    pub url: String,
    /// Repository namespace; a unique `run-<random>` component is appended per run.
    pub namespace: String,
    /// Run only the checks whose id contains this substring.
    pub only: Option<String>,
    /// User name and password, for registries with auth on.
    pub credentials: Option<(String, String)>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            url: "http://127.0.0.1:5000".to_string(),
            namespace: "conformance/test".to_string(),
            only: None,
            credentials: None,
        }
    }
}

/// The outcome of one check.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CheckResult {
    pub id: String,
    pub passed: bool,
    pub detail: String,
}

/// The outcomes of a run, in check order.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Report {
    pub results: Vec<CheckResult>,
}

impl Report {
    pub fn failed(&self) -> Vec<&CheckResult> {
        self.results.iter().filter(|r| !r.passed).collect()
    }

    pub fn passed_count(&self) -> usize {
        self.results.iter().filter(|r| r.passed).count()
    }

    /// The summary line: `N passed, N failed`.
    pub fn summary(&self) -> String {
        format!(
            "{} passed, {} failed",
            self.passed_count(),
            self.results.len() - self.passed_count()
        )
    }
}

/// Description of a check, for listings.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CheckInfo {
    pub id: &'static str,
    pub level: Level,
    pub about: &'static str,
}

/// All checks, in run order.
pub fn list() -> Vec<CheckInfo> {
    checks::all()
        .into_iter()
        .map(|c| CheckInfo {
            id: c.id,
            level: c.level,
            about: c.about,
        })
        .collect()
}

/// Runs the selected checks and returns their results.
pub async fn run(opts: &Options) -> Report {
    run_with(opts, |_| {}).await
}

/// Like [`run`], calling `on_result` as each check finishes (for live output).
pub async fn run_with<F: FnMut(&CheckResult)>(opts: &Options, mut on_result: F) -> Report {
    let mut report = Report::default();
    let ctx = match http::Ctx::new(&opts.url, &opts.namespace, opts.credentials.clone()) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            let r = CheckResult {
                id: "setup".to_string(),
                passed: false,
                detail: format!("{e:#}"),
            };
            on_result(&r);
            report.results.push(r);
            return report;
        }
    };
    for check in checks::all() {
        if let Some(only) = &opts.only {
            if !check.id.contains(only.as_str()) {
                continue;
            }
        }
        let result = run_one(&ctx, &check).await;
        on_result(&result);
        report.results.push(result);
    }
    report
}

async fn run_one(ctx: &Arc<http::Ctx>, check: &checks::Check) -> CheckResult {
    let ctx2 = Arc::clone(ctx);
    let f = check.run;
    // A task of its own, so that a panic fails this check only.
    let handle =
        tokio::spawn(async move { tokio::time::timeout(Duration::from_secs(180), f(&ctx2)).await });
    let (passed, detail) = match handle.await {
        Ok(Ok(Ok(detail))) => (true, detail),
        Ok(Ok(Err(e))) => (false, format!("{e:#}")),
        Ok(Err(_)) => (false, "timed out after 180 s".to_string()),
        Err(e) => (false, format!("check panicked: {e}")),
    };
    let detail = if check.level == Level::Must {
        detail
    } else {
        format!("[{}] {}", check.level.as_str(), detail)
    };
    CheckResult {
        id: check.id.to_string(),
        passed,
        detail,
    }
}

pub(crate) type BoxFut<'a> = Pin<Box<dyn Future<Output = anyhow::Result<String>> + Send + 'a>>;
