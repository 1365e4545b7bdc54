//! The planner: global ARGs, the split into stages at each FROM, and each
//! stage's base (an image, an earlier stage, or scratch) with the ONBUILD
//! triggers it brings.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use super::order::{needed_stages, schedule_groups, topological_order};
use super::{ArgValue, Base, Plan, PlanOptions, Platform, Stage, StageConfig, PROXY_ARGS};
use crate::dockerfile::{self, Command, Directives, Instruction};
use crate::expand::{expand_word, lookup_in};
use crate::{BuildError, Warning};

/// Variables in scope at one point of a stage.
#[derive(Clone, Debug, Default)]
pub(super) struct Scope {
    pub env: Vec<String>,
    pub args: Vec<ArgValue>,
}

impl Scope {
    pub(super) fn lookup(&self, name: &str) -> Option<String> {
        lookup_in(&self.env, name).or_else(|| {
            self.args
                .iter()
                .rev()
                .find(|a| a.name == name)
                .and_then(|a| a.value.clone())
        })
    }

    pub(super) fn set_arg(&mut self, arg: ArgValue) {
        self.args.retain(|a| a.name != arg.name);
        self.args.push(arg);
    }

    pub(super) fn set_env(&mut self, key: &str, value: &str) {
        let prefix = format!("{key}=");
        self.env.retain(|e| !e.starts_with(&prefix));
        self.env.push(format!("{key}={value}"));
    }
}

/// Compiles one Dockerfile for one set of options (see [`super::plan`]).
pub(super) struct Planner<'a> {
    pub options: &'a PlanOptions,
    pub directives: Directives,
    pub instructions: Vec<Instruction>,
    pub warnings: Vec<Warning>,
    pub target_platform: Platform,
    pub build_platform: Platform,
    /// Global ARGs plus the automatic platform ARGs.
    pub global: Scope,
    pub declared_global: Vec<ArgValue>,
    /// Every ARG name the Dockerfile declares (for unused build args).
    pub declared: BTreeSet<String>,
    /// Every stage name, to its index.
    pub stage_names: BTreeMap<String, usize>,
}

