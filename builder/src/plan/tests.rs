//! Plan tests: the reference's ARG/ENV scoping examples, multi-stage
//! selection and ordering, cache key behaviour, and the resulting config.

use super::*;

fn options() -> PlanOptions {
    PlanOptions {
        build_platform: Some("linux/amd64".into()),
        ..Default::default()
    }
}

fn with_args(args: &[(&str, &str)]) -> PlanOptions {
    let mut o = options();
    for (k, v) in args {
        o.build_args.insert(k.to_string(), v.to_string());
    }
    o
}

fn ok(text: &str, options: &PlanOptions) -> Plan {
    match plan(text, options) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

fn err(text: &str, options: &PlanOptions) -> String {
    plan(text, options).unwrap_err().to_string()
}

fn step_texts(plan: &Plan, stage: usize) -> Vec<String> {
    plan.stages[stage]
        .steps
        .iter()
        .map(|s| s.text.clone())
        .collect()
}

fn run_env(step: &Step) -> &[String] {
    match &step.action {
        Action::Run { env, .. } => env,
        other => panic!("not RUN: {other:?}"),
    }
}

fn image(plan: &Plan, stage: usize) -> String {
    match &plan.stages[stage].base {
        Base::Image { reference, .. } => reference.clone(),
        other => panic!("not an image base: {other:?}"),
    }
}

#[test]
fn global_args_are_for_from_lines() {
    let text = "ARG  CODE_VERSION=latest\nFROM base:${CODE_VERSION}\nCMD  /code/run-app\n\nFROM extras:${CODE_VERSION}\nCMD  /code/run-extras\n";
    let p = ok(text, &options());
    assert_eq!(image(&p, 0), "base:latest");
    assert_eq!(image(&p, 1), "extras:latest");
    assert_eq!(
        p.global_args,
        vec![ArgValue {
            name: "CODE_VERSION".into(),
            value: Some("latest".into())
        }]
    );
    let p = ok(text, &with_args(&[("CODE_VERSION", "1.2")]));
    assert_eq!(image(&p, 1), "extras:1.2");

    // Outside FROM a global ARG is not in scope until re-declared.
    let text = "ARG VERSION=latest\nFROM busybox:$VERSION\nWORKDIR /v$VERSION\nARG VERSION\nRUN echo $VERSION > image_version\n";
    let p = ok(text, &options());
    assert_eq!(image(&p, 0), "busybox:latest");
    assert_eq!(step_texts(&p, 0)[0], "WORKDIR /v");
    assert!(run_env(&p.stages[0].steps[2]).contains(&"VERSION=latest".to_string()));
    let p = ok(text, &with_args(&[("VERSION", "9")]));
    assert!(run_env(&p.stages[0].steps[2]).contains(&"VERSION=9".to_string()));
}

#[test]
fn arg_scope_starts_at_its_line() {
    // The reference's example, built with --build-arg username=what_user.
    let text = "FROM busybox\nUSER ${username:-some_user}\nARG username\nUSER $username\n";
    let p = ok(text, &with_args(&[("username", "what_user")]));
    assert_eq!(
        step_texts(&p, 0),
        vec!["USER some_user", "ARG username=what_user", "USER what_user"]
    );
    assert_eq!(p.stages[0].config.user.as_deref(), Some("what_user"));
    // Without a value the ARG is declared but unset.
    let err = err(text, &options());
    assert!(
        err.contains("Dockerfile:4: USER: the user expands to nothing"),
        "{err}"
    );
}

#[test]
fn env_overrides_arg_and_substitutions_see_earlier_values() {
    let text = "FROM ubuntu\nARG CONT_IMG_VER\nENV CONT_IMG_VER=v1.0.0\nRUN echo $CONT_IMG_VER\n";
    let p = ok(text, &with_args(&[("CONT_IMG_VER", "v2.0.1")]));
    assert_eq!(run_env(&p.stages[0].steps[2]), ["CONT_IMG_VER=v1.0.0"]);

    let text = "FROM ubuntu\nARG CONT_IMG_VER\nENV CONT_IMG_VER=${CONT_IMG_VER:-v1.0.0}\nRUN echo $CONT_IMG_VER\n";
    let with = ok(text, &with_args(&[("CONT_IMG_VER", "v2.0.1")]));
    assert_eq!(with.stages[0].config.env, ["CONT_IMG_VER=v2.0.1"]);
    let without = ok(text, &options());
    assert_eq!(without.stages[0].config.env, ["CONT_IMG_VER=v1.0.0"]);

    // ENV abc=bye def=$abc uses the abc from before the instruction.
    let p = ok(
        "FROM x\nENV abc=hello\nENV abc=bye def=$abc\nENV ghi=$abc\n",
        &options(),
    );
    assert_eq!(p.stages[0].config.env, ["abc=bye", "def=hello", "ghi=bye"]);
    assert_eq!(step_texts(&p, 0)[1], "ENV abc=bye def=hello");

    // Quotes and escapes in values, and the legacy form.
    let p = ok(
        "FROM x\nENV MY_NAME=\"John Doe\" MY_DOG=Rex\\ The\\ Dog\nENV ONE TWO= THREE=world\n",
        &options(),
    );
    assert_eq!(
        p.stages[0].config.env,
        [
            "MY_NAME=John Doe",
            "MY_DOG=Rex The Dog",
            "ONE=TWO= THREE=world"
        ]
    );
    assert!(p
        .warnings
        .iter()
        .any(|w| w.check == "LegacyKeyValueFormat" && w.line == Some(3)));
}

#[test]
fn base_image_env_expands_when_known() {
    let text = "FROM golang:1.22\nENV PATH=/app/bin:$PATH\n";
    let p = ok(text, &options());
    assert!(!p.stages[0].base_config_known);
    assert_eq!(p.stages[0].config.env, ["PATH=/app/bin:"]);
    let mut o = options();
    o.base_images.insert(
        "golang:1.22".into(),
        BaseImage {
            digest: Some("sha256:abc".into()),
            env: vec!["PATH=/usr/local/go/bin:/usr/bin".into()],
            config: None,
        },
    );
    let p = ok(text, &o);
    assert!(p.stages[0].base_config_known);
    assert_eq!(
        p.stages[0].config.env,
        ["PATH=/app/bin:/usr/local/go/bin:/usr/bin"]
    );
    assert_eq!(
        p.stages[0].base,
        Base::Image {
            reference: "golang:1.22".into(),
            digest: Some("sha256:abc".into())
        }
    );
}

#[test]
fn platform_args() {
    let text = "FROM --platform=$BUILDPLATFORM golang AS build\nARG TARGETOS TARGETARCH TARGETVARIANT\nRUN GOOS=$TARGETOS GOARCH=$TARGETARCH go build\nFROM alpine\nRUN echo $TARGETPLATFORM\n";
    let mut o = options();
    o.target_platform = Some("linux/arm64/v8".into());
    let p = ok(text, &o);
    assert_eq!(p.stages[0].platform.as_deref(), Some("linux/amd64"));
    let env = run_env(&p.stages[0].steps[1]);
    assert_eq!(
        env,
        ["TARGETOS=linux", "TARGETARCH=arm64", "TARGETVARIANT=v8"]
    );
    // Not re-declared: not in the stage.
    assert!(run_env(&p.stages[1].steps[0]).is_empty());
    assert_eq!(p.target_platform, "linux/arm64/v8");
    // Global ARG defaults can use them.
    let p = ok("ARG IMG=base-$TARGETARCH\nFROM $IMG\n", &o);
    assert_eq!(image(&p, 0), "base-arm64");
    assert!(plan(
        "FROM x",
        &PlanOptions {
            target_platform: Some("arm64".into()),
            ..options()
        }
    )
    .unwrap_err()
    .to_string()
    .contains("OS/ARCH"));
}

#[test]
fn proxy_args_stay_out_of_the_key_unless_declared() {
    let text = "FROM x\nRUN apt-get update\n";
    let a = ok(text, &with_args(&[("HTTP_PROXY", "http://a:3128")]));
    let b = ok(text, &with_args(&[("HTTP_PROXY", "http://b:3128")]));
    let run_a = &a.stages[0].steps[0];
    match &run_a.action {
        Action::Run {
            env, uncached_env, ..
        } => {
            assert!(env.is_empty());
            assert_eq!(uncached_env, &["HTTP_PROXY=http://a:3128"]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(run_a.cache_key, b.stages[0].steps[0].cache_key);
    assert!(a.warnings.is_empty(), "{:?}", a.warnings);

    let text = "FROM x\nARG HTTP_PROXY\nRUN apt-get update\n";
    let a = ok(text, &with_args(&[("HTTP_PROXY", "http://a:3128")]));
    let b = ok(text, &with_args(&[("HTTP_PROXY", "http://b:3128")]));
    assert_ne!(
        a.stages[0].steps[1].cache_key,
        b.stages[0].steps[1].cache_key
    );
}

#[test]
fn unused_build_args_are_warned_about() {
    let p = ok(
        "ARG A\nFROM x\nARG B\n",
        &with_args(&[("A", "1"), ("B", "2"), ("C", "3"), ("https_proxy", "p")]),
    );
    let unused: Vec<&str> = p
        .warnings
        .iter()
        .filter(|w| w.check == "UnusedBuildArg")
        .map(|w| w.message.as_str())
        .collect();
    assert_eq!(
        unused,
        ["build argument C was not consumed: no ARG C in the Dockerfile"]
    );
}

const MULTI: &str = "\
FROM golang:1.22 AS build
WORKDIR /src
COPY . .
RUN go build -o /app ./cmd

FROM node:20 AS assets
COPY web/ /web/
RUN npm run build

FROM alpine AS test
COPY --from=build /app /app
RUN /app -test

FROM scratch AS prod
COPY --from=build /app /app
COPY --from=1 /web/dist /static/
COPY --from=nginx:latest /etc/nginx/nginx.conf /nginx.conf
ENTRYPOINT [\"/app\"]
";

#[test]
fn stages_targets_and_parallel_groups() {
    let p = ok(MULTI, &options());
    assert_eq!(p.target, 3);
    let names: Vec<Option<&str>> = p.stages.iter().map(|s| s.name.as_deref()).collect();
    assert_eq!(
        names,
        [Some("build"), Some("assets"), Some("test"), Some("prod")]
    );
    assert_eq!(p.stages[3].depends_on, [0, 1]);
    assert_eq!(p.stages[3].base, Base::Scratch);
    let needed: Vec<bool> = p.stages.iter().map(|s| s.needed).collect();
    assert_eq!(needed, [true, true, false, true]);
    assert_eq!(p.schedule, vec![vec![0, 1], vec![3]]);
    match &p.stages[3].steps[2].action {
        Action::Copy { from, dest, .. } => {
            assert_eq!(
                from,
                &Source::Image {
                    reference: "nginx:latest".into()
                }
            );
            assert_eq!(dest, "/nginx.conf");
        }
        other => panic!("{other:?}"),
    }
    match &p.stages[3].steps[1].action {
        Action::Copy { from, dest, .. } => {
            assert_eq!(from, &Source::Stage { index: 1 });
            assert_eq!(dest, "/static/");
        }
        other => panic!("{other:?}"),
    }

    let mut o = options();
    o.target = Some("TEST".into());
    let p = ok(MULTI, &o);
    assert_eq!(p.target, 2);
    assert_eq!(p.schedule, vec![vec![0], vec![2]]);
    o.target = Some("nope".into());
    let e = err(MULTI, &o);
    assert_eq!(
        e,
        "target stage \"nope\" could not be found; the named stages are: build, assets, test, prod"
    );
}

#[test]
fn from_an_earlier_stage_inherits_config_args_and_onbuild() {
    let text = "\
FROM alpine AS base
ARG LEVEL=3
ENV APP=/srv
WORKDIR /srv
ONBUILD RUN echo triggered
CMD [\"sh\"]

FROM base AS dev
RUN echo $LEVEL

FROM BASE
";
    let p = ok(text, &options());
    assert_eq!(p.stages[1].base, Base::Stage { index: 0 });
    assert_eq!(
        p.stages[2].base,
        Base::Stage { index: 0 },
        "stage names are case-insensitive"
    );
    let dev = &p.stages[1];
    // The trigger runs first, at the FROM line, and is not inherited.
    assert_eq!(dev.steps[0].text, "RUN echo triggered");
    assert_eq!(dev.steps[0].line, 8);
    assert!(dev.config.on_build.is_empty());
    assert_eq!(p.stages[0].config.on_build, ["RUN echo triggered"]);
    assert_eq!(run_env(&dev.steps[1]), ["LEVEL=3", "APP=/srv"]);
    assert_eq!(dev.config.working_dir.as_deref(), Some("/srv"));
    assert_eq!(dev.config.cmd, Some(vec!["sh".to_string()]));
    assert_eq!(p.schedule, vec![vec![0], vec![2]]);
    // The base stage's key is the child's starting point.
    assert_eq!(p.stages[1].base_key, p.stages[0].final_key);
}

#[test]
fn copy_from_errors() {
    for (text, needle) in [
        (
            "FROM a AS one\nCOPY --from=one x y\n",
            "names the stage it is in",
        ),
        (
            "FROM a AS one\nCOPY --from=two x y\nFROM b AS two\nFROM one\n",
            "must be defined before",
        ),
        ("FROM a\nCOPY --from=5 x y\n", "there is no stage 5"),
        (
            "ARG S=a\nFROM a\nCOPY --from=$S x y\n",
            "variable expansion is not supported for --from",
        ),
        ("FROM a AS x\nFROM b AS X\n", "duplicate stage name"),
        (
            "FROM a AS first\nRUN --mount=type=bind,from=later,target=/x true\nFROM b AS later\nFROM first\n",
            "must be defined before",
        ),
    ] {
        let e = err(text, &options());
        assert!(e.contains(needle), "{text}: {e}");
        assert!(e.starts_with("Dockerfile:"), "{e}");
    }
}

#[test]
fn errors_in_skipped_stages_do_not_fail_the_build() {
    let text = "FROM a AS broken\nUSER $NOBODY\nFROM b AS good\nRUN true\n";
    let mut o = options();
    o.target = Some("good".into());
    assert!(plan(text, &o).is_ok());
    o.target = Some("broken".into());
    assert!(err(text, &o).contains("Dockerfile:2: USER"));
}

#[test]
fn run_mount_from_a_stage_is_a_dependency() {
    let p = ok(
        "FROM a AS config\nFROM b\nRUN --mount=from=config,target=/opt/appconfig cat /opt/appconfig/x\n",
        &options(),
    );
    assert_eq!(p.stages[1].depends_on, [0]);
    assert!(p.stages[0].needed);
}

#[test]
fn cache_keys_chain_through_layers_only() {
    let base = "FROM alpine\nRUN apk add curl\nCMD [\"a\"]\nRUN echo two\nLABEL x=1\n";
    let a = ok(base, &options());
    let keys = |p: &Plan| -> Vec<Option<String>> {
        p.stages[0]
            .steps
            .iter()
            .map(|s| s.cache_key.clone())
            .collect()
    };
    let ka = keys(&a);
    assert!(ka[0].is_some() && ka[1].is_none() && ka[2].is_some() && ka[3].is_none());
    // Same input, same keys.
    assert_eq!(ka, keys(&ok(base, &options())));
    // A metadata change invalidates no layer.
    let b = ok(&base.replace("[\"a\"]", "[\"b\"]"), &options());
    assert_eq!(ka, keys(&b));
    // A changed RUN changes its key and every key after it.
    let c = ok(&base.replace("curl", "wget"), &options());
    let kc = keys(&c);
    assert_ne!(ka[0], kc[0]);
    assert_ne!(ka[2], kc[2]);
    // ENV reaches RUN's key; the base image too.
    let d = ok(&base.replace("CMD [\"a\"]", "ENV X=1"), &options());
    assert_eq!(ka[0], keys(&d)[0]);
    assert_ne!(ka[2], keys(&d)[2]);
    let e = ok(&base.replace("alpine", "debian"), &options());
    assert_ne!(ka[0], keys(&e)[0]);
    assert!(
        a.stages[0].steps[0].provisional,
        "the base digest is unknown"
    );
    assert_eq!(a.stages[0].final_key, ka[2].clone().unwrap());
}

#[test]
fn arg_values_change_keys_from_first_use() {
    let text = "FROM scratch\nRUN one\nARG V\nRUN two\n";
    let a = ok(text, &with_args(&[("V", "1")]));
    let b = ok(text, &with_args(&[("V", "2")]));
    assert_eq!(
        a.stages[0].steps[0].cache_key,
        b.stages[0].steps[0].cache_key
    );
    assert_ne!(
        a.stages[0].steps[2].cache_key,
        b.stages[0].steps[2].cache_key
    );
    assert!(
        !a.stages[0].steps[0].provisional,
        "scratch needs nothing resolved"
    );
}

#[test]
fn context_copies_are_provisional_and_chain_key_recomputes() {
    let p = ok("FROM scratch\nCOPY app /app\nRUN x\n", &options());
    let copy = &p.stages[0].steps[0];
    let run = &p.stages[0].steps[1];
    assert!(copy.provisional && run.provisional);
    let material = copy.key_material.clone().unwrap();
    // The executor's recomputation with the real content digest.
    let real = chain_key(&p.stages[0].base_key, &material, Some("sha256:content"));
    assert_ne!(Some(real.clone()), copy.cache_key);
    let placeholder = chain_key(&p.stages[0].base_key, &material, Some(PENDING_CONTEXT));
    assert_eq!(Some(placeholder), copy.cache_key);
    let next = chain_key(&real, run.key_material.as_deref().unwrap(), None);
    assert!(next.starts_with("sha256:") && next.len() == 71);
    // ADD --checksum names its content: nothing pending.
    let p = ok(
        "FROM scratch\nADD --checksum=sha256:24454f830cdb571e2c4ad15481119c43b3cafd48dd869a9b2945d1036d1dc68d https://example.com/a.tgz /\n",
        &options(),
    );
    assert!(!p.stages[0].steps[0].provisional);
}

#[test]
fn copy_heredocs_expand_unless_quoted() {
    let text = "FROM scratch\nARG FOO=bar\nCOPY <<-EOT /script.sh\n\techo \"hello ${FOO}\"\nEOT\nCOPY <<-\"EOT\" /raw.sh\n\techo \"hello ${FOO}\"\nEOT\n";
    let p = ok(text, &options());
    let file = |i: usize| match &p.stages[0].steps[i].action {
        Action::Copy {
            inline_files,
            sources,
            dest,
            ..
        } => {
            assert!(sources.is_empty());
            (inline_files[0].clone(), dest.clone())
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(file(1).0.content, "echo \"hello bar\"\n");
    assert_eq!(file(1).1, "/script.sh");
    assert_eq!(file(2).0.content, "echo \"hello ${FOO}\"\n");
    assert!(
        !p.stages[0].steps[1].provisional,
        "inline content is in the key"
    );
}

#[test]
fn run_heredoc_and_shell_argv() {
    let p = ok(
        "FROM debian\nSHELL [\"/bin/bash\", \"-c\"]\nRUN <<EOT bash\n  set -ex\nEOT\nRUN [\"echo\", \"$HOME\"]\n",
        &options(),
    );
    match &p.stages[0].steps[1].action {
        Action::Run { argv, heredocs, .. } => {
            assert_eq!(argv, &["/bin/bash", "-c", "<<EOT bash\n  set -ex\nEOT"]);
            assert_eq!(heredocs.len(), 1);
        }
        other => panic!("{other:?}"),
    }
    match &p.stages[0].steps[2].action {
        Action::Run { argv, .. } => {
            assert_eq!(argv, &["echo", "$HOME"], "exec form is not expanded")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn copy_destinations_and_expansion() {
    let text = "FROM x\nENV FOO=/bar\nWORKDIR /usr/src/app\nCOPY test.txt rel/\nADD . $FOO\nCOPY \\$FOO /quux\nCOPY a b ./\nCOPY --chown=$UID:0 --chmod=755 x y\n";
    let p = ok(text, &with_args(&[]));
    let dests: Vec<String> = p.stages[0]
        .steps
        .iter()
        .filter_map(|s| match &s.action {
            Action::Copy { dest, sources, .. } => Some(format!("{}->{dest}", sources.join(","))),
            _ => None,
        })
        .collect();
    assert_eq!(
        dests,
        [
            "test.txt->/usr/src/app/rel/",
            ".->/bar",
            "$FOO->/quux",
            "a,b->/usr/src/app/",
            "x->/usr/src/app/y"
        ]
    );
    assert_eq!(step_texts(&p, 0)[3], "ADD . /bar");
    assert!(err("FROM x\nCOPY a b /dir\n", &options()).contains("must be a directory ending in /"));
}

#[test]
fn workdir_resolves_relative_paths() {
    let p = ok(
        "FROM x\nWORKDIR /a\nWORKDIR b\nWORKDIR c\nENV DIRPATH=/path\nWORKDIR $DIRPATH/sub/..\n",
        &options(),
    );
    let paths: Vec<&str> = p.stages[0]
        .steps
        .iter()
        .filter_map(|s| match &s.action {
            Action::Workdir { path } => Some(path.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(paths, ["/a", "/a/b", "/a/b/c", "/path"]);
    assert!(
        p.stages[0].steps[0].cache_key.is_some(),
        "WORKDIR creates a directory"
    );
}

#[test]
fn config_follows_docker() {
    let text = "\
FROM x
CMD [\"base\"]
ENTRYPOINT [\"/init\"]
LABEL \"com.example.vendor\"=\"ACME Incorporated\" version=1.0
EXPOSE 80 53/udp 8000-8001/TCP
VOLUME [\"/data\"]
VOLUME /logs /cache
USER app:app
STOPSIGNAL SIGQUIT
HEALTHCHECK --interval=5m --timeout=3s CMD curl -f http://localhost/ || exit 1
SHELL [\"/bin/bash\", \"-c\"]
ONBUILD ADD . /app/src
MAINTAINER Sven <sven@example.com>
";
    let p = ok(text, &options());
    let c = &p.stages[0].config;
    // CMD set in this stage survives a later ENTRYPOINT.
    assert_eq!(c.cmd, Some(vec!["base".to_string()]));
    assert_eq!(c.entrypoint, Some(vec!["/init".to_string()]));
    assert_eq!(c.labels["com.example.vendor"], "ACME Incorporated");
    assert_eq!(
        c.exposed_ports.iter().collect::<Vec<_>>(),
        ["53/udp", "80/tcp", "8000/tcp", "8001/tcp"]
    );
    assert_eq!(
        c.volumes.iter().collect::<Vec<_>>(),
        ["/cache", "/data", "/logs"]
    );
    assert_eq!(c.user.as_deref(), Some("app:app"));
    assert_eq!(c.stop_signal.as_deref(), Some("SIGQUIT"));
    let h = c.healthcheck.clone().unwrap();
    assert_eq!(h.test, ["CMD-SHELL", "curl -f http://localhost/ || exit 1"]);
    assert_eq!(
        (h.interval, h.timeout, h.retries),
        (300_000_000_000, 3_000_000_000, 0)
    );
    assert_eq!(
        c.shell,
        Some(vec!["/bin/bash".to_string(), "-c".to_string()])
    );
    assert_eq!(c.on_build, ["ADD . /app/src"]);
    assert_eq!(c.author.as_deref(), Some("Sven <sven@example.com>"));
    assert!(p.warnings.iter().any(|w| w.check == "MaintainerDeprecated"));
    let json = serde_json::to_value(c).unwrap();
    assert_eq!(json["Healthcheck"]["Interval"], 300_000_000_000u64);
    assert_eq!(json["WorkingDir"], serde_json::Value::Null);

    // An inherited CMD is dropped by a new ENTRYPOINT; shell forms use SHELL.
    let p = ok("FROM x AS a\nCMD [\"x\"]\nFROM a\nSHELL [\"/bin/ash\", \"-c\"]\nENTRYPOINT exec top -b\nHEALTHCHECK NONE\n", &options());
    let c = &p.stages[1].config;
    assert_eq!(c.cmd, None);
    assert_eq!(
        c.entrypoint,
        Some(vec!["/bin/ash".into(), "-c".into(), "exec top -b".into()])
    );
    assert_eq!(c.healthcheck.as_ref().unwrap().test, ["NONE"]);
    assert!(p
        .warnings
        .iter()
        .any(|w| w.check == "JSONArgsRecommended" && w.line == Some(5)));
}

#[test]
fn config_errors() {
    for (text, needle) in [
        ("FROM x\nEXPOSE 99999\n", "Dockerfile:2: EXPOSE: \"99999\""),
        ("FROM x\nEXPOSE 80/icmp\n", "not tcp, udp or sctp"),
        (
            "FROM x\nSTOPSIGNAL SIGNOPE\n",
            "STOPSIGNAL: \"SIGNOPE\" is not a signal",
        ),
        (
            "FROM x\nENV A=${B:?required}\n",
            "Dockerfile:2: ENV: B: required",
        ),
        (
            "RUN x\n",
            "Dockerfile:1: RUN: only ARG may come before the first FROM",
        ),
        ("ARG A\n", "no FROM instruction"),
        (
            "ARG IMG\nFROM $IMG\n",
            "FROM: the base image \"$IMG\" expands to nothing",
        ),
        ("FROM --platform=linux x\n", "invalid platform"),
    ] {
        let e = err(text, &options());
        assert!(e.contains(needle), "{text}: {e}");
    }
    let p = ok("FROM x\nSTOPSIGNAL 9\nSTOPSIGNAL SIGRTMIN+3\n", &options());
    assert_eq!(
        p.stages[0].config.stop_signal.as_deref(),
        Some("SIGRTMIN+3")
    );
}

#[test]
fn undefined_args_in_from_and_repeated_instructions_warn() {
    let p = ok("FROM base:$TAG\nCMD a\nCMD b\n", &options());
    assert!(p
        .warnings
        .iter()
        .any(|w| w.check == "UndefinedArgInFrom" && w.line == Some(1)));
    assert!(p
        .warnings
        .iter()
        .any(|w| w.check == "MultipleInstructionsDisallowed" && w.line == Some(3)));
}

#[test]
fn plan_prints_and_serialises() {
    let p = ok(MULTI, &options());
    let text = p.to_string();
    assert!(
        text.contains("target: stage 3 (prod) for linux/amd64"),
        "{text}"
    );
    assert!(text.contains("1. 0 (build), 1 (assets)"), "{text}");
    assert!(
        text.contains("stage 2 (test) FROM alpine (line 10)  [skipped"),
        "{text}"
    );
    assert!(text.contains("COPY --from=build /app /app"), "{text}");
    let json = serde_json::to_value(&p).unwrap();
    assert_eq!(json["stages"][3]["steps"][0]["action"]["kind"], "copy");
    assert_eq!(
        json["stages"][3]["steps"][0]["action"]["from"]["kind"],
        "stage"
    );
    assert_eq!(json["schedule"], serde_json::json!([[0, 1], [3]]));
}

#[test]
fn onbuild_triggers_of_a_known_base_image_run_first() {
    let mut o = options();
    o.base_images.insert(
        "base:1".into(),
        BaseImage {
            digest: Some("sha256:abc".into()),
            env: vec!["PATH=/bin".into()],
            config: Some(StageConfig {
                on_build: vec!["RUN echo from-image".into()],
                cmd: Some(vec!["sh".into()]),
                ..Default::default()
            }),
        },
    );
    let p = ok("FROM base:1\nRUN echo mine\n", &o);
    let texts = step_texts(&p, 0);
    assert_eq!(texts, ["RUN echo from-image", "RUN echo mine"]);
    assert_eq!(
        p.stages[0].steps[0].line, 1,
        "a trigger runs at the FROM line"
    );
    assert!(
        p.stages[0].config.on_build.is_empty(),
        "triggers are not inherited"
    );
    assert_eq!(
        p.stages[0].config.cmd,
        Some(vec!["sh".to_string()]),
        "the image's CMD is kept"
    );
}

#[test]
fn run_mounts_are_checked_and_keyed() {
    let o = options();
    let text = "FROM a AS tools\nRUN make\nFROM b\nWORKDIR /w\nARG C=go\nRUN --mount=type=bind,from=tools,source=/out,target=bin --mount=type=cache,id=$C,target=/c ./bin/x\n";
    let p = ok(text, &o);
    assert_eq!(p.stages[1].depends_on, [0]);
    let step = &p.stages[1].steps[2];
    let Action::Run { mounts, .. } = &step.action else {
        panic!("not a RUN: {step:?}")
    };
    assert_eq!(mounts[0].target(), Some("/w/bin"));
    assert!(
        matches!(&mounts[1], RunMount::Cache { id, .. } if id == "go"),
        "{mounts:?}"
    );
    // What a bind mount reads is part of the key: another stage content, another key.
    let other = ok(&text.replace("RUN make", "RUN make all"), &o);
    assert_ne!(other.stages[1].steps[2].cache_key, step.cache_key);
    // A bind of the context is only known at execution.
    let ctx = ok("FROM b\nRUN --mount=target=/src true\n", &o);
    assert!(ctx.stages[0].steps[0].provisional);
    // Errors name the line; secrets and entitlements are checked against the options.
    let e = err(
        "FROM b\n\nRUN --mount=type=cache,target=/x,id=a/b true\n",
        &o,
    );
    assert!(
        e.starts_with("Dockerfile:3: RUN: --mount=type=cache,target=/x,id=a/b: id=a/b"),
        "{e}"
    );
    let first = PlanOptions {
        target: Some("app".into()),
        ..options()
    };
    let e = err(
        "FROM b AS app\nRUN --mount=type=bind,from=later,target=/x true\nFROM c AS later\n",
        &first,
    );
    assert!(
        e.contains("Dockerfile:2: RUN: --mount=type=bind,from=later,target=/x: cannot mount stage \"later\": it must be defined before"),
        "{e}"
    );
    let secret = "FROM b\nRUN --mount=type=secret,id=tok,required true\n";
    assert!(err(secret, &o).contains("secret \"tok\" is required"));
    let mut given = options();
    given.run_inputs.secrets.insert("tok".into());
    ok(secret, &given);
    let insecure = "FROM b\nRUN --security=insecure true\n";
    assert!(err(insecure, &o).contains("--allow security.insecure"));
    given.run_inputs.allow_insecure = true;
    ok(insecure, &given);
}
