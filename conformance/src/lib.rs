//! `berth-conformance`: spec-derived conformance checks for the OCI
//! distribution-spec v1.1, runnable against any registry URL.
//!
//! Every check is self-contained: it pushes what it needs into repositories
//! whose names start with a per-run unique prefix (`<namespace>/run-<random>`),
//! so checks can be filtered with [`Options::only`] and reruns never collide.
//! A check that gets an unexpected response fails with a detail message
//! (request, status, body excerpt); it never aborts the run.

/// Fails the current check, like `anyhow::bail!`, with an error that
/// remembers this line (see [`http::Failure`]). Defined before the modules so
/// that every module sees it (textual scope) instead of anyhow's.
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err(failed!($($arg)*))
    };
}

/// The error [`bail!`] returns, for `ok_or_else` and friends.
macro_rules! failed {
    ($($arg:tt)*) => {
        $crate::http::Failure::error(
            (file!(), line!()),
            (file!(), line!()),
            "check",
            format!($($arg)*),
        )
    };
}

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
    /// Run only the checks whose id contains this substring; `=<id>[,<id>...]`
    /// runs exactly the checks with these ids.
    pub only: Option<String>,
    /// User name and password, for registries with auth on.
    pub credentials: Option<(String, String)>,
    /// Also run the checks of features after v1.1 (level NEXT), with the registry's
    /// options for them on; skips the v1.1 checks those options contradict.
    pub next: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            url: "http://127.0.0.1:5000".to_string(),
            namespace: "conformance/test".to_string(),
            only: None,
            credentials: None,
            next: false,
        }
    }
}

/// The outcome of one check.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CheckResult {
    pub id: String,
    pub passed: bool,
    pub detail: String,
    /// For a failed check: the source line of the assertion that failed
    /// (e.g. `conformance/src/checks/push.rs:123`), when it was an assertion
    /// rather than, say, a connection error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// Test support: the failed assertion in detail.
    #[doc(hidden)]
    #[serde(skip)]
    pub assertion: Option<Assertion>,
}

/// Where a failed check asserted: `site` is the line in a check (or fixture
/// helper) that asserted, `line` the failing test itself (a `bail!` in a check,
/// or a line inside a response helper such as `expect_error_body`), `kind` one
/// of `status`, `header`, `body`, `json`, `error-body`, `link`, `check`.
#[doc(hidden)]
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Assertion {
    pub site: String,
    pub line: String,
    pub kind: &'static str,
}

/// Does `only` (from [`Options::only`]) select the check `id`? A substring of
/// the id, or `=<id>[,<id>...]` for exactly these checks.
pub fn selects(only: &str, id: &str) -> bool {
    match only.strip_prefix('=') {
        Some(exact) => exact.split(',').any(|e| e.trim() == id),
        None => id.contains(only),
    }
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
                site: None,
                assertion: None,
            };
            on_result(&r);
            report.results.push(r);
            return report;
        }
    };
    for check in checks::all() {
        let skip = if opts.next {
            checks::CONTRADICTED_BY_NEXT.contains(&check.id)
        } else {
            check.level == checks::Level::Next
        };
        if skip {
            continue;
        }
        if let Some(only) = &opts.only {
            if !selects(only, check.id) {
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
    let mut assertion = None;
    let (passed, detail) = match handle.await {
        Ok(Ok(Ok(detail))) => (true, detail),
        Ok(Ok(Err(e))) => {
            assertion = e
                .chain()
                .find_map(|c| c.downcast_ref::<http::Failure>())
                .map(|f| Assertion {
                    site: format!("{}:{}", f.site.0, f.site.1),
                    line: format!("{}:{}", f.assertion.0, f.assertion.1),
                    kind: f.kind,
                });
            (false, format!("{e:#}"))
        }
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
        site: assertion.as_ref().map(|a| a.site.clone()),
        assertion,
    }
}

pub(crate) type BoxFut<'a> = Pin<Box<dyn Future<Output = anyhow::Result<String>> + Send + 'a>>;
