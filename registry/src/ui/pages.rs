//! The pages, as maud templates. Every value from a pushed image or a URL is
//! inserted with maud's `(...)`, which HTML-escapes it; nothing here uses
//! `PreEscaped` on such data.

use std::collections::BTreeMap;

use maud::{html, Markup, DOCTYPE};

use super::summary::{Child, Config, Layer, Summary};

/// What every page needs: who is looking, and the CSRF token for its forms.
pub struct Chrome<'a> {
    pub title: &'a str,
    pub user: Option<&'a str>,
    pub csrf: &'a str,
    /// Whether there are accounts to log in with.
    pub can_login: bool,
    /// Path of the current page, for "log in and come back".
    pub here: &'a str,
}

pub fn layout(c: &Chrome<'_>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                title { (c.title) " · Berth" }
                link rel="stylesheet" href="/ui/static/style.css";
                script src="/ui/static/copy.js" defer {}
            }
            body {
                header.top {
                    nav aria-label="Site" {
                        a.brand href="/ui/" { "Berth" }
                        " "
                        a href="/ui/" { "Repositories" }
                    }
                    div.who {
                        @if let Some(user) = c.user {
                            span { "Signed in as " strong { (user) } }
                            form method="post" action="/ui/logout" {
                                input type="hidden" name="csrf" value=(c.csrf);
                                button type="submit" { "Log out" }
                            }
                        } @else if c.can_login {
                            a href={ "/ui/login?next=" (encode(c.here)) } { "Log in" }
                        }
                    }
                }
                main id="main" { (body) }
            }
        }
    }
}

/// A catalog row.
pub struct RepoRow {
    pub name: String,
    pub tags: usize,
    pub size: u64,
    pub newest: Option<String>,
    /// When a tag was last pushed (RFC 3339, UTC).
    pub pushed: Option<String>,
}

pub struct CatalogView<'a> {
    pub rows: &'a [RepoRow],
    pub filter: &'a str,
    pub page: usize,
    pub has_next: bool,
    pub matching: usize,
    pub anonymous_hint: bool,
}

pub fn catalog(v: &CatalogView<'_>) -> Markup {
    let page_link = |page: usize| format!("/ui/?q={}&page={page}", encode(v.filter));
    html! {
        h1 { "Repositories" }
        form.filter method="get" action="/ui/" role="search" {
            label for="q" { "Filter" }
            input id="q" type="search" name="q" value=(v.filter) placeholder="name contains…";
            button type="submit" { "Filter" }
        }
        p.muted { (v.matching) " repositories" @if !v.filter.is_empty() { " matching “" (v.filter) "”" } }
        @if v.rows.is_empty() {
            p { "No repositories to show." }
            @if v.anonymous_hint { p { "Log in to see the repositories you may pull." } }
        } @else {
            div.scroll { table {
                thead { tr { th scope="col" { "Repository" } th.num scope="col" { "Tags" } th.num scope="col" { "Size" } th scope="col" { "Newest image" } th scope="col" { "Last pushed" } } }
                tbody {
                    @for r in v.rows {
                        tr {
                            td { a href={ "/ui/r/" (r.name) } { (r.name) } }
                            td.num { (r.tags) }
                            td.num { (human_size(r.size)) }
                            td { (r.newest.as_deref().map(short_time).unwrap_or("–")) }
                            td { (r.pushed.as_deref().map(short_time).unwrap_or("–")) }
                        }
                    }
                }
            } }
        }
        nav.pages aria-label="Pages" {
            @if v.page > 1 { a rel="prev" href=(page_link(v.page - 1)) { "← Previous" } }
            span { "Page " (v.page) }
            @if v.has_next { a rel="next" href=(page_link(v.page + 1)) { "Next →" } }
        }
    }
}

/// A tag row of a repository page.
pub struct TagRow {
    pub tag: String,
    pub digest: String,
    pub summary: Summary,
    /// When the tag was last pushed (RFC 3339, UTC).
    pub pushed: Option<String>,
}

pub struct RepoView<'a> {
    pub name: &'a str,
    pub host: &'a str,
    pub rows: &'a [TagRow],
    pub sort: &'a str,
}

