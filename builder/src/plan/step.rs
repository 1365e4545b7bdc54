//! One instruction of a stage into one step: its action, its config
//! change, its shown text; COPY/ADD's sources and destination resolved.

use std::collections::BTreeMap;

// EXPOSE and STOPSIGNAL are checked as `berth import --change` checks them.
use berth_client::import::{is_signal, parse_ports};

use super::display::arg_text;
use super::planner::{Planner, Scope, StageState};
use super::{
    Action, AddOptions, ArgValue, HealthConfig, InlineFile, Source, Stage, StageConfig, Step,
    DEFAULT_SHELL, PROXY_ARGS,
};
use crate::dockerfile::{
    self, ArgDecl, Command, CommandLine, Copy, Healthcheck, Heredoc, Instruction, KeyValue, Run,
};
use crate::expand::{expand_heredoc, expand_word, lookup_in};
use crate::mounts::{self, MountFrom};
use crate::{BuildError, Warning};

/// What compiling one instruction gives: the step's action, and its text
/// (for history and progress) when that is not the source as written:
/// expanded values, the ARG values the build uses.
type Compiled = (Action, Option<String>);

impl Planner<'_> {
    /// Compile one instruction of a stage into its step, one function per
    /// instruction (the shape of BuildKit's dispatch).
    pub(super) fn compile_step(
        &mut self,
        stage: &mut Stage,
        scope: &mut Scope,
        state: &mut StageState,
        instruction: &Instruction,
        stage_count: usize,
    ) -> Result<(), BuildError> {
        let workdir = stage
            .config
            .working_dir
            .clone()
            .unwrap_or_else(|| "/".into());
        let config = &mut stage.config;
        let (action, text) = match &instruction.command {
            Command::From { .. } => unreachable!("stages are split at FROM"),
            Command::Arg { args } => self.compile_arg(scope, args, instruction)?,
            Command::Env { vars, legacy } => {
                self.compile_env(config, scope, vars, *legacy, instruction)?
            }
            Command::Label { labels, legacy } => {
                self.compile_label(config, scope, labels, *legacy, instruction)?
            }
            Command::Maintainer { name } => self.compile_maintainer(config, name, instruction),
            Command::Run(run) => {
                let action =
                    self.compile_run(stage, scope, run, instruction, workdir, stage_count)?;
                (action, None)
            }
            Command::Cmd { command } => {
                self.once_per_stage(state, instruction);
                config.cmd = Some(self.command_argv(config, command, instruction));
                state.cmd_set = true;
                (Action::Config, None)
            }
            Command::Entrypoint { command } => {
                self.once_per_stage(state, instruction);
                config.entrypoint = Some(self.command_argv(config, command, instruction));
                // A new ENTRYPOINT drops a CMD inherited from the base, as
                // Docker does; one set in this stage stays.
                if !state.cmd_set {
                    config.cmd = None;
                }
                (Action::Config, None)
            }
            Command::Shell { shell } => {
                config.shell = Some(shell.clone());
                (Action::Config, None)
            }
            Command::Workdir { path } => {
                self.compile_workdir(config, scope, path, instruction, &workdir)?
            }
            Command::User { user } => self.compile_user(config, scope, user, instruction)?,
            Command::Expose { ports } => self.compile_expose(config, scope, ports, instruction)?,
            Command::Volume { paths } => self.compile_volume(config, scope, paths, instruction)?,
            Command::StopSignal { signal } => {
                self.compile_stop_signal(config, scope, signal, instruction)?
            }
            Command::Healthcheck { check } => {
                state.healthchecks += 1;
                if state.healthchecks == 2 {
                    self.multiple_warning(instruction);
                }
                config.healthcheck = Some(health_config(check.as_ref()));
                (Action::Config, None)
            }
            Command::OnBuild { trigger } => {
                // Stored as written: it is expanded when a child build runs it.
                config.on_build.push(trigger.source.clone());
                (Action::Config, None)
            }
            Command::Copy(copy) | Command::Add(copy) => {
                let (action, shown) =
                    self.copy_action(scope, stage, copy, instruction, &workdir, stage_count)?;
                (action, Some(shown))
            }
        };
        stage.steps.push(Step {
            line: instruction.line,
            instruction: instruction.keyword.clone(),
            text: text.unwrap_or_else(|| instruction.source.clone()),
            action,
            cache_key: None,
            key_material: None,
            provisional: false,
        });
        Ok(())
    }

    /// ARG: each name's value (`--build-arg`, the default, or the global
    /// one), shown with the values the build will use.
    fn compile_arg(
        &mut self,
        scope: &mut Scope,
        args: &[ArgDecl],
        instruction: &Instruction,
    ) -> Result<Compiled, BuildError> {
        let mut resolved = Vec::new();
        for decl in args {
            self.declared.insert(decl.name.clone());
            let value = match self.options.build_args.get(&decl.name) {
                Some(v) => Some(v.clone()),
                None => match &decl.default {
                    Some(d) => Some(self.expand(scope, d, instruction)?),
                    // `ARG NAME` inherits a global value.
                    None => self.global.lookup(&decl.name),
                },
            };
            let arg = ArgValue {
                name: decl.name.clone(),
                value,
            };
            scope.set_arg(arg.clone());
            resolved.push(arg);
        }
        // Show the values the build will use, not the defaults.
        let shown: Vec<String> = resolved.iter().map(arg_text).collect();
        let text = format!("ARG {}", shown.join(" "));
        Ok((Action::Arg { args: resolved }, Some(text)))
    }

    fn compile_env(
        &mut self,
        config: &mut StageConfig,
        scope: &mut Scope,
        vars: &[KeyValue],
        legacy: bool,
        instruction: &Instruction,
    ) -> Result<Compiled, BuildError> {
        if legacy {
            self.legacy_warning(instruction);
        }
        // Every substitution in one ENV sees the values from before
        // it (the reference: `ENV abc=bye def=$abc` uses the old abc).
        let mut pairs = Vec::new();
        for kv in vars {
            pairs.push(self.key_value(scope, kv, legacy, instruction)?);
        }
        let mut shown = Vec::new();
        for (k, v) in pairs {
            scope.set_env(&k, &v);
            shown.push(format!("{k}={v}"));
        }
        config.env = scope.env.clone();
        Ok((Action::Config, Some(format!("ENV {}", shown.join(" ")))))
    }

    fn compile_label(
        &mut self,
        config: &mut StageConfig,
        scope: &Scope,
        labels: &[KeyValue],
        legacy: bool,
        instruction: &Instruction,
    ) -> Result<Compiled, BuildError> {
        if legacy {
            self.legacy_warning(instruction);
        }
        let mut pairs = Vec::new();
        for kv in labels {
            pairs.push(self.key_value(scope, kv, legacy, instruction)?);
        }
        for (k, v) in pairs {
            config.labels.insert(k, v);
        }
        Ok((Action::Config, None))
    }

    fn compile_maintainer(
        &mut self,
        config: &mut StageConfig,
        name: &str,
        instruction: &Instruction,
    ) -> Compiled {
        self.warnings.push(Warning {
            line: Some(instruction.line),
            check: "MaintainerDeprecated".into(),
            message: "MAINTAINER is deprecated: use LABEL org.opencontainers.image.authors=..."
                .into(),
        });
        config.author = Some(name.to_string());
        (Action::Config, None)
    }

    /// RUN: the argv (the shell form under SHELL, heredoc bodies after its
    /// line), mounts (a `from=` stage is a dependency), network, security
    /// and the environment: ARGs in scope, then ENV.
    fn compile_run(
        &self,
        stage: &mut Stage,
        scope: &Scope,
        run: &Run,
        instruction: &Instruction,
        workdir: String,
        stage_count: usize,
    ) -> Result<Action, BuildError> {
        let config = &stage.config;
        let shell = config
            .shell
            .clone()
            .unwrap_or_else(|| DEFAULT_SHELL.iter().map(|s| s.to_string()).collect());
        let argv = match &run.command {
            CommandLine::Exec(argv) => argv.clone(),
            CommandLine::Shell(script) => {
                // A shell reads heredoc bodies after the line that
                // opens them.
                let mut full = script.clone();
                for h in &instruction.heredocs {
                    full.push('\n');
                    full.push_str(&h.body);
                    full.push_str(&h.name);
                }
                let mut argv = shell;
                argv.push(full);
                argv
            }
        };
        let user = config.user.clone();
        let mut expanded = Vec::new();
        for m in &run.mounts {
            expanded.push(self.expand(scope, m, instruction)?);
        }
        let fail = |m: String| BuildError::at(instruction.line, Some("RUN"), m);
        let mounts = mounts::parse_mounts(&expanded, &workdir, &mut |name| match find_stage(
            &self.stage_names,
            stage_count,
            name,
            stage.index,
            instruction,
        ) {
            Some(Ok(index)) => Ok(MountFrom::Stage { index }),
            Some(Err(e)) => Err(e.message.replace("cannot copy from", "cannot mount")),
            None => Ok(MountFrom::Image {
                reference: name.to_string(),
            }),
        })
        .map_err(fail)?;
        mounts::check_inputs(&mounts, &self.options.run_inputs).map_err(fail)?;
        for m in &mounts {
            if let Some(MountFrom::Stage { index }) = m.source() {
                stage.depends_on.push(*index);
            }
        }
        let network = opt_expand(self, scope, &run.network, instruction)?
            .or_else(|| self.options.run_inputs.network.clone());
        let security = opt_expand(self, scope, &run.security, instruction)?;
        mounts::parse_network(network.as_deref()).map_err(fail)?;
        mounts::parse_security(security.as_deref(), self.options.run_inputs.allow_insecure)
            .map_err(fail)?;
        // ARGs in scope, then ENV: ENV wins on a shared name.
        let mut env: Vec<String> = scope
            .args
            .iter()
            .filter(|a| lookup_in(&scope.env, &a.name).is_none())
            .filter_map(|a| a.value.as_ref().map(|v| format!("{}={v}", a.name)))
            .collect();
        env.extend(scope.env.iter().cloned());
        let uncached_env = PROXY_ARGS
            .iter()
            .filter(|p| !scope.args.iter().any(|a| a.name == **p))
            .filter_map(|p| self.options.build_args.get(*p).map(|v| format!("{p}={v}")))
            .collect();
        Ok(Action::Run {
            argv,
            heredocs: instruction.heredocs.clone(),
            env,
            uncached_env,
            user,
            workdir,
            mounts,
            network,
            security,
        })
    }

    /// WORKDIR: relative paths join the current one.
    fn compile_workdir(
        &self,
        config: &mut StageConfig,
        scope: &Scope,
        path: &str,
        instruction: &Instruction,
        workdir: &str,
    ) -> Result<Compiled, BuildError> {
        let expanded = self.expand(scope, path, instruction)?;
        if expanded.is_empty() {
            return Err(fail_at(instruction, "the path expands to nothing".into()));
        }
        let joined = if expanded.starts_with('/') {
            expanded
        } else {
            format!("{workdir}/{expanded}")
        };
        let resolved = crate::dockerignore::clean(&joined);
        config.working_dir = Some(resolved.clone());
        let text = format!("WORKDIR {resolved}");
        Ok((Action::Workdir { path: resolved }, Some(text)))
    }

    fn compile_user(
        &self,
        config: &mut StageConfig,
        scope: &Scope,
        user: &str,
        instruction: &Instruction,
    ) -> Result<Compiled, BuildError> {
        let expanded = self.expand(scope, user, instruction)?;
        if expanded.is_empty() {
            return Err(fail_at(instruction, "the user expands to nothing".into()));
        }
        let text = format!("USER {expanded}");
        config.user = Some(expanded);
        Ok((Action::Config, Some(text)))
    }

    fn compile_expose(
        &self,
        config: &mut StageConfig,
        scope: &Scope,
        ports: &[String],
        instruction: &Instruction,
    ) -> Result<Compiled, BuildError> {
        let mut shown = Vec::new();
        for p in ports {
            let expanded = self.expand(scope, p, instruction)?;
            for port in parse_ports(&expanded).map_err(|e| fail_at(instruction, e))? {
                config.exposed_ports.insert(port);
            }
            shown.push(expanded);
        }
        Ok((Action::Config, Some(format!("EXPOSE {}", shown.join(" ")))))
    }

    fn compile_volume(
        &self,
        config: &mut StageConfig,
        scope: &Scope,
        paths: &[String],
        instruction: &Instruction,
    ) -> Result<Compiled, BuildError> {
        for p in paths {
            let expanded = self.expand(scope, p, instruction)?;
            if expanded.trim().is_empty() {
                return Err(fail_at(
                    instruction,
                    format!("the volume {p:?} expands to nothing"),
                ));
            }
            config.volumes.insert(expanded);
        }
        Ok((Action::Config, None))
    }

    fn compile_stop_signal(
        &self,
        config: &mut StageConfig,
        scope: &Scope,
        signal: &str,
        instruction: &Instruction,
    ) -> Result<Compiled, BuildError> {
        let expanded = self.expand(scope, signal, instruction)?;
        if !is_signal(&expanded) {
            return Err(fail_at(
                instruction,
                format!(
                    "{expanded:?} is not a signal: use a name such as SIGTERM or SIGQUIT, or a number"
                ),
            ));
        }
        let text = format!("STOPSIGNAL {expanded}");
        config.stop_signal = Some(expanded);
        Ok((Action::Config, Some(text)))
    }

    /// COPY/ADD: `--from` (a stage is a dependency), sources (heredocs
    /// become inline files), the destination under WORKDIR, and the flags;
    /// returns the action and its shown text.
    fn copy_action(
        &self,
        scope: &Scope,
        stage: &mut Stage,
        copy: &Copy,
        instruction: &Instruction,
        workdir: &str,
        stage_count: usize,
    ) -> Result<(Action, String), BuildError> {
        let fail = |e: String| fail_at(instruction, e);
        let (from_name, from) = self.copy_from(stage, copy, instruction, stage_count)?;
        let (sources, inline_files) = self.copy_sources(scope, copy, instruction)?;
        let dest = self.expand(scope, &copy.dest, instruction)?;
        if dest.is_empty() {
            return Err(fail("the destination expands to nothing".into()));
        }
        if sources.len() + inline_files.len() > 1 && !dest.ends_with('/') {
            return Err(fail(format!(
                "with several sources the destination must be a directory ending in /: write {dest}/"
            )));
        }
        let resolved_dest = copy_destination(&dest, workdir);
        let mut exclude = Vec::new();
        for e in &copy.exclude {
            exclude.push(self.expand(scope, e, instruction)?);
        }
        let add = match &copy.add {
            Some(a) => Some(AddOptions {
                checksum: opt_expand(self, scope, &a.checksum, instruction)?,
                keep_git_dir: a.keep_git_dir,
                unpack: a.unpack,
            }),
            None => None,
        };
        let chown = opt_expand(self, scope, &copy.chown, instruction)?;
        let chmod = opt_expand(self, scope, &copy.chmod, instruction)?;
        crate::copyflags::check(
            &sources,
            copy.link,
            chown.as_deref(),
            add.as_ref(),
            &exclude,
        )
        .map_err(fail)?;
        let mut shown = vec![instruction.keyword.clone()];
        for (flag, value) in [("from", &from_name), ("chown", &chown), ("chmod", &chmod)] {
            if let Some(value) = value {
                shown.push(format!("--{flag}={value}"));
            }
        }
        if copy.link {
            shown.push("--link".into());
        }
        if copy.parents {
            shown.push("--parents".into());
        }
        shown.extend(exclude.iter().map(|e| format!("--exclude={e}")));
        shown.extend(sources.iter().cloned());
        shown.extend(inline_files.iter().map(|f| format!("<<{}", f.name)));
        shown.push(dest);
        Ok((
            Action::Copy {
                from,
                sources,
                inline_files,
                dest: resolved_dest,
                chown,
                chmod,
                link: copy.link,
                parents: copy.parents,
                exclude,
                add,
            },
            shown.join(" "),
        ))
    }

    /// `--from`: its name as written and what it names (a stage, which
    /// becomes a dependency, or an image). BuildKit refuses variables in
    /// --from (a stage's name must be known before any stage runs); so
    /// does Berth, with its advice.
    fn copy_from(
        &self,
        stage: &mut Stage,
        copy: &Copy,
        instruction: &Instruction,
        stage_count: usize,
    ) -> Result<(Option<String>, Source), BuildError> {
        let fail = |e: String| fail_at(instruction, e);
        let Some(raw) = &copy.from else {
            return Ok((None, Source::Context));
        };
        let name = expand_word(raw, self.escape(), &|_| None).map_err(fail)?;
        if name != *raw {
            return Err(fail(format!(
                "--from={raw}: variable expansion is not supported for --from; define a stage with FROM using a global ARG instead"
            )));
        }
        let source = match find_stage(
            &self.stage_names,
            stage_count,
            &name,
            stage.index,
            instruction,
        ) {
            Some(index) => {
                let index = index?;
                stage.depends_on.push(index);
                Source::Stage { index }
            }
            None => Source::Image {
                reference: name.clone(),
            },
        };
        Ok((Some(name), source))
    }

    /// The sources, expanded; a heredoc source becomes an inline file
    /// (its body expanded unless its marker was quoted).
    fn copy_sources(
        &self,
        scope: &Scope,
        copy: &Copy,
        instruction: &Instruction,
    ) -> Result<(Vec<String>, Vec<InlineFile>), BuildError> {
        let mut sources = Vec::new();
        let mut inline_files = Vec::new();
        for source in &copy.sources {
            if let Some(h) = heredoc_for(source, &instruction.heredocs) {
                let content = if h.expand {
                    expand_heredoc(&h.body, self.escape(), &|name| scope.lookup(name))
                        .map_err(|e| fail_at(instruction, e))?
                } else {
                    h.body.clone()
                };
                inline_files.push(InlineFile {
                    name: h.name.clone(),
                    content,
                });
                continue;
            }
            let expanded = self.expand(scope, source, instruction)?;
            if expanded.is_empty() {
                return Err(fail_at(
                    instruction,
                    format!("the source {source:?} expands to nothing"),
                ));
            }
            sources.push(expanded);
        }
        Ok((sources, inline_files))
    }

    fn key_value(
        &self,
        scope: &Scope,
        kv: &dockerfile::KeyValue,
        legacy: bool,
        at: &Instruction,
    ) -> Result<(String, String), BuildError> {
        if legacy {
            return Ok((
                self.expand(scope, &kv.key, at)?,
                self.expand(scope, &kv.value, at)?,
            ));
        }
        // The whole `K=V` word is processed, as BuildKit does, then split.
        let word = self.expand(scope, &format!("{}={}", kv.key, kv.value), at)?;
        let (k, v) = word.split_once('=').unwrap_or((word.as_str(), ""));
        if k.is_empty() {
            return Err(BuildError::at(
                at.line,
                Some(&at.keyword),
                format!("{:?} has an empty name", kv.key),
            ));
        }
        Ok((k.to_string(), v.to_string()))
    }

    fn command_argv(
        &mut self,
        config: &StageConfig,
        command: &CommandLine,
        at: &Instruction,
    ) -> Vec<String> {
        match command {
            CommandLine::Exec(argv) => argv.clone(),
            CommandLine::Shell(text) => {
                self.warnings.push(Warning {
                    line: Some(at.line),
                    check: "JSONArgsRecommended".into(),
                    message: format!(
                        "{} in shell form runs under a shell that does not pass signals on: prefer the JSON form, e.g. {} [\"prog\", \"arg\"]",
                        at.keyword, at.keyword
                    ),
                });
                let mut argv = config
                    .shell
                    .clone()
                    .unwrap_or_else(|| DEFAULT_SHELL.iter().map(|s| s.to_string()).collect());
                argv.push(text.clone());
                argv
            }
        }
    }

    fn once_per_stage(&mut self, state: &mut StageState, at: &Instruction) {
        let count = match at.keyword.as_str() {
            "CMD" => &mut state.cmds,
            _ => &mut state.entrypoints,
        };
        *count += 1;
        if *count == 2 {
            self.multiple_warning(at);
        }
    }

    fn multiple_warning(&mut self, at: &Instruction) {
        self.warnings.push(Warning {
            line: Some(at.line),
            check: "MultipleInstructionsDisallowed".into(),
            message: format!(
                "more than one {} in a stage: only the last one takes effect",
                at.keyword
            ),
        });
    }

    fn legacy_warning(&mut self, at: &Instruction) {
        self.warnings.push(Warning {
            line: Some(at.line),
            check: "LegacyKeyValueFormat".into(),
            message: format!(
                "\"{} key value\" is deprecated: write {} key=value",
                at.keyword, at.keyword
            ),
        });
    }
}

