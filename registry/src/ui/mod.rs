//! The web UI: server-rendered pages under `/ui/` over the same storage and
//! access rules as the API. A page shows a repository only to someone the
//! rules let pull it; delete is offered (and done) only for those they let
//! delete, after a confirmation, with a CSRF token. See docs/ui.md.

mod cache;
mod deployments;
mod pages;
mod records;
mod session;
mod summary;

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use berth_auth::acl::Identity;
use berth_auth::scope::Actions;
use berth_oci::names::{is_valid_repository_name, is_valid_tag};
use berth_storage::Digest;
use maud::Markup;

use crate::error::{Code, RegistryError};
use crate::Registry;
use pages::{Chrome, Referrers};
pub use records::write_summaries;
use session::{Session, Sessions, CSRF_COOKIE, SESSION_COOKIE};
use summary::SummaryCache;

/// Repositories per catalog page.
const PAGE_SIZE: usize = 50;
/// Largest form read (login, delete).
const FORM_LIMIT: usize = 16 * 1024;
/// Storage reads a page makes at once (per repository, and across repositories).
const CONCURRENT_READS: usize = 8;
/// Longest catalog filter used.
const MAX_FILTER: usize = 200;

const STYLE: &str = include_str!("style.css");
const SCRIPT: &str = include_str!("copy.js");
const CSP: &str = "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; \
                   form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// How the UI behaves (the `[ui]` config table).
#[derive(Clone, Debug)]
pub struct UiOptions {
    /// Without logins, offer delete to everyone (otherwise the UI is read-only then).
    pub allow_delete: bool,
    /// How long a login lasts.
    pub session_lifetime: Duration,
    /// The server speaks HTTPS: cookies get `Secure`.
    pub tls: bool,
}

impl Default for UiOptions {
    fn default() -> Self {
        UiOptions {
            allow_delete: false,
            session_lifetime: Duration::from_secs(8 * 3600),
            tls: false,
        }
    }
}

pub(crate) struct Ui {
    options: UiOptions,
    sessions: Sessions,
    cache: SummaryCache,
    catalog: cache::CatalogCache,
    refresher: records::Refresher,
}

impl Ui {
    pub(crate) fn new(options: UiOptions) -> Ui {
        Ui {
            sessions: Sessions::new(options.session_lifetime),
            options,
            cache: SummaryCache::default(),
            catalog: cache::CatalogCache::default(),
            refresher: records::Refresher::default(),
        }
    }
}

/// The UI's routes, and `/` sending browsers to them.
pub(crate) fn routes(router: Router<Registry>) -> Router<Registry> {
    router
        .route("/", get(root))
        .route("/ui", get(|| async { see_other("/ui/") }))
        .route("/ui/", any(handle))
        .route("/ui/{*rest}", any(handle))
}

/// `/`: a browser (asking for HTML) goes to the UI; anything else gets the
/// API's answer for an unknown path.
async fn root(headers: HeaderMap) -> Response {
    let wants_html = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"));
    if wants_html {
        see_other("/ui/")
    } else {
        RegistryError::not_found(
            Code::Unsupported,
            "not a registry API path: the API lives under /v2/, the web UI under /ui/",
        )
        .into_response()
    }
}

/// Who is looking, and the CSRF token their forms carry.
struct Viewer {
    identity: Identity,
    session_id: Option<String>,
    csrf: String,
    /// The CSRF cookie is new: send it with the answer.
    set_csrf_cookie: bool,
}

fn viewer(ui: &Ui, headers: &HeaderMap) -> Viewer {
    let session = session::cookie(headers, SESSION_COOKIE)
        .and_then(|id| ui.sessions.get(id).map(|s| (id.to_string(), s)));
    if let Some((id, Session { user, csrf, .. })) = session {
        return Viewer {
            identity: Identity::User(user),
            session_id: Some(id),
            csrf,
            set_csrf_cookie: false,
        };
    }
    let (csrf, set_csrf_cookie) = match session::cookie(headers, CSRF_COOKIE) {
        Some(token) if token.len() == 64 => (token.to_string(), false),
        _ => (session::random_token(), true),
    };
    Viewer {
        identity: Identity::Anonymous,
        session_id: None,
        csrf,
        set_csrf_cookie,
    }
}