pub fn repository(v: &RepoView<'_>) -> Markup {
    let first_tag = v.rows.first().map(|r| r.tag.as_str()).unwrap_or("latest");
    let sort_link = |key: &str, label: &str| {
        html! {
            @if v.sort == key { span aria-current="true" { (label) " ▾" } }
            @else { a href={ "/ui/r/" (v.name) "?sort=" (key) } { (label) } }
        }
    };
    html! {
        nav.crumbs aria-label="Breadcrumb" { a href="/ui/" { "Repositories" } " / " }
        h1 { (v.name) }
        (pull_commands(v.host, v.name, first_tag))
        h2 { "Tags (" (v.rows.len()) ")" }
        @if v.rows.is_empty() { p { "No tags." } } @else {
            div.scroll { table {
                thead { tr {
                    th scope="col" { (sort_link("tag", "Tag")) }
                    th scope="col" { "Digest" }
                    th scope="col" { "Platforms" }
                    th.num scope="col" { (sort_link("size", "Size")) }
                    th scope="col" { (sort_link("created", "Created")) }
                    th scope="col" { (sort_link("pushed", "Last pushed")) }
                } }
                tbody {
                    @for r in v.rows {
                        tr {
                            td { a href={ "/ui/r/" (v.name) "/_/" (r.tag) } { (r.tag) } }
                            td { code title=(r.digest) { (short_digest(&r.digest)) } }
                            td { (platforms(&r.summary)) }
                            td.num { (human_size(r.summary.size)) }
                            td { (r.summary.created.as_deref().map(short_time).unwrap_or("–")) }
                            td { (r.pushed.as_deref().map(short_time).unwrap_or("–")) }
                        }
                    }
                }
            } }
        }
    }
}

fn platforms(s: &Summary) -> String {
    if s.platforms.is_empty() {
        if s.kind == "image" || s.kind == "index" {
            "–".into()
        } else {
            s.kind.clone()
        }
    } else {
        s.platforms.join(", ")
    }
}

fn pull_commands(host: &str, name: &str, tag: &str) -> Markup {
    let image = format!("{host}/{name}:{tag}");
    html! {
        section.pull aria-label="Pull commands" {
            @for tool in ["docker", "podman", "berth"] {
                @let command = format!("{tool} pull {image}");
                div.cmd {
                    code { (command) }
                    button.copy type="button" hidden data-copy=(command) aria-label={ "Copy the " (tool) " pull command" } { "Copy" }
                }
            }
        }
    }
}

/// Referrers by artifact type: (digest, annotations) of each.
pub type Referrers = BTreeMap<String, Vec<(String, BTreeMap<String, String>)>>;

pub struct ImageView<'a> {
    pub name: &'a str,
    pub reference: &'a str,
    pub digest: &'a str,
    pub host: &'a str,
    pub media_type: &'a str,
    pub annotations: &'a BTreeMap<String, String>,
    pub artifact_type: Option<&'a str>,
    pub children: Option<&'a [Child]>,
    pub layers: Option<&'a [Layer]>,
    pub config: Option<&'a Config>,
    pub total_size: u64,
    pub manifest_json: &'a str,
    pub config_json: Option<&'a str>,
    pub referrers: &'a Referrers,
    /// Where deployment records say the image runs (empty when nowhere).
    pub running: Markup,
    pub may_delete: bool,
}

pub fn image(v: &ImageView<'_>) -> Markup {
    let is_tag = !v.reference.contains(':');
    html! {
        nav.crumbs aria-label="Breadcrumb" {
            a href="/ui/" { "Repositories" } " / " a href={ "/ui/r/" (v.name) } { (v.name) } " /"
        }
        h1 { (v.name) @if is_tag { ":" (v.reference) } @else { "@" (short_digest(v.reference)) } }
        dl.facts {
            dt { "Digest" } dd { code { (v.digest) } }
            dt { "Media type" } dd { (v.media_type) }
            @if let Some(t) = v.artifact_type { dt { "Artifact type" } dd { (t) } }
            dt { "Compressed size" } dd { (human_size(v.total_size)) }
            @if let Some(c) = v.config {
                @if !c.platform.is_empty() { dt { "Platform" } dd { (c.platform) } }
                @if let Some(t) = &c.created { dt { "Created" } dd { (t) } }
            }
        }
        (v.running)
        @if is_tag { (pull_commands(v.host, v.name, v.reference)) }
        @if let Some(children) = v.children { (index_children(v.name, children)) }
        @if let Some(c) = v.config { (config_section(c)) }
        @if let Some(layers) = v.layers { (layers_section(layers, v.config)) }
        (map_table("Annotations", v.annotations))
        (referrers(v.name, v.referrers))
        details { summary { "Raw manifest" } pre { code { (v.manifest_json) } } }
        @if let Some(j) = v.config_json { details { summary { "Raw config" } pre { code { (j) } } } }
        @if v.may_delete {
            p { a.danger href={ "/ui/r/" (v.name) "/_/" (v.reference) "/delete" } {
                @if is_tag { "Delete tag " (v.reference) "…" } @else { "Delete this manifest…" }
            } }
        }
    }
}

