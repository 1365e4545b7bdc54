//! A small, strict `{{ var }}` templater for string values in app files and inventory vars.
//!
//! Deliberately not Jinja: deploy files are data, and a template language that can run code
//! or silently render a missing variable as an empty string turns typos into outages. What is
//! supported:
//!
//! - `{{ name }}` and `{{ name.key.0 }}` (walk into mappings, and lists by index);
//! - `{{ 'text' }}` / `{{ "text" }}`: a literal, the escape hatch for a literal `{{`;
//! - a string that is exactly one expression takes the variable's own type, so
//!   `replicas: "{{ web_replicas }}"` is a number (as Ansible does with native types);
//!   inside a longer string only scalars are allowed;
//! - variable values may themselves contain templates (`url: "http://{{ host }}"`); they are
//!   rendered when used, and cycles are reported.
//!
//! Everything else (filters `|`, operators, `{% %}` statements, an unknown or null variable)
//! is an error that names the key it occurred in. Mapping keys are never templated.

use std::collections::BTreeMap;

use serde_json::Value;

/// Variables visible to templates: top-level name → value, as in Ansible.
pub type Vars = BTreeMap<String, Value>;

/// How deep variable-in-variable references may nest; far beyond any sane config, it only
/// guards against pathological inputs.
const MAX_NESTING: usize = 32;

/// A templating error at a key path; the caller adds the file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    pub key: String,
    pub message: String,
}

#[derive(Debug, PartialEq)]
enum Segment<'t> {
    Literal(&'t str),
    Variable(Vec<&'t str>),
    Quoted(&'t str),
}

pub struct Templater<'v> {
    vars: &'v Vars,
}

impl<'v> Templater<'v> {
    pub fn new(vars: &'v Vars) -> Self {
        Templater { vars }
    }

    /// Renders every string inside `value`. `key` is the dotted path of `value` in its file,
    /// used in error messages.
    pub fn render(&self, value: &Value, key: &str) -> Result<Value, TemplateError> {
        self.render_at(value, key, &mut Vec::new())
    }

    /// Renders a string that must stay a string (e.g. an endpoint URL).
    pub fn render_string(&self, text: &str, key: &str) -> Result<String, TemplateError> {
        match self.render(&Value::String(text.to_string()), key)? {
            Value::String(s) => Ok(s),
            other => scalar_to_string(&other).ok_or_else(|| TemplateError {
                key: key.to_string(),
                message: format!(
                    "expected text, the template gave {}",
                    crate::yaml::kind_of(&other)
                ),
            }),
        }
    }

    fn render_at(
        &self,
        value: &Value,
        key: &str,
        resolving: &mut Vec<String>,
    ) -> Result<Value, TemplateError> {
        match value {
            Value::String(text) => self.render_text(text, key, resolving),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(index, item)| self.render_at(item, &format!("{key}[{index}]"), resolving))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            Value::Object(map) => {
                let mut rendered = serde_json::Map::new();
                for (name, item) in map {
                    let child_key = if key.is_empty() {
                        name.clone()
                    } else {
                        format!("{key}.{name}")
                    };
                    rendered.insert(name.clone(), self.render_at(item, &child_key, resolving)?);
                }
                Ok(Value::Object(rendered))
            }
            other => Ok(other.clone()),
        }
    }

    fn render_text(
        &self,
        text: &str,
        key: &str,
        resolving: &mut Vec<String>,
    ) -> Result<Value, TemplateError> {
        let error = |message: String| TemplateError {
            key: key.to_string(),
            message,
        };
        let segments = parse(text).map_err(|problem| match resolving.last() {
            // The text is a variable's value (or one it refers to): variables hold passwords
            // and tokens, so the message names the variable and never quotes the value.
            Some(variable) => error(format!(
                "the value of variable `{variable}` is not a valid template: it has {} (the \
                 value is not shown: variables may hold secrets)",
                problem.what()
            )),
            None => error(problem.message(text)),
        })?;
        if let [single] = segments.as_slice() {
            return match single {
                Segment::Literal(text) => Ok(Value::String((*text).to_string())),
                Segment::Quoted(text) => Ok(Value::String((*text).to_string())),
                Segment::Variable(path) => self.lookup(path, key, resolving),
            };
        }
        let mut out = String::new();
        for segment in &segments {
            match segment {
                Segment::Literal(text) | Segment::Quoted(text) => out.push_str(text),
                Segment::Variable(path) => {
                    let value = self.lookup(path, key, resolving)?;
                    let text = scalar_to_string(&value).ok_or_else(|| {
                        error(format!(
                            "`{{{{ {} }}}}` is {}; only text, numbers and booleans can be placed inside a longer string",
                            path.join("."),
                            crate::yaml::kind_of(&value)
                        ))
                    })?;
                    out.push_str(&text);
                }
            }
        }
        Ok(Value::String(out))
    }

    fn lookup(
        &self,
        path: &[&str],
        key: &str,
        resolving: &mut Vec<String>,
    ) -> Result<Value, TemplateError> {
        let error = |message: String| TemplateError {
            key: key.to_string(),
            message,
        };
        // The parser never yields an empty path; an empty one would simply be undefined.
        let Some(root) = path.first().copied() else {
            return Err(error("empty variable name".to_string()));
        };
        let Some(raw) = self.vars.get(root) else {
            return Err(error(format!("undefined variable `{root}`")));
        };
        if resolving.iter().any(|name| name == root) {
            return Err(error(format!(
                "variable `{root}` refers to itself ({} -> {root})",
                resolving.join(" -> ")
            )));
        }
        if resolving.len() >= MAX_NESTING {
            return Err(error(format!(
                "variables nest deeper than {MAX_NESTING} levels"
            )));
        }
        resolving.push(root.to_string());
        // A variable's own templates are rendered in its own context, but errors are reported
        // at the key that used it: that is the place the user is looking at.
        let rendered = self.render_at(raw, key, resolving);
        resolving.pop();
        let mut current = rendered?;
        for (depth, step) in path.iter().enumerate().skip(1) {
            let walked = path[..depth].join(".");
            current = match current {
                Value::Object(mut map) => map
                    .remove(*step)
                    .ok_or_else(|| error(format!("`{walked}` has no key `{step}`")))?,
                Value::Array(mut items) => {
                    let index: usize = step.parse().map_err(|_| {
                        error(format!("`{walked}` is a list; `{step}` is not an index"))
                    })?;
                    if index >= items.len() {
                        return Err(error(format!(
                            "`{walked}` has {} items; index {index} is out of range",
                            items.len()
                        )));
                    }
                    items.swap_remove(index)
                }
                other => {
                    return Err(error(format!(
                        "`{walked}` is {}, it has no `{step}`",
                        crate::yaml::kind_of(&other)
                    )))
                }
            };
        }
        if current.is_null() {
            return Err(error(format!("variable `{}` is null", path.join("."))));
        }
        Ok(current)
    }
}

