//! The plan as `berth build --dry-run` prints it.

use std::fmt;

use super::order::stage_label;
use super::{ArgValue, Base, Plan};

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let target = &self.stages[self.target];
        writeln!(
            f,
            "target: stage {} for {} (building on {})",
            stage_label(target),
            self.target_platform,
            self.build_platform
        )?;
        if !self.global_args.is_empty() {
            let args: Vec<String> = self.global_args.iter().map(arg_text).collect();
            writeln!(f, "global args: {}", args.join(" "))?;
        }
        writeln!(f, "run order (the stages of a group can run in parallel):")?;
        for (n, group) in self.schedule.iter().enumerate() {
            let labels: Vec<String> = group
                .iter()
                .map(|&i| stage_label(&self.stages[i]))
                .collect();
            writeln!(f, "  {}. {}", n + 1, labels.join(", "))?;
        }
        for stage in &self.stages {
            writeln!(f)?;
            let base = match &stage.base {
                Base::Scratch => "scratch".to_string(),
                Base::Image {
                    reference,
                    digest: Some(d),
                } => format!("{reference}@{d}"),
                Base::Image {
                    reference,
                    digest: None,
                } => reference.clone(),
                Base::Stage { index } => format!("stage {}", stage_label(&self.stages[*index])),
            };
            let skipped = if stage.needed {
                ""
            } else {
                "  [skipped: the target does not need it]"
            };
            writeln!(
                f,
                "stage {} FROM {base} (line {}){skipped}",
                stage_label(stage),
                stage.line
            )?;
            if !stage.needed {
                continue;
            }
            for step in &stage.steps {
                let key = match &step.cache_key {
                    Some(k) => {
                        let short = k.strip_prefix("sha256:").unwrap_or(k);
                        let mark = if step.provisional { "~" } else { "" };
                        format!("  {mark}{}", &short[..12.min(short.len())])
                    }
                    None => String::new(),
                };
                writeln!(f, "  {:>4}  {}{key}", step.line, one_line(&step.text))?;
            }
        }
        if self
            .stages
            .iter()
            .any(|s| s.steps.iter().any(|st| st.provisional))
        {
            writeln!(
                f,
                "\n(~ key: completed at execution from context content or an image digest)"
            )?;
        }
        if !self.warnings.is_empty() {
            writeln!(f, "\nwarnings:")?;
            for w in &self.warnings {
                writeln!(f, "  {w}")?;
            }
        }
        Ok(())
    }
}

pub(super) fn arg_text(arg: &ArgValue) -> String {
    match &arg.value {
        Some(v) => format!("{}={v}", arg.name),
        None => arg.name.clone(),
    }
}

/// Long or multi-line step text, cut to one readable line.
fn one_line(text: &str) -> String {
    let first = text.lines().next().unwrap_or("");
    let mut shown: String = first.chars().take(100).collect();
    if shown.len() < text.len() {
        shown.push_str(" ...");
    }
    shown
}