/// One request's context.
struct Ctx<'a> {
    reg: &'a Registry,
    ui: &'a Ui,
    viewer: &'a Viewer,
    query: Option<&'a str>,
    headers: &'a HeaderMap,
    path: &'a str,
}

impl Ctx<'_> {
    fn param(&self, key: &str) -> Option<String> {
        crate::http::query_param(self.query, key)
    }

    /// What the viewer may do on `repository`: the access rules, or without
    /// logins pull for everyone and delete only with `[ui] allow_delete`.
    fn rights(&self, repository: &str) -> Actions {
        match &self.reg.access {
            Some(access) => access.rule_actions(&self.viewer.identity, repository),
            None if self.ui.options.allow_delete => Actions::PULL.union(Actions::DELETE),
            None => Actions::PULL,
        }
    }

    fn can_login(&self) -> bool {
        self.reg.access.as_ref().is_some_and(|a| a.has_accounts())
    }

    fn render(&self, status: StatusCode, title: &str, body: Markup) -> Response {
        let chrome = Chrome {
            title,
            user: match &self.viewer.identity {
                Identity::User(u) => Some(u.as_str()),
                Identity::Anonymous => None,
            },
            csrf: &self.viewer.csrf,
            can_login: self.can_login(),
            here: self.path,
        };
        let html = pages::layout(&chrome, body).into_string();
        let mut r = (status, html).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        r
    }

    fn message(&self, status: StatusCode, title: &str, text: &str) -> Response {
        self.render(status, title, pages::message(title, text))
    }

    fn not_found(&self) -> Response {
        self.message(
            StatusCode::NOT_FOUND,
            "Not found",
            "There is nothing here, or you may not see it.",
        )
    }

    /// The registry's address as the browser used it, for pull commands.
    fn host(&self) -> &str {
        self.headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| {
                !h.is_empty()
                    && h.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
            })
            .unwrap_or("localhost")
    }
}

async fn handle(State(reg): State<Registry>, request: Request) -> Response {
    let Some(ui) = reg.ui.clone() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let (parts, body) = request.into_parts();
    let client = crate::client_addr(&parts.extensions);
    let path = parts.uri.path();
    let rest = path.strip_prefix("/ui/").unwrap_or("");
    let viewer = viewer(&ui, &parts.headers);
    let ctx = Ctx {
        reg: &reg,
        ui: &ui,
        viewer: &viewer,
        query: parts.uri.query(),
        headers: &parts.headers,
        path,
    };
    // HEAD is a GET whose body the server leaves out.
    let m = if parts.method == Method::HEAD {
        &Method::GET
    } else {
        &parts.method
    };
    let limited = reg.rate_limit.as_ref().and_then(|l| l.check(client).err());
    let mut response = match (m, rest) {
        // The same per-client budget as the API ([limits] rate), answered as a page.
        _ if limited.is_some() => too_many(&ctx, limited),
        (&Method::GET, "") => catalog(&ctx).await,
        (&Method::GET, "static/style.css") => asset("text/css; charset=utf-8", STYLE),
        (&Method::GET, "static/copy.js") => asset("text/javascript; charset=utf-8", SCRIPT),
        (&Method::GET, "login") => login_form(&ctx, None, StatusCode::OK),
        (&Method::POST, "login") => login(&ctx, body, client).await,
        (&Method::POST, "logout") => logout(&ctx, body).await,
        (_, r) if r.starts_with("r/") => match parse_path(&r[2..]) {
            Some(route) => repository_routes(&ctx, m, route, body).await,
            None => ctx.not_found(),
        },
        (&Method::GET, _) => ctx.not_found(),
        _ => ctx.message(
            StatusCode::METHOD_NOT_ALLOWED,
            "Not allowed",
            "This page does not take that request.",
        ),
    };
    let h = response.headers_mut();
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    if viewer.set_csrf_cookie {
        let cookie = session::set_cookie(
            CSRF_COOKIE,
            &viewer.csrf,
            Some(Duration::from_secs(7 * 24 * 3600)),
            ui.options.tls,
        );
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            response.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    response
}

/// 429 with the limiter's `Retry-After`, as a page rather than the API's JSON.
fn too_many(ctx: &Ctx<'_>, limited: Option<RegistryError>) -> Response {
    let retry = limited
        .map(IntoResponse::into_response)
        .and_then(|r| r.headers().get(header::RETRY_AFTER).cloned());
    let mut page = ctx.message(
        StatusCode::TOO_MANY_REQUESTS,
        "Too many requests",
        "This address sent too many requests; wait a little and reload.",
    );
    if let Some(retry) = retry {
        page.headers_mut().insert(header::RETRY_AFTER, retry);
    }
    page
}

fn asset(content_type: &'static str, text: &'static str) -> Response {
    let mut r = text.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    r
}

fn see_other(location: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    r.headers_mut()
        .insert(header::LOCATION, crate::header_value(location));
    r
}

/// A path under `/ui/r/`, checked with the API's grammar for names, tags and digests.
#[derive(Debug, PartialEq, Eq)]
enum UiPath<'a> {
    Repository(&'a str),
    Image(&'a str, &'a str),
    Delete(&'a str, &'a str),
}

/// `NAME`, `NAME/_/REFERENCE` or `NAME/_/REFERENCE/delete`. A lone `_` is
/// not a valid name component, so the separator cannot be part of a name.
fn parse_path(rest: &str) -> Option<UiPath<'_>> {
    let route = match rest.split_once("/_/") {
        None => UiPath::Repository(rest.strip_suffix('/').unwrap_or(rest)),
        Some((name, tail)) => match tail.strip_suffix("/delete") {
            Some(reference) => UiPath::Delete(name, reference),
            None => UiPath::Image(name, tail),
        },
    };
    let (name, reference) = match route {
        UiPath::Repository(name) => (name, None),
        UiPath::Image(name, r) | UiPath::Delete(name, r) => (name, Some(r)),
    };
    let reference_ok = reference.is_none_or(|r| {
        if r.contains(':') {
            r.parse::<Digest>().is_ok()
        } else {
            is_valid_tag(r)
        }
    });
    (is_valid_repository_name(name) && reference_ok).then_some(route)
}