/// Whether a string contains anything the templater would act on.
pub fn has_template(text: &str) -> bool {
    text.contains("{{") || text.contains("{%")
}

fn scalar_to_string(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// What is wrong with a template's syntax; said with the text (app files) or without it
/// (variable values, which may be secrets).
#[derive(Debug, Clone, PartialEq, Eq)]
enum ParseError {
    Statement,
    Unclosed,
    Empty,
    MalformedLiteral(String),
    Unsupported(String),
}

impl ParseError {
    /// The problem, quoting the template text.
    fn message(&self, text: &str) -> String {
        match self {
            ParseError::Statement => {
                "`{% ... %}` statements are not supported; only `{{ variable }}`".to_string()
            }
            ParseError::Unclosed => format!("unclosed `{{{{` in {text:?}"),
            ParseError::Empty => "empty `{{ }}`".to_string(),
            ParseError::MalformedLiteral(expression) => {
                format!("malformed string literal `{expression}`")
            }
            ParseError::Unsupported(expression) => {
                format!("`{{{{ {expression} }}}}` is not supported: {}", SUPPORTED)
            }
        }
    }

    /// The problem in words that quote nothing of the text.
    fn what(&self) -> String {
        match self {
            ParseError::Statement => "a `{%` statement, which is not supported".to_string(),
            ParseError::Unclosed => "an unclosed `{{`".to_string(),
            ParseError::Empty => "an empty `{{ }}`".to_string(),
            ParseError::MalformedLiteral(_) => "a malformed string literal".to_string(),
            ParseError::Unsupported(_) => format!("an unsupported expression ({SUPPORTED})"),
        }
    }
}

const SUPPORTED: &str =
    "only `{{ name }}`, `{{ name.key }}` or a quoted literal (no filters, operators or calls)";

fn parse(text: &str) -> Result<Vec<Segment<'_>>, ParseError> {
    if text.contains("{%") {
        return Err(ParseError::Statement);
    }
    let mut segments = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        if start > 0 {
            segments.push(Segment::Literal(&rest[..start]));
        }
        let after_open = &rest[start + 2..];
        let Some(end) = find_close(after_open) else {
            return Err(ParseError::Unclosed);
        };
        segments.push(parse_expression(&after_open[..end])?);
        rest = &after_open[end + 2..];
    }
    if !rest.is_empty() || segments.is_empty() {
        segments.push(Segment::Literal(rest));
    }
    Ok(segments)
}