fn opt_expand(
    planner: &Planner<'_>,
    scope: &Scope,
    value: &Option<String>,
    at: &Instruction,
) -> Result<Option<String>, BuildError> {
    value
        .as_ref()
        .map(|v| planner.expand(scope, v, at))
        .transpose()
}

/// COPY's destination, absolute (under WORKDIR when relative) and cleaned;
/// a trailing `/` (or `.`) stays, as it says "a directory".
fn copy_destination(dest: &str, workdir: &str) -> String {
    let absolute = if dest.starts_with('/') {
        dest.to_string()
    } else {
        format!("{}/{dest}", workdir.trim_end_matches('/'))
    };
    let mut resolved = crate::dockerignore::clean(&absolute);
    if (dest.ends_with('/') || dest == "." || dest.ends_with("/.")) && !resolved.ends_with('/') {
        resolved.push('/');
    }
    resolved
}

/// An error at `instruction`'s line.
fn fail_at(instruction: &Instruction, message: String) -> BuildError {
    BuildError::at(instruction.line, Some(&instruction.keyword), message)
}

/// HEALTHCHECK's config: `NONE` disables the base image's check.
fn health_config(check: Option<&Healthcheck>) -> HealthConfig {
    match check {
        None => HealthConfig {
            test: vec!["NONE".into()],
            ..Default::default()
        },
        Some(h) => HealthConfig {
            test: match &h.test {
                CommandLine::Exec(argv) => std::iter::once("CMD".to_string())
                    .chain(argv.iter().cloned())
                    .collect(),
                CommandLine::Shell(text) => vec!["CMD-SHELL".into(), text.clone()],
            },
            interval: h.interval.unwrap_or(0),
            timeout: h.timeout.unwrap_or(0),
            start_period: h.start_period.unwrap_or(0),
            start_interval: h.start_interval.unwrap_or(0),
            retries: h.retries.map(u64::from).unwrap_or(0),
        },
    }
}