/// Where to go after logging in: only a page of the UI itself (no open redirect).
fn safe_next(next: &str) -> &str {
    let local = next.starts_with("/ui/")
        && !next.contains("//")
        && !next.contains('\\')
        && next.bytes().all(|b| (0x21..0x7f).contains(&b));
    if local {
        next
    } else {
        "/ui/"
    }
}

async fn read_form(body: Body) -> Option<String> {
    let bytes = axum::body::to_bytes(body, FORM_LIMIT).await.ok()?;
    String::from_utf8(bytes.to_vec()).ok()
}

fn form_value(form: &str, key: &str) -> String {
    crate::http::query_param(Some(form), key).unwrap_or_default()
}

/// The form's CSRF token matches the viewer's.
fn csrf_ok(ctx: &Ctx<'_>, form: &str) -> bool {
    !ctx.viewer.set_csrf_cookie
        && session::tokens_match(&form_value(form, "csrf"), &ctx.viewer.csrf)
}

fn csrf_refused(ctx: &Ctx<'_>) -> Response {
    ctx.message(
        StatusCode::FORBIDDEN,
        "Form expired",
        "The form was not sent from this page (or the session changed): reload the page and try again.",
    )
}

fn login_form(ctx: &Ctx<'_>, error: Option<&str>, status: StatusCode) -> Response {
    if !ctx.can_login() {
        return ctx.message(
            StatusCode::NOT_FOUND,
            "No logins",
            "This registry has no accounts to log in with.",
        );
    }
    let next = ctx.param("next").unwrap_or_default();
    ctx.render(
        status,
        "Log in",
        pages::login(safe_next(&next), &ctx.viewer.csrf, error),
    )
}