impl<'a> Planner<'a> {
    pub(super) fn new(
        parsed: dockerfile::Dockerfile,
        options: &'a PlanOptions,
    ) -> Result<Planner<'a>, BuildError> {
        let build_platform = match &options.build_platform {
            Some(p) => Platform::parse(p).map_err(BuildError::options)?,
            None => Platform::host(),
        };
        let target_platform = match &options.target_platform {
            Some(p) => Platform::parse(p).map_err(BuildError::options)?,
            None => build_platform.clone(),
        };
        let mut global = Scope::default();
        for (prefix, p) in [("TARGET", &target_platform), ("BUILD", &build_platform)] {
            for (suffix, value) in [
                ("PLATFORM", p.to_string()),
                ("OS", p.os.clone()),
                ("ARCH", p.arch.clone()),
                ("VARIANT", p.variant.clone().unwrap_or_default()),
            ] {
                global.set_arg(ArgValue {
                    name: format!("{prefix}{suffix}"),
                    value: Some(value),
                });
            }
        }
        Ok(Planner {
            options,
            directives: parsed.directives,
            instructions: parsed.instructions,
            warnings: parsed.warnings,
            target_platform,
            build_platform,
            global,
            declared_global: Vec::new(),
            declared: BTreeSet::new(),
            stage_names: BTreeMap::new(),
        })
    }

    pub(super) fn escape(&self) -> char {
        self.directives.escape
    }

    /// Compile the whole Dockerfile: global ARGs, then every stage
    /// (pass 1), the target and what it needs, then the keys (pass 2).
    pub(super) fn run(mut self) -> Result<Plan, BuildError> {
        let instructions = std::mem::take(&mut self.instructions);
        let first_from = self.global_args(&instructions)?;
        let stage_bodies = split_stages(&instructions, first_from);
        for (index, body) in stage_bodies.iter().enumerate() {
            if let Command::From {
                stage_name: Some(name),
                ..
            } = &body[0].command
            {
                self.stage_names.entry(name.clone()).or_insert(index);
            }
        }

        // Pass 1: resolve every stage (expansion, config, dependencies). An
        // error is kept with its stage: it only fails the build if the
        // target needs that stage, as in BuildKit.
        let mut stages: Vec<Stage> = Vec::new();
        let mut scopes: Vec<Scope> = Vec::new();
        for body in &stage_bodies {
            let (stage, scope) = self.compile_stage(body, &stages, &scopes, stage_bodies.len());
            stages.push(stage);
            scopes.push(scope);
        }

        let target = self.resolve_target(&stages)?;
        let needed = needed_stages(&stages, target);
        for stage in &mut stages {
            stage.needed = needed.contains(&stage.index);
        }
        if let Some(error) = stages
            .iter()
            .filter(|s| s.needed)
            .find_map(|s| s.error.clone())
        {
            return Err(error);
        }
        let order = topological_order(&stages, &needed)?;
        let schedule = schedule_groups(&stages, &order);

        // Pass 2: cache keys. Sources are always earlier stages, so file
        // order has every dependency keyed first; skipped stages get keys
        // too (unless they failed), which costs nothing and shows in JSON.
        for index in 0..stages.len() {
            if stages[index].error.is_none() {
                self.assign_keys(&mut stages, index);
            }
        }
        self.warn_unused_build_args();
        self.warnings.sort_by_key(|w| w.line);

        Ok(Plan {
            target,
            target_platform: self.target_platform.to_string(),
            build_platform: self.build_platform.to_string(),
            syntax: self.directives.syntax.clone(),
            global_args: self.declared_global.clone(),
            stages,
            schedule,
            warnings: self.warnings,
        })
    }

    /// The ARGs before the first FROM (nothing else may come there): the
    /// global scope. Returns the first FROM's index.
    fn global_args(&mut self, instructions: &[Instruction]) -> Result<usize, BuildError> {
        let first_from = instructions.iter().position(|i| i.keyword == "FROM");
        for instruction in &instructions[..first_from.unwrap_or(instructions.len())] {
            if !matches!(instruction.command, Command::Arg { .. }) {
                return Err(BuildError::at(
                    instruction.line,
                    Some(&instruction.keyword),
                    "only ARG may come before the first FROM",
                ));
            }
        }
        let first_from = first_from.ok_or_else(|| BuildError {
            file: "Dockerfile".into(),
            line: None,
            instruction: None,
            message: "no FROM instruction: a Dockerfile must start with FROM (after parser directives, comments and ARGs)".into(),
        })?;
        for instruction in &instructions[..first_from] {
            let Command::Arg { args } = &instruction.command else {
                continue;
            };
            for decl in args {
                self.declared.insert(decl.name.clone());
                let value = match self.options.build_args.get(&decl.name) {
                    Some(v) => Some(v.clone()),
                    None => match &decl.default {
                        Some(d) => Some(self.expand(&self.global.clone(), d, instruction)?),
                        None => None,
                    },
                };
                let arg = ArgValue {
                    name: decl.name.clone(),
                    value,
                };
                self.global.set_arg(arg.clone());
                self.declared_global.retain(|a| a.name != arg.name);
                self.declared_global.push(arg);
            }
        }
        Ok(first_from)
    }

    /// `--build-arg`s no ARG declares (predefined ones aside) do nothing:
    /// say so, as Docker does.
    fn warn_unused_build_args(&mut self) {
        for name in self.options.build_args.keys() {
            let predefined = PROXY_ARGS.contains(&name.as_str())
                || name.starts_with("BUILDKIT_")
                || name == "SOURCE_DATE_EPOCH";
            if !predefined && !self.declared.contains(name) {
                self.warnings.push(Warning {
                    line: None,
                    check: "UnusedBuildArg".into(),
                    message: format!(
                        "build argument {name} was not consumed: no ARG {name} in the Dockerfile"
                    ),
                });
            }
        }
    }

    fn resolve_target(&self, stages: &[Stage]) -> Result<usize, BuildError> {
        let Some(wanted) = &self.options.target else {
            return Ok(stages.len() - 1);
        };
        let lower = wanted.to_ascii_lowercase();
        stages
            .iter()
            .find(|s| s.name.as_deref() == Some(lower.as_str()))
            .map(|s| s.index)
            .ok_or_else(|| {
                let names: Vec<&str> = stages.iter().filter_map(|s| s.name.as_deref()).collect();
                BuildError::options(if names.is_empty() {
                    format!("target stage {wanted:?} could not be found: no stage has a name (FROM IMAGE AS NAME)")
                } else {
                    format!(
                        "target stage {wanted:?} could not be found; the named stages are: {}",
                        names.join(", ")
                    )
                })
            })
    }

    pub(super) fn expand(
        &self,
        scope: &Scope,
        text: &str,
        at: &Instruction,
    ) -> Result<String, BuildError> {
        expand_word(text, self.escape(), &|name| scope.lookup(name))
            .map_err(|e| BuildError::at(at.line, Some(&at.keyword), e))
    }

    /// Resolve one stage; errors are stored in the stage.
    fn compile_stage(
        &mut self,
        body: &[Instruction],
        earlier: &[Stage],
        earlier_scopes: &[Scope],
        stage_count: usize,
    ) -> (Stage, Scope) {
        let index = earlier.len();
        let from = &body[0];
        let Command::From {
            image,
            stage_name,
            platform,
        } = &from.command
        else {
            unreachable!("stages are split at FROM")
        };
        let mut stage = Stage {
            index,
            name: stage_name.clone(),
            line: from.line,
            base: Base::Scratch,
            platform: None,
            needed: false,
            depends_on: Vec::new(),
            steps: Vec::new(),
            config: StageConfig::default(),
            base_config_known: true,
            base_key: String::new(),
            final_key: String::new(),
            error: None,
            base_provisional: false,
        };
        if let Some(name) = stage_name {
            if earlier
                .iter()
                .any(|s| s.name.as_deref() == Some(name.as_str()))
            {
                stage.error = Some(BuildError::at(
                    from.line,
                    Some("FROM"),
                    format!("duplicate stage name {name:?}"),
                ));
                return (stage, Scope::default());
            }
        }
        let mut scope = Scope::default();
        match self.start_stage(
            &mut stage,
            &mut scope,
            from,
            image,
            platform.as_deref(),
            earlier,
            earlier_scopes,
        ) {
            Ok(()) => {}
            Err(e) => {
                stage.error = Some(e);
                return (stage, scope);
            }
        }
        let mut state = StageState::default();
        // ONBUILD triggers of the base (a stage, or an image whose config
        // is known) run first in the child, as if written right after its
        // FROM, and are not inherited further.
        let triggers = std::mem::take(&mut stage.config.on_build);
        let mut trigger_instructions = Vec::new();
        {
            for trigger in &triggers {
                let text = format!("# escape={}\n{trigger}", self.escape());
                match dockerfile::parse(&text) {
                    Ok(parsed) => {
                        for mut instruction in parsed.instructions {
                            instruction.line = from.line;
                            instruction.end_line = from.line;
                            trigger_instructions.push(instruction);
                        }
                    }
                    Err(e) => {
                        stage.error = Some(BuildError::at(from.line, Some("ONBUILD"), e.message));
                        return (stage, scope);
                    }
                }
            }
        }
        for instruction in trigger_instructions.iter().chain(&body[1..]) {
            if let Err(e) =
                self.compile_step(&mut stage, &mut scope, &mut state, instruction, stage_count)
            {
                stage.error = Some(e);
                break;
            }
        }
        stage.depends_on.sort_unstable();
        stage.depends_on.dedup();
        (stage, scope)
    }

    #[allow(clippy::too_many_arguments)]
    fn start_stage(
        &mut self,
        stage: &mut Stage,
        scope: &mut Scope,
        from: &Instruction,
        image: &str,
        platform: Option<&str>,
        earlier: &[Stage],
        earlier_scopes: &[Scope],
    ) -> Result<(), BuildError> {
        // FROM sees only the global ARGs; note any name it uses that none
        // declares (BuildKit's UndefinedArgInFrom check).
        let undefined = RefCell::new(Vec::new());
        let global = &self.global;
        let lookup = |name: &str| {
            let value = global.lookup(name);
            if value.is_none() && !global.args.iter().any(|a| a.name == name) {
                undefined.borrow_mut().push(name.to_string());
            }
            value
        };
        let fail = |e: String| BuildError::at(from.line, Some("FROM"), e);
        let reference = expand_word(image, self.escape(), &lookup).map_err(fail)?;
        stage.platform = match platform {
            Some(p) => Some(expand_word(p, self.escape(), &lookup).map_err(fail)?),
            None => None,
        };
        for name in undefined.into_inner() {
            self.warnings.push(Warning {
                line: Some(from.line),
                check: "UndefinedArgInFrom".into(),
                message: format!(
                    "FROM uses ${name}, which no ARG before the first FROM declares: it expands empty"
                ),
            });
        }
        if let Some(p) = &stage.platform {
            stage.platform = Some(crate::platforms::normalize(p).map_err(fail)?.to_string());
        }
        if reference.is_empty() {
            return Err(fail(format!("the base image {image:?} expands to nothing: give the ARG a default or a --build-arg")));
        }
        let lower = reference.to_ascii_lowercase();
        if let Some(base) = earlier
            .iter()
            .find(|s| s.name.as_deref() == Some(lower.as_str()))
        {
            stage.base = Base::Stage { index: base.index };
            stage.depends_on.push(base.index);
            stage.config = base.config.clone();
            stage.base_config_known = base.base_config_known;
            // A stage inherits its base stage's ARGs and ENV.
            *scope = earlier_scopes[base.index].clone();
        } else if lower == "scratch" {
            stage.base = Base::Scratch;
        } else {
            let on = stage.platform.clone();
            let on = on.unwrap_or_else(|| self.target_platform.to_string());
            let known = self.options.base_image(&reference, &on);
            stage.base = Base::Image {
                reference: reference.clone(),
                digest: known.and_then(|k| k.digest.clone()),
            };
            stage.base_config_known = known.is_some();
            if let Some(known) = known {
                if let Some(config) = &known.config {
                    stage.config = config.clone();
                }
                stage.config.env = known.env.clone();
                scope.env = known.env.clone();
            }
        }
        Ok(())
    }
}

/// The instructions from the first FROM on, split at each FROM.
fn split_stages(instructions: &[Instruction], first_from: usize) -> Vec<&[Instruction]> {
    let mut stage_bodies: Vec<&[Instruction]> = Vec::new();
    let mut start = first_from;
    for (i, instruction) in instructions.iter().enumerate().skip(first_from + 1) {
        if instruction.keyword == "FROM" {
            stage_bodies.push(&instructions[start..i]);
            start = i;
        }
    }
    stage_bodies.push(&instructions[start..]);
    stage_bodies
}

/// Per-stage counters for warnings and the CMD/ENTRYPOINT interplay.
#[derive(Default)]
pub(super) struct StageState {
    pub cmds: usize,
    pub entrypoints: usize,
    pub healthchecks: usize,
    pub cmd_set: bool,
}
