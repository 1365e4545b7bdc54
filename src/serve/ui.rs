//! `[ui]`: the web UI's settings as the registry takes them.

use anyhow::{Context, Result};

use crate::config::Settings;

/// The `[ui]` settings as the registry takes them; `None` when the UI is off.
pub fn options(settings: &Settings) -> Result<Option<berth_registry::ui::UiOptions>> {
    let ui = &settings.ui;
    if !ui.enabled {
        return Ok(None);
    }
    let mut options = berth_registry::ui::UiOptions {
        allow_delete: ui.allow_delete,
        tls: settings.tls.is_some(),
        ..Default::default()
    };
    if let Some(lifetime) = &ui.session_lifetime {
        options.session_lifetime = humantime::parse_duration(lifetime).with_context(|| {
            format!("invalid ui.session_lifetime {lifetime:?} (use e.g. \"8h\")")
        })?;
    }
    Ok(Some(options))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{resolve, ServeArgs};

    fn settings(toml: &str) -> Result<Settings> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("berth.toml");
        std::fs::write(&path, toml).expect("write");
        resolve(ServeArgs {
            config: Some(path),
            ..Default::default()
        })
    }

    #[test]
    fn on_by_default_and_off_when_told() {
        let on = options(&settings("").expect("empty")).expect("options");
        let on = on.expect("on by default");
        assert!(!on.allow_delete);
        assert_eq!(
            on.session_lifetime,
            std::time::Duration::from_secs(8 * 3600)
        );
        let off = settings("[ui]\nenabled = false\n").expect("off");
        assert!(options(&off).expect("options").is_none());
        let s = settings("[ui]\nallow_delete = true\nsession_lifetime = \"30m\"\n").expect("set");
        let o = options(&s).expect("options").expect("on");
        assert!(o.allow_delete);
        assert_eq!(o.session_lifetime, std::time::Duration::from_secs(1800));
    }

    #[test]
    fn bad_settings_are_named() {
        let e = settings("[ui]\nallow_delet = true\n").expect_err("a misspelt key");
        assert!(format!("{e:#}").contains("allow_delet"), "{e:#}");
        let s = settings("[ui]\nsession_lifetime = \"soon\"\n").expect("parses");
        let e = options(&s).expect_err("a bad duration");
        assert!(format!("{e:#}").contains("ui.session_lifetime"), "{e:#}");
    }
}