/// The heredoc a COPY source like `<<EOF` or `<<-"EOF"` names.
fn heredoc_for<'h>(source: &str, heredocs: &'h [Heredoc]) -> Option<&'h Heredoc> {
    let rest = source
        .trim_start_matches(|c: char| c.is_ascii_digit())
        .strip_prefix("<<")?;
    let rest = rest.strip_prefix('-').unwrap_or(rest);
    let name: String = rest.chars().filter(|c| *c != '"' && *c != '\'').collect();
    heredocs.iter().find(|h| h.name == name)
}

/// A `--from` value naming a stage: by index (`0`) or by name. `None`
/// means it names an image; `Some(Err)` a stage it may not use (itself, or
/// one defined after it).
fn find_stage(
    stage_names: &BTreeMap<String, usize>,
    stage_count: usize,
    name: &str,
    current: usize,
    at: &Instruction,
) -> Option<Result<usize, BuildError>> {
    let fail = |message: String| Some(Err(BuildError::at(at.line, Some(&at.keyword), message)));
    let found = match name.parse::<usize>() {
        Ok(n) if n >= stage_count => {
            return fail(format!(
                "--from={n}: there is no stage {n} (stages are numbered from 0, and there are {stage_count})"
            ))
        }
        Ok(n) => n,
        Err(_) => *stage_names.get(&name.to_ascii_lowercase())?,
    };
    if found == current {
        return fail(format!("--from={name} names the stage it is in"));
    }
    // Stages run in file order as far as sources go (BuildKit's rule).
    if found > current {
        return fail(format!(
            "cannot copy from stage {name:?}: it must be defined before the current stage ({current})"
        ));
    }
    Some(Ok(found))
}