/// Finds the `}}` closing an expression, skipping over quoted literals so `{{ '}}' }}` works.
fn find_close(expression: &str) -> Option<usize> {
    let bytes = expression.as_bytes();
    let mut quote: Option<u8> = None;
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        match quote {
            Some(q) if byte == q => quote = None,
            Some(_) => {}
            None if byte == b'\'' || byte == b'"' => quote = Some(byte),
            None if byte == b'}' && bytes.get(index + 1) == Some(&b'}') => return Some(index),
            None => {}
        }
        index += 1;
    }
    None
}

fn parse_expression(raw: &str) -> Result<Segment<'_>, ParseError> {
    let expression = raw.trim();
    if expression.is_empty() {
        return Err(ParseError::Empty);
    }
    for quote in ['\'', '"'] {
        if let Some(inner) = expression.strip_prefix(quote) {
            return match inner.strip_suffix(quote) {
                Some(literal) if !literal.contains(quote) => Ok(Segment::Quoted(literal)),
                _ => Err(ParseError::MalformedLiteral(expression.to_string())),
            };
        }
    }
    let path: Vec<&str> = expression.split('.').collect();
    let valid_name = |part: &str| {
        let mut chars = part.chars();
        matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    let root_is_name = expression
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !root_is_name || !path.iter().all(|part| valid_name(part)) {
        return Err(ParseError::Unsupported(expression.to_string()));
    }
    Ok(Segment::Variable(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vars(value: Value) -> Vars {
        serde_json::from_value(value).expect("test vars are a mapping")
    }

    fn render(text: &str, vars_json: Value) -> Result<Value, TemplateError> {
        let vars = vars(vars_json);
        Templater::new(&vars).render(&Value::String(text.into()), "services.web.image")
    }

    #[test]
    fn plain_text_is_unchanged() {
        assert_eq!(
            render("nginx:1.27", json!({})).unwrap(),
            json!("nginx:1.27")
        );
        assert_eq!(render("", json!({})).unwrap(), json!(""));
        assert_eq!(
            render("a } b }} c", json!({})).unwrap(),
            json!("a } b }} c")
        );
    }

    #[test]
    fn interpolates_scalars_into_text() {
        let out = render(
            "{{registry}}/app:{{ tag }}-{{ n }}-{{ on }}",
            json!({"registry": "r:5000", "tag": "v3", "n": 2, "on": true}),
        );
        assert_eq!(out.unwrap(), json!("r:5000/app:v3-2-true"));
    }

    #[test]
    fn whole_string_expression_keeps_the_type() {
        assert_eq!(render("{{ n }}", json!({"n": 3})).unwrap(), json!(3));
        assert_eq!(render(" {{ n }}", json!({"n": 3})).unwrap(), json!(" 3"));
        assert_eq!(
            render("{{ list }}", json!({"list": [1, "a"]})).unwrap(),
            json!([1, "a"])
        );
    }

    #[test]
    fn walks_into_mappings_and_lists() {
        let v = json!({"db": {"hosts": ["a", "b"], "port": 5432}});
        assert_eq!(
            render("{{ db.hosts.1 }}:{{ db.port }}", v).unwrap(),
            json!("b:5432")
        );
    }

    /// A variable's value may be a password: a template error in it names the variable and
    /// the key that used it, never the value, whatever the syntax problem.
    #[test]
    fn errors_in_a_variables_value_never_quote_it() {
        for secret in [
            "Xq9{{Zv7",
            "Xq9{{ Zv7 | x }}",
            "Xq9{{ 'Zv7 }}",
            "Xq9{{ }}Zv7",
            "Xq9{%Zv7",
        ] {
            let err =
                render("{{ db_password }}", json!({ "db_password": secret })).expect_err(secret);
            assert_eq!(err.key, "services.web.image", "{secret}");
            assert!(
                err.message
                    .starts_with("the value of variable `db_password` is not a valid template"),
                "{secret}: {}",
                err.message
            );
            assert!(
                !err.message.contains("Xq9") && !err.message.contains("Zv7"),
                "{secret}: {}",
                err.message
            );
            // Reached through another variable, the innermost one is named.
            let err = render(
                "x-{{ dsn }}",
                json!({ "dsn": "db:{{ db_password }}", "db_password": secret }),
            )
            .expect_err(secret);
            assert!(
                err.message.contains("variable `db_password`") && !err.message.contains("Zv7"),
                "{secret}: {}",
                err.message
            );
        }
        // In the app file's own text the template is quoted, to find it.
        let err = render("{{ tag | upper }}", json!({ "tag": "v1" })).unwrap_err();
        assert!(
            err.message.contains("`{{ tag | upper }}` is not supported"),
            "{}",
            err.message
        );
        let err = render("app:{{tag", json!({})).unwrap_err();
        assert_eq!(err.message, "unclosed `{{` in \"app:{{tag\"");
    }

    #[test]
    fn unknown_variable_names_key_and_variable() {
        let err = render("{{ registry }}/app", json!({})).unwrap_err();
        assert_eq!(err.key, "services.web.image");
        assert_eq!(err.message, "undefined variable `registry`");
    }

    #[test]
    fn missing_key_and_bad_index_are_errors() {
        let v = json!({"db": {"hosts": ["a"]}});
        assert!(render("{{ db.port }}", v.clone())
            .unwrap_err()
            .message
            .contains("has no key `port`"));
        assert!(render("{{ db.hosts.5 }}", v.clone())
            .unwrap_err()
            .message
            .contains("out of range"));
        assert!(render("{{ db.hosts.x }}", v)
            .unwrap_err()
            .message
            .contains("not an index"));
    }

    #[test]
    fn null_variable_is_an_error_not_an_empty_string() {
        assert!(render("x{{ v }}", json!({"v": null}))
            .unwrap_err()
            .message
            .contains("is null"));
    }

    #[test]
    fn non_scalar_inside_text_is_an_error() {
        let err = render("x-{{ m }}", json!({"m": {"a": 1}})).unwrap_err();
        assert!(err.message.contains("is a mapping"), "{}", err.message);
    }

    #[test]
    fn filters_expressions_and_statements_are_rejected() {
        for text in [
            "{{ a | default('x') }}",
            "{{ a + 1 }}",
            "{{ lookup('env', 'HOME') }}",
            "{% if a %}x{% endif %}",
            "{{ 1a }}",
            "{{ }}",
            "{{ a",
        ] {
            let err = render(text, json!({"a": 1})).unwrap_err();
            assert!(!err.message.is_empty(), "{text}");
        }
        assert!(render("{{ a | upper }}", json!({"a": 1}))
            .unwrap_err()
            .message
            .contains("no filters"));
        assert!(render("{{ a", json!({"a": 1}))
            .unwrap_err()
            .message
            .contains("unclosed"));
    }

    #[test]
    fn quoted_literal_escapes_braces() {
        assert_eq!(
            render("{{ '{{' }} x {{ \"}}\" }}", json!({})).unwrap(),
            json!("{{ x }}")
        );
        assert!(render("{{ 'a\" }}", json!({})).is_err());
    }

    #[test]
    fn variables_may_use_other_variables() {
        let v = json!({"host": "db1", "url": "pg://{{ host }}:{{ port }}", "port": 5432});
        assert_eq!(render("{{ url }}", v).unwrap(), json!("pg://db1:5432"));
    }

    #[test]
    fn cycles_are_reported() {
        let err = render("{{ a }}", json!({"a": "{{ b }}", "b": "x{{ a }}"})).unwrap_err();
        assert!(
            err.message.contains("refers to itself (a -> b -> a)"),
            "{}",
            err.message
        );
    }

    #[test]
    fn nested_values_report_their_own_key() {
        let vars = vars(json!({}));
        let value = json!({"env": {"A": "ok", "B": ["x", "{{ nope }}"]}});
        let err = Templater::new(&vars)
            .render(&value, "services.web")
            .unwrap_err();
        assert_eq!(err.key, "services.web.env.B[1]");
    }

    #[test]
    fn mapping_keys_are_not_templated() {
        let vars = vars(json!({"k": "v"}));
        let out = Templater::new(&vars)
            .render(&json!({"{{ k }}": "{{ k }}"}), "")
            .unwrap();
        assert_eq!(out, json!({"{{ k }}": "v"}));
    }
}
