//! Reading an app file and rendering it for one host: templates first, then typing each
//! section entry by entry, then the app-wide checks (`validate.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::{check_docker_name, App, Naming, Network, Secret, Service, Volume};
use crate::error::{Error, Problem, Result};
use crate::template::{has_template, Templater, Vars};
use crate::yaml;

/// An app file as read from disk, before per-host rendering.
#[derive(Debug, Clone)]
pub struct AppSource {
    pub path: PathBuf,
    pub name: String,
    /// Default values of variables; inventory vars override them.
    pub variables: Vars,
    networks: Value,
    volumes: Value,
    secrets: Value,
    services: Value,
    /// Set when the file is a compose file (`crate::compose`), which renders itself.
    compose: Option<Box<crate::compose::ComposeSource>>,
}

impl AppSource {
    pub fn load(path: &Path) -> Result<AppSource> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            error: source,
        })?;
        AppSource::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<AppSource> {
        let document = yaml::parse_str(path, text)?;
        if crate::compose::is_compose(path, &document) {
            let compose = crate::compose::ComposeSource::load(path, text, document)?;
            return Ok(AppSource {
                path: path.to_path_buf(),
                name: compose.project.clone(),
                variables: Vars::new(),
                networks: Value::Null,
                volumes: Value::Null,
                secrets: Value::Null,
                services: Value::Null,
                compose: Some(Box::new(compose)),
            });
        }
        AppSource::from_value(path, document)
    }

    /// Is this app read from a compose file?
    pub fn is_compose(&self) -> bool {
        self.compose.is_some()
    }

    fn from_value(path: &Path, document: Value) -> Result<AppSource> {
        let invalid = |key: &str, message: String| Error::InvalidApp {
            file: path.to_path_buf(),
            problems: vec![Problem::new(key, message)],
        };
        let Value::Object(mut top) = document else {
            return Err(invalid(
                "",
                format!(
                    "expected a mapping with name, services, networks, variables; found {}",
                    yaml::kind_of(&document)
                ),
            ));
        };
        if let Some(unknown) = top.keys().find(|k| !TOP_LEVEL_KEYS.contains(&k.as_str())) {
            return Err(invalid(
                unknown,
                format!(
                    "unknown key `{unknown}` (expected {})",
                    TOP_LEVEL_KEYS.join(", ")
                ),
            ));
        }
        let name = match top.remove("name") {
            Some(Value::String(name)) => name,
            Some(other) => {
                return Err(invalid(
                    "name",
                    format!("expected text, found {}", yaml::kind_of(&other)),
                ))
            }
            None => {
                return Err(invalid(
                    "name",
                    "missing: every app needs a name (it labels what Berth creates)".to_string(),
                ))
            }
        };
        if has_template(&name) {
            return Err(invalid(
                "name",
                "the app name cannot be templated: it identifies what this app owns on every host"
                    .to_string(),
            ));
        }
        check_docker_name(&name).map_err(|message| invalid("name", message))?;
        let variables = match top.remove("variables") {
            None | Some(Value::Null) => Vars::new(),
            Some(Value::Object(map)) => map.into_iter().collect(),
            Some(other) => {
                return Err(invalid(
                    "variables",
                    format!("expected a mapping, found {}", yaml::kind_of(&other)),
                ))
            }
        };
        let section = |value: Option<Value>, key: &str| match value {
            None | Some(Value::Null) => Ok(Value::Object(Default::default())),
            Some(map @ Value::Object(_)) => Ok(map),
            Some(other) => Err(invalid(
                key,
                format!("expected a mapping, found {}", yaml::kind_of(&other)),
            )),
        };
        let networks = section(top.remove("networks"), "networks")?;
        let volumes = section(top.remove("volumes"), "volumes")?;
        let secrets = section(top.remove("secrets"), "secrets")?;
        let services = section(top.remove("services"), "services")?;
        Ok(AppSource {
            path: path.to_path_buf(),
            name,
            variables,
            networks,
            volumes,
            secrets,
            services,
            compose: None,
        })
    }

    /// The variables a host sees: the app's defaults, overridden by the host's inventory vars.
    pub fn vars_for(&self, host_vars: &Vars) -> Vars {
        let mut vars = self.variables.clone();
        vars.extend(host_vars.iter().map(|(k, v)| (k.clone(), v.clone())));
        vars
    }

    /// Renders templates with a host's variables, types the result and validates it.
    pub fn render(&self, host_vars: &Vars) -> Result<App> {
        if let Some(compose) = &self.compose {
            return compose.render(host_vars);
        }
        let vars = self.vars_for(host_vars);
        let templater = Templater::new(&vars);
        let template_error = |e: crate::template::TemplateError| Error::Template {
            file: self.path.clone(),
            key: e.key,
            message: e.message,
        };
        let networks = templater
            .render(&self.networks, "networks")
            .map_err(template_error)?;
        let volumes = templater
            .render(&self.volumes, "volumes")
            .map_err(template_error)?;
        let secrets = templater
            .render(&self.secrets, "secrets")
            .map_err(template_error)?;
        let services = templater
            .render(&self.services, "services")
            .map_err(template_error)?;
        let sections = RenderedSections {
            networks: &networks,
            volumes: &volumes,
            secrets: &secrets,
            services: &services,
        };
        typed_app(&self.path, &self.name, sections, Naming::Berth)
    }
}