fn index_children(name: &str, children: &[Child]) -> Markup {
    html! {
        h2 { "Platforms" }
        div.scroll { table {
            thead { tr { th scope="col" { "Platform" } th scope="col" { "Digest" } th.num scope="col" { "Manifest size" } } }
            tbody { @for c in children { tr {
                td { @if c.platform.is_empty() { "–" } @else { (c.platform) } }
                td { @if c.digest.parse::<berth_storage::Digest>().is_ok() {
                        a href={ "/ui/r/" (name) "/_/" (c.digest) } { code { (short_digest(&c.digest)) } }
                    } @else { code { (c.digest) } } }
                td.num { (human_size(c.size)) }
            } } }
        } }
    }
}

fn config_section(c: &Config) -> Markup {
    let join = |v: &Option<Vec<String>>| v.as_ref().map(|v| format!("{v:?}"));
    html! {
        h2 { "Configuration" }
        dl.facts {
            @if let Some(e) = join(&c.entrypoint) { dt { "Entrypoint" } dd { code { (e) } } }
            @if let Some(e) = join(&c.cmd) { dt { "Cmd" } dd { code { (e) } } }
            @if let Some(u) = &c.user { dt { "User" } dd { (u) } }
            @if let Some(w) = &c.workdir { dt { "Working dir" } dd { (w) } }
            @if !c.ports.is_empty() { dt { "Ports" } dd { (c.ports.join(", ")) } }
            @if !c.volumes.is_empty() { dt { "Volumes" } dd { (c.volumes.join(", ")) } }
        }
        @if !c.env.is_empty() {
            h3 { "Environment" }
            ul.plain { @for e in &c.env { li { code { (e) } } } }
        }
        (map_table("Labels", &c.labels))
    }
}

fn layers_section(layers: &[Layer], config: Option<&Config>) -> Markup {
    let history = |i: usize| {
        config
            .and_then(|c| c.layer_history.get(i).cloned().flatten())
            .unwrap_or_default()
    };
    html! {
        h2 { "Layers (" (layers.len()) ")" }
        div.scroll { table.layers {
            thead { tr { th.num scope="col" { "#" } th.num scope="col" { "Size" } th scope="col" { "Created by" } th scope="col" { "Digest" } } }
            tbody { @for (i, l) in layers.iter().enumerate() { tr {
                td.num { (i + 1) }
                td.num { (human_size(l.size)) }
                td { code.step { (history(i)) } }
                td { code title=(l.digest) { (short_digest(&l.digest)) } }
            } } }
        } }
    }
}

fn map_table(title: &str, map: &BTreeMap<String, String>) -> Markup {
    html! {
        @if !map.is_empty() {
            h2 { (title) }
            div.scroll { table {
                tbody { @for (k, v) in map { tr { th scope="row" { (k) } td { (v) } } } }
            } }
        }
    }
}

fn referrers(name: &str, groups: &Referrers) -> Markup {
    html! {
        h2 { "Referrers" }
        @if groups.is_empty() { p.muted { "No signatures, SBOMs or other artifacts refer to this manifest." } }
        @for (kind, items) in groups {
            h3 { (kind) " (" (items.len()) ")" }
            ul.plain { @for (digest, annotations) in items { li {
                a href={ "/ui/r/" (name) "/_/" (digest) } { code { (short_digest(digest)) } }
                @if let Some(t) = annotations.get("org.opencontainers.image.created") { " · " (t) }
            } } }
        }
    }
}