async fn login(ctx: &Ctx<'_>, body: Body, client: Option<SocketAddr>) -> Response {
    let Some(access) = ctx.reg.access.as_ref().filter(|a| a.has_accounts()) else {
        return login_form(ctx, None, StatusCode::NOT_FOUND);
    };
    let Some(form) = read_form(body).await else {
        return ctx.message(
            StatusCode::BAD_REQUEST,
            "Bad form",
            "The form could not be read.",
        );
    };
    if !csrf_ok(ctx, &form) {
        return csrf_refused(ctx);
    }
    let (user, password) = (form_value(&form, "username"), form_value(&form, "password"));
    let next = form_value(&form, "next");
    let again = |error: &str, status| {
        let page = pages::login(safe_next(&next), &ctx.viewer.csrf, Some(error));
        ctx.render(status, "Log in", page)
    };
    match access.ui_login(&user, &password, client).await {
        crate::access::Login::Ok => {
            if let Some(old) = &ctx.viewer.session_id {
                ctx.ui.sessions.remove(old);
            }
            let (id, _) = ctx.ui.sessions.create(&user);
            tracing::info!(user = ?user, "web UI login");
            let mut r = see_other(safe_next(&next));
            let lifetime = Some(ctx.ui.sessions.lifetime());
            let cookie = session::set_cookie(SESSION_COOKIE, &id, lifetime, ctx.ui.options.tls);
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                r.headers_mut().append(header::SET_COOKIE, v);
            }
            r
        }
        crate::access::Login::Wrong => {
            again("Wrong user name or password.", StatusCode::UNAUTHORIZED)
        }
        crate::access::Login::Refused { reason, .. } => again(
            &format!("Refused: {reason}. Wait a little and try again."),
            StatusCode::TOO_MANY_REQUESTS,
        ),
    }
}