/// An app's sections after templating (or compose conversion), before typing.
pub(crate) struct RenderedSections<'a> {
    pub networks: &'a Value,
    pub volumes: &'a Value,
    pub secrets: &'a Value,
    pub services: &'a Value,
}

/// Types rendered sections (Berth's shape) and validates the app.
pub(crate) fn typed_app(
    path: &Path,
    name: &str,
    sections: RenderedSections,
    naming: Naming,
) -> Result<App> {
    let mut problems = Vec::new();
    let networks: BTreeMap<String, Network> =
        typed_entries(sections.networks, "networks", &mut problems);
    let volumes: BTreeMap<String, Volume> =
        typed_entries(sections.volumes, "volumes", &mut problems);
    let secrets: BTreeMap<String, Secret> =
        typed_entries(sections.secrets, "secrets", &mut problems);
    let services: BTreeMap<String, Service> =
        typed_entries(sections.services, "services", &mut problems);
    let app = App {
        name: name.to_string(),
        networks,
        volumes,
        secrets,
        services,
        naming,
    };
    if problems.is_empty() {
        problems = app.validate();
    }
    if problems.is_empty() {
        Ok(app)
    } else {
        Err(Error::InvalidApp {
            file: path.to_path_buf(),
            problems,
        })
    }
}

/// Types each entry of a section separately, so one bad service does not hide the others'
/// errors and every error names its entry.
fn typed_entries<T: for<'de> Deserialize<'de>>(
    section: &Value,
    key: &str,
    problems: &mut Vec<Problem>,
) -> BTreeMap<String, T> {
    let mut out = BTreeMap::new();
    let Value::Object(entries) = section else {
        return out;
    };
    for (name, body) in entries {
        let entry_key = format!("{key}.{name}");
        // `web:` with nothing under it is an empty mapping, not null.
        let body = if body.is_null() {
            Value::Object(Default::default())
        } else {
            body.clone()
        };
        match serde_path_to_error::deserialize::<_, T>(body) {
            Ok(typed) => {
                out.insert(name.clone(), typed);
            }
            Err(err) => {
                let path = err.path().to_string();
                let at = if path == "." {
                    entry_key.clone()
                } else {
                    format!("{entry_key}.{path}")
                };
                problems.push(Problem::new(at, err.into_inner().to_string()));
            }
        }
    }
    out
}

const TOP_LEVEL_KEYS: [&str; 6] = [
    "name",
    "variables",
    "networks",
    "volumes",
    "secrets",
    "services",
];