pub fn confirm_delete(name: &str, reference: &str, csrf: &str) -> Markup {
    let is_tag = !reference.contains(':');
    html! {
        h1 { "Delete?" }
        @if is_tag {
            p { "Delete the tag " strong { (name) ":" (reference) } "? The manifest stays, under its digest and any other tags." }
        } @else {
            p { "Delete the manifest " code { (reference) } " from " strong { (name) } ", with every tag that points at it? Pulls by this digest will fail." }
        }
        form method="post" action={ "/ui/r/" (name) "/_/" (reference) "/delete" } {
            input type="hidden" name="csrf" value=(csrf);
            button.danger type="submit" { "Delete" }
            " "
            a href={ "/ui/r/" (name) "/_/" (reference) } { "Cancel" }
        }
    }
}

pub fn login(next: &str, csrf: &str, error: Option<&str>) -> Markup {
    html! {
        h1 { "Log in" }
        @if let Some(e) = error { p.error role="alert" { (e) } }
        form.login method="post" action="/ui/login" {
            input type="hidden" name="csrf" value=(csrf);
            input type="hidden" name="next" value=(next);
            label for="username" { "User name" }
            input id="username" name="username" autocomplete="username" required autofocus;
            label for="password" { "Password" }
            input id="password" name="password" type="password" autocomplete="current-password" required;
            button type="submit" { "Log in" }
        }
    }
}

pub fn message(title: &str, text: &str) -> Markup {
    html! {
        h1 { (title) }
        p { (text) }
        p { a href="/ui/" { "Back to the repositories" } }
    }
}

/// "1.5 MB": decimal units, as docker prints sizes.
pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The first 12 hex digits, as docker shows image ids.
pub fn short_digest(d: &str) -> &str {
    let hex = d.split_once(':').map_or(d, |(_, h)| h);
    hex.get(..12).unwrap_or(hex)
}

/// "2026-01-02 03:04" out of an RFC 3339 time (left as is if shorter).
fn short_time(t: &str) -> &str {
    t.get(..16).filter(|s| s.is_char_boundary(10)).unwrap_or(t)
}

/// Percent-encode a query value.
pub fn encode(v: &str) -> String {
    berth_oci::percent::encode_keeping_slash(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_digests_read_well() {
        assert_eq!(human_size(999), "999 B");
        assert_eq!(human_size(1_500_000), "1.5 MB");
        assert_eq!(short_digest("sha256:0123456789abcdef"), "0123456789ab");
        assert_eq!(short_digest("x"), "x");
        assert_eq!(short_time("2026-01-02T03:04:05Z"), "2026-01-02T03:04");
    }

    #[test]
    fn labels_and_names_are_escaped() {
        let evil = "<script>alert(1)</script>";
        let config = Config {
            labels: BTreeMap::from([(evil.to_string(), evil.to_string())]),
            env: vec![format!("X=\"{evil}")],
            layer_history: vec![Some(format!("RUN echo '{evil}'"))],
            ..Config::default()
        };
        let annotations = BTreeMap::from([("a".to_string(), evil.to_string())]);
        let layers = [Layer {
            digest: "sha256:00".into(),
            media_type: String::new(),
            size: 1,
            created_by: None,
        }];
        let referrers = BTreeMap::from([(
            evil.to_string(),
            vec![("sha256:11".to_string(), annotations.clone())],
        )]);
        let view = ImageView {
            name: "app",
            reference: "v1",
            digest: "sha256:22",
            host: "h\"><script>",
            media_type: evil,
            annotations: &annotations,
            artifact_type: Some(evil),
            children: None,
            layers: Some(&layers),
            config: Some(&config),
            total_size: 1,
            manifest_json: evil,
            config_json: Some(evil),
            referrers: &referrers,
            running: Markup::default(),
            may_delete: true,
        };
        let chrome = Chrome {
            title: evil,
            user: Some(evil),
            csrf: "\"><x",
            can_login: true,
            here: evil,
        };
        let page = layout(&chrome, image(&view)).into_string();
        assert!(!page.contains("<script>alert"), "{page}");
        assert!(!page.contains("\"><x"), "an attribute was broken out of");
        assert!(
            !page.contains("h\"><script>"),
            "an attribute was broken out of"
        );
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        let login = login(evil, evil, Some(evil)).into_string();
        assert!(!login.contains("<script>alert"));
    }
}