async fn logout(ctx: &Ctx<'_>, body: Body) -> Response {
    let form = read_form(body).await.unwrap_or_default();
    if !csrf_ok(ctx, &form) {
        return csrf_refused(ctx);
    }
    if let Some(id) = &ctx.viewer.session_id {
        ctx.ui.sessions.remove(id);
    }
    let mut r = see_other("/ui/");
    let cookie = session::set_cookie(SESSION_COOKIE, "", None, ctx.ui.options.tls);
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

async fn catalog(ctx: &Ctx<'_>) -> Response {
    let s = ctx.reg.storage.as_ref();
    let filter: String = ctx
        .param("q")
        .unwrap_or_default()
        .trim()
        .chars()
        .take(MAX_FILTER)
        .collect();
    let page = ctx
        .param("page")
        .and_then(|p| p.parse::<usize>().ok())
        .filter(|&p| p >= 1)
        .unwrap_or(1);
    let repositories = match ctx.ui.catalog.repositories() {
        Some(list) => list,
        // The backend's sorted index (S3: one listing of `catalog/`), not a
        // walk, and not checked name by name: only the rows shown are.
        None => match s.repository_names_unchecked().await {
            Ok(names) => {
                let list = std::sync::Arc::new(names);
                ctx.ui.catalog.set_repositories(list.clone());
                list
            }
            Err(e) => return storage_failed(ctx, e),
        },
    };
    let visible: Vec<&String> = repositories
        .iter()
        .filter(|r| r.contains(filter.as_str()))
        .filter(|r| ctx.rights(r).contains(Actions::PULL))
        .collect();
    let start = (page - 1).saturating_mul(PAGE_SIZE).min(visible.len());
    let end = (start + PAGE_SIZE).min(visible.len());
    // Several repositories at once: on disk or S3 each read waits on I/O.
    use futures::{StreamExt, TryStreamExt};
    let names: Vec<String> = visible[start..end].iter().map(|n| n.to_string()).collect();
    let writes = records::Writes::Detached(ctx.reg.storage.clone());
    let stats: Vec<_> = match futures::stream::iter(names)
        .map(|name| {
            let writes = &writes;
            async move { records::repo_stats(s, writes, ctx.ui, &name).await }
        })
        .buffered(CONCURRENT_READS)
        .try_collect()
        .await
    {
        Ok(stats) => stats,
        Err(e) => return storage_failed(ctx, e),
    };
    // A name whose repository is gone (the list is not checked name by
    // name) has no row: the page shows one row fewer until the list is read again.
    let rows: Vec<pages::RepoRow> = visible[start..end]
        .iter()
        .zip(stats)
        .filter_map(|(name, stats)| Some((name, stats?)))
        .map(|(name, stats)| pages::RepoRow {
            name: name.to_string(),
            tags: stats.tags,
            size: stats.size,
            newest: stats.newest.clone(),
            pushed: stats.pushed.clone(),
        })
        .collect();
    let view = pages::CatalogView {
        rows: &rows,
        filter: &filter,
        page,
        has_next: end < visible.len(),
        matching: visible.len(),
        anonymous_hint: ctx.viewer.identity == Identity::Anonymous && ctx.can_login(),
    };
    ctx.render(StatusCode::OK, "Repositories", pages::catalog(&view))
}

fn storage_failed(ctx: &Ctx<'_>, e: berth_storage::StorageError) -> Response {
    tracing::warn!(error = %e, "web UI: storage failed");
    ctx.message(
        StatusCode::SERVICE_UNAVAILABLE,
        "Storage unavailable",
        "The registry could not read its storage; try again shortly.",
    )
}

async fn repository_routes(ctx: &Ctx<'_>, m: &Method, route: UiPath<'_>, body: Body) -> Response {
    let name = match route {
        UiPath::Repository(n) | UiPath::Image(n, _) | UiPath::Delete(n, _) => n,
    };
    let rights = ctx.rights(name);
    if !rights.contains(Actions::PULL) {
        return ctx.not_found();
    }
    match (m, route) {
        (&Method::GET, UiPath::Repository(name)) => repository(ctx, name).await,
        (&Method::GET, UiPath::Image(name, reference)) => {
            let may_delete = rights.contains(Actions::DELETE) && !ctx.reg.read_only.is_on();
            image(ctx, name, reference, may_delete).await
        }
        (_, UiPath::Delete(..)) if !rights.contains(Actions::DELETE) => ctx.message(
            StatusCode::FORBIDDEN,
            "Not allowed",
            &format!("You may not delete in {name}."),
        ),
        (&Method::GET, UiPath::Delete(name, reference)) => ctx.render(
            StatusCode::OK,
            "Delete?",
            pages::confirm_delete(name, reference, &ctx.viewer.csrf),
        ),
        (&Method::POST, UiPath::Delete(name, reference)) => {
            delete(ctx, name, reference, body).await
        }
        _ => ctx.message(
            StatusCode::METHOD_NOT_ALLOWED,
            "Not allowed",
            "This page does not take that request.",
        ),
    }
}

async fn repository(ctx: &Ctx<'_>, name: &str) -> Response {
    let s = ctx.reg.storage.as_ref();
    match s.tags(name).await {
        Ok(Some(_)) => {}
        Ok(None) => return ctx.not_found(),
        Err(e) => return storage_failed(ctx, e),
    }
    let writes = records::Writes::Detached(ctx.reg.storage.clone());
    let mut rows = match records::tag_rows(s, &writes, &ctx.ui.cache, name).await {
        Ok(r) => r,
        Err(e) => return storage_failed(ctx, e),
    };
    let sort = match ctx.param("sort").as_deref() {
        Some("size") => "size",
        Some("created") => "created",
        Some("pushed") => "pushed",
        _ => "tag",
    };
    match sort {
        "size" => rows.sort_by_key(|r| std::cmp::Reverse(r.summary.size)),
        "created" => rows.sort_by(|a, b| b.summary.created.cmp(&a.summary.created)),
        "pushed" => rows.sort_by(|a, b| b.pushed.cmp(&a.pushed)),
        _ => {}
    }
    let view = pages::RepoView {
        name,
        host: ctx.host(),
        rows: &rows,
        sort,
    };
    ctx.render(StatusCode::OK, name, pages::repository(&view))
}

async fn image(ctx: &Ctx<'_>, name: &str, reference: &str, may_delete: bool) -> Response {
    let s = ctx.reg.storage.as_ref();
    let digest = if reference.contains(':') {
        reference.parse::<Digest>().ok()
    } else {
        match s.tag_resolve(name, reference).await {
            Ok(d) => d,
            Err(e) => return storage_failed(ctx, e),
        }
    };
    let Some(digest) = digest else {
        return ctx.not_found();
    };
    let (media_type, json, bytes) = match summary::load_manifest(s, name, &digest).await {
        Ok(Some(m)) => m,
        Ok(None) => return ctx.not_found(),
        Err(e) => return storage_failed(ctx, e),
    };
    let parsed = summary::parse_manifest(&json);
    let mut config = None;
    let mut config_json = None;
    let mut layers = None;
    let mut children = None;
    let mut total_size = 0;
    match parsed {
        summary::Parsed::Image {
            config_digest,
            config_size,
            layers: mut list,
        } => {
            if let Ok(Some((v, _))) = summary::load_config(s, name, &config_digest).await {
                let c = summary::parse_config(&v);
                for (layer, step) in list.iter_mut().zip(&c.layer_history) {
                    layer.created_by = step.clone();
                }
                config_json = serde_json::to_string_pretty(&v).ok();
                config = Some(c);
            }
            total_size = config_size + list.iter().map(|l| l.size).sum::<u64>();
            layers = Some(list);
        }
        summary::Parsed::Index { children: list } => {
            if let Ok(Some(sum)) = ctx.ui.cache.summary(s, name, &digest).await {
                total_size = sum.size;
            }
            children = Some(list);
        }
        summary::Parsed::Other => {}
    }
    let manifest_json = serde_json::to_string_pretty(&json)
        .ok()
        .filter(|_| !json.is_null())
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
    let (referrers, running) = match s.referrers(name, &digest).await {
        Ok(list) => {
            let placements = deployments::placements(s, name, &digest, &list).await;
            let running = deployments::section(&placements, std::time::SystemTime::now());
            (group_referrers(list), running)
        }
        Err(e) => return storage_failed(ctx, e),
    };
    let annotations = summary::annotations(&json);
    let digest_text = digest.to_string();
    let view = pages::ImageView {
        name,
        reference,
        digest: &digest_text,
        host: ctx.host(),
        media_type: &media_type,
        annotations: &annotations,
        artifact_type: json.get("artifactType").and_then(|v| v.as_str()),
        children: children.as_deref(),
        layers: layers.as_deref(),
        config: config.as_ref(),
        total_size,
        manifest_json: &manifest_json,
        config_json: config_json.as_deref(),
        referrers: &referrers,
        running,
        may_delete,
    };
    let title = format!("{name}:{reference}");
    ctx.render(StatusCode::OK, &title, pages::image(&view))
}

/// Referrers by artifact type (the media type when they have none).
fn group_referrers(list: Vec<berth_storage::Descriptor>) -> Referrers {
    let mut groups = Referrers::new();
    for d in list {
        let kind = d.artifact_type.unwrap_or(d.media_type);
        groups
            .entry(kind)
            .or_default()
            .push((d.digest.to_string(), d.annotations.unwrap_or_default()));
    }
    groups
}

async fn delete(ctx: &Ctx<'_>, name: &str, reference: &str, body: Body) -> Response {
    let form = read_form(body).await.unwrap_or_default();
    if !csrf_ok(ctx, &form) {
        return csrf_refused(ctx);
    }
    if ctx.reg.read_only.is_on() {
        return ctx.message(
            StatusCode::METHOD_NOT_ALLOWED,
            "Read-only",
            "The registry is read-only for now: nothing can be deleted.",
        );
    }
    let s = ctx.reg.storage.as_ref();
    match crate::manifests::delete(s, &ctx.reg.immutable.current(), name, reference).await {
        Ok(mut response) => {
            ctx.reg.ui_changed(name, true);
            // Webhooks hear of a delete from the UI as of one through the API.
            let happened = response
                .extensions_mut()
                .remove::<crate::events::Happened>();
            if let (Some(happened), Some(events)) = (happened, &ctx.reg.events) {
                let actor = Some(ctx.viewer.identity.subject());
                if let Err(e) = events.record(&happened, actor, None).await {
                    tracing::error!(target: "berth::events", error = %e, repository = name, "cannot queue the event of a delete from the web UI");
                }
            }
            tracing::info!(
                repository = name,
                reference,
                user = ctx.viewer.identity.subject(),
                "deleted from the web UI"
            );
            see_other(&format!("/ui/r/{name}"))
        }
        Err(e) => ctx.message(e.status, "Not deleted", &e.message),
    }
}

#[cfg(test)]
mod tests;
