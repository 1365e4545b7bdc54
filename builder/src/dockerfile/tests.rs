//! Parser tests: directives, continuations, heredocs, forms and flags.

use super::*;

fn one(text: &str) -> Instruction {
    let df = parse(text).unwrap();
    assert_eq!(df.instructions.len(), 1, "{:?}", df.instructions);
    df.instructions.into_iter().next().unwrap()
}

fn error(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

fn shell(i: &Instruction) -> &str {
    match &i.command {
        Command::Run(Run {
            command: CommandLine::Shell(s),
            ..
        }) => s,
        other => panic!("not a shell RUN: {other:?}"),
    }
}

fn copy(i: &Instruction) -> &Copy {
    match &i.command {
        Command::Copy(c) | Command::Add(c) => c,
        other => panic!("not COPY/ADD: {other:?}"),
    }
}

#[test]
fn directives_only_at_the_top() {
    let df = parse("# syntax=docker/dockerfile:1\n#ESCAPE = `\n\nFROM x\n").unwrap();
    assert_eq!(df.directives.syntax.as_deref(), Some("docker/dockerfile:1"));
    assert_eq!(df.directives.escape, '`');
    // After a comment, a directive is a comment.
    let df = parse("# About my dockerfile\n# escape=`\nFROM x\n").unwrap();
    assert_eq!(df.directives.escape, '\\');
    // An unknown directive is a comment and ends the directives.
    let df = parse("# unknowndirective=value\n# syntax=value\nFROM x\n").unwrap();
    assert_eq!(df.directives.syntax, None);
    // After an instruction, too.
    let df = parse("FROM x\n# escape=`\n").unwrap();
    assert_eq!(df.directives.escape, '\\');
    // Whitespace variations from the reference.
    for line in [
        "#escape=`",
        "# escape =`",
        "#\tescape= `",
        "# escape = `",
        "#\t  eScApE=`",
    ] {
        let df = parse(&format!("{line}\nFROM x\n")).unwrap();
        assert_eq!(df.directives.escape, '`', "{line}");
    }
    assert!(error("# escape=\\\n# escape=`\nFROM x").contains("Dockerfile:2: only one escape"));
    assert!(error("# escape=x\nFROM x").contains("invalid escape token"));
    // A byte-order mark does not hide a directive.
    let df = parse("\u{feff}# escape=`\nFROM x").unwrap();
    assert_eq!(df.directives.escape, '`');
}

#[test]
fn comments_and_whitespace() {
    let df = parse(
        "  # indented comment\n\n   FROM x\nRUN echo 'we are running some # of cool things'\n",
    )
    .unwrap();
    assert_eq!(df.instructions.len(), 2);
    assert_eq!(df.instructions[0].line, 3);
    assert_eq!(
        shell(&df.instructions[1]),
        "echo 'we are running some # of cool things'"
    );
    // Keywords are case-insensitive.
    let i = one("run echo hi");
    assert_eq!(i.keyword, "RUN");
    // CRLF line endings.
    let df = parse("FROM x\r\nRUN a \\\r\n  b\r\n").unwrap();
    assert_eq!(shell(&df.instructions[1]), "a   b");
}

#[test]
fn continuations_join_lines_and_skip_comments() {
    // The reference: a comment inside a continuation is removed.
    let i = one("RUN echo hello \\\n# comment\nworld");
    assert_eq!(shell(&i), "echo hello world");
    assert_eq!((i.line, i.end_line), (1, 3));
    // Whitespace on continued lines is kept.
    let i = one("RUN echo \"\\\n     hello\\\n     world\"");
    assert_eq!(shell(&i), "echo \"     hello     world\"");
    // Blanks after the escape still continue the line.
    let i = one("RUN a \\  \t\nb");
    assert_eq!(shell(&i), "a b");
    // A continuation at the end of the file just ends.
    let i = one("RUN a \\");
    assert_eq!(shell(&i), "a");
}

#[test]
fn empty_continuation_lines_are_skipped_with_a_warning() {
    let df = parse("FROM x\nRUN a \\\n\n  b\n").unwrap();
    assert_eq!(shell(&df.instructions[1]), "a   b");
    assert_eq!(df.warnings.len(), 1);
    assert_eq!(df.warnings[0].line, Some(2));
    assert!(
        df.warnings[0].message.contains("line 3"),
        "{:?}",
        df.warnings
    );
}

#[test]
fn escape_directive_on_windows_paths() {
    // The reference's failing example: with `\` the `c:\\` ends in an
    // escape, so the next line joins the COPY.
    let df = parse("FROM microsoft/nanoserver\nCOPY testfile.txt c:\\\\\nRUN dir c:\\\n").unwrap();
    assert_eq!(df.instructions.len(), 2);
    let c = copy(&df.instructions[1]);
    assert_eq!(c.sources, vec!["testfile.txt", "c:\\RUN", "dir"]);
    assert_eq!(c.dest, "c:");
    // With the backtick escape, backslashes are just characters.
    let df =
        parse("# escape=`\n\nFROM microsoft/nanoserver\nCOPY testfile.txt c:\\\nRUN dir c:\\\n")
            .unwrap();
    assert_eq!(df.instructions.len(), 3);
    assert_eq!(copy(&df.instructions[1]).dest, "c:\\");
    assert_eq!(shell(&df.instructions[2]), "dir c:\\");
    // ... and the backtick continues lines.
    let df = parse("# escape=`\nFROM x\nRUN New-Item `\n  C:\\Example\n").unwrap();
    assert_eq!(shell(&df.instructions[1]), "New-Item   C:\\Example");
}

#[test]
fn heredocs() {
    let i = one("RUN <<EOF\napt-get update\napt-get install -y curl\nEOF\n");
    assert_eq!(shell(&i), "<<EOF");
    assert_eq!(i.heredocs.len(), 1);
    assert_eq!(i.heredocs[0].name, "EOF");
    assert_eq!(
        i.heredocs[0].body,
        "apt-get update\napt-get install -y curl\n"
    );
    assert!(i.heredocs[0].expand);
    assert_eq!((i.line, i.end_line), (1, 4));

    // Several in one instruction, read in order.
    let df = parse(
        "FROM alpine\nRUN <<FILE1 cat > file1 && <<FILE2 cat > file2\nI am\nfirst\nFILE1\nI am\nsecond\nFILE2\nRUN echo done\n",
    )
    .unwrap();
    let run = &df.instructions[1];
    assert_eq!(run.heredocs.len(), 2);
    assert_eq!(run.heredocs[0].body, "I am\nfirst\n");
    assert_eq!(run.heredocs[1].body, "I am\nsecond\n");
    assert_eq!(shell(&df.instructions[2]), "echo done");
    assert_eq!(df.instructions[2].line, 9);

    // `<<-` strips leading tabs (not spaces), and from the delimiter too.
    let i = one("COPY <<-EOT /script.sh\n\t\techo \"hello ${FOO}\"\n  two spaces\n\tEOT\n");
    assert_eq!(i.heredocs[0].body, "echo \"hello ${FOO}\"\n  two spaces\n");
    assert!(i.heredocs[0].strip_tabs);
    let c = copy(&i);
    assert_eq!(c.sources, vec!["<<-EOT"]);
    assert_eq!(c.dest, "/script.sh");

    // A quoted delimiter turns expansion off.
    for marker in ["<<\"EOT\"", "<<'EOT'", "<<-\"EOT\""] {
        let i = one(&format!("COPY {marker} /x\nbody\nEOT\n"));
        assert!(!i.heredocs[0].expand, "{marker}");
        assert_eq!(i.heredocs[0].name, "EOT");
    }
    // Comment-looking and instruction-looking lines are body text.
    let i = one("RUN <<EOT bash\n# not a comment\nFROM not-an-instruction\nEOT");
    assert_eq!(
        i.heredocs[0].body,
        "# not a comment\nFROM not-an-instruction\n"
    );
    assert_eq!(shell(&i), "<<EOT bash");
    // File descriptors and here-strings.
    let i = one("RUN 3<<EOF cat /dev/fd/3\nx\nEOF");
    assert_eq!(i.heredocs[0].fd, Some(3));
    let i = one("RUN cat <<<word");
    assert!(i.heredocs.is_empty());
    // Only RUN, COPY and ADD take heredocs.
    let df = parse("FROM x\nCMD cat <<EOF\n").unwrap();
    assert!(df.instructions[1].heredocs.is_empty());
    // ONBUILD triggers may carry them.
    let i = one("ONBUILD RUN <<EOF\necho hi\nEOF");
    assert_eq!(i.heredocs[0].body, "echo hi\n");
}

#[test]
fn unterminated_heredoc_is_an_error() {
    let e = error("FROM x\nRUN <<EOF\necho hi\n");
    assert!(
        e.starts_with("Dockerfile:2: RUN: unterminated heredoc"),
        "{e}"
    );
    let e = error("FROM x\nCOPY <<A <<B /dst\na\nA\nb\n");
    assert!(e.contains("\"B\""), "{e}");
}

#[test]
fn exec_and_shell_forms() {
    let i = one(r#"CMD ["/bin/busybox", "sh"]"#);
    assert_eq!(
        i.command,
        Command::Cmd {
            command: CommandLine::Exec(vec!["/bin/busybox".into(), "sh".into()])
        }
    );
    // Not valid JSON: shell form, as Docker does.
    for text in [
        r#"["c:\windows\system32\tasklist.exe"]"#,
        "[oops",
        r#"["a", 1]"#,
        r#"["a"] b"#,
    ] {
        let i = one(&format!("ENTRYPOINT {text}"));
        assert_eq!(
            i.command,
            Command::Entrypoint {
                command: CommandLine::Shell(text.into())
            },
            "{text}"
        );
    }
    let i = one(r#"RUN ["c:\\windows\\system32\\tasklist.exe"]"#);
    match i.command {
        Command::Run(Run {
            command: CommandLine::Exec(v),
            ..
        }) => assert_eq!(v, vec!["c:\\windows\\system32\\tasklist.exe"]),
        other => panic!("{other:?}"),
    }
    let i = one("CMD []");
    assert_eq!(
        i.command,
        Command::Cmd {
            command: CommandLine::Exec(vec![])
        }
    );
}

#[test]
fn from_forms() {
    let i = one("FROM --platform=$BUILDPLATFORM golang:1.22 AS Build");
    assert_eq!(
        i.command,
        Command::From {
            image: "golang:1.22".into(),
            stage_name: Some("build".into()),
            platform: Some("$BUILDPLATFORM".into()),
        }
    );
    let i = one("from busybox as base");
    assert!(matches!(i.command, Command::From { stage_name: Some(ref n), .. } if n == "base"));
    assert!(error("FROM a b").contains("FROM: requires either one or three"));
    assert!(error("FROM a AS 1st").contains("invalid name for build stage"));
    assert!(error("FROM").contains("Dockerfile:1: FROM: requires at least one argument"));
    assert!(error("FROM --from=x a").contains("unknown flag: --from"));
}

#[test]
fn arg_env_label() {
    let i = one("ARG A B=2 C=\"x y\"");
    assert_eq!(
        i.command,
        Command::Arg {
            args: vec![
                ArgDecl {
                    name: "A".into(),
                    default: None
                },
                ArgDecl {
                    name: "B".into(),
                    default: Some("2".into())
                },
                ArgDecl {
                    name: "C".into(),
                    default: Some("\"x y\"".into())
                },
            ]
        }
    );
    let i = one("ENV MY_NAME=\"John Doe\" MY_DOG=Rex\\ The\\ Dog \\\n    MY_CAT=fluffy");
    let Command::Env { vars, legacy } = &i.command else {
        panic!()
    };
    assert!(!legacy);
    assert_eq!(
        vars.iter()
            .map(|kv| (kv.key.as_str(), kv.value.as_str()))
            .collect::<Vec<_>>(),
        vec![
            ("MY_NAME", "\"John Doe\""),
            ("MY_DOG", "Rex\\ The\\ Dog"),
            ("MY_CAT", "fluffy")
        ]
    );
    // The legacy form takes the whole rest as the value.
    let i = one("ENV ONE TWO= THREE=world");
    assert_eq!(
        i.command,
        Command::Env {
            vars: vec![KeyValue {
                key: "ONE".into(),
                value: "TWO= THREE=world".into()
            }],
            legacy: true
        }
    );
    let i = one(r#"LABEL "com.example.vendor"="ACME Incorporated" version=1.0"#);
    let Command::Label { labels, .. } = &i.command else {
        panic!()
    };
    assert_eq!(labels[0].key, "\"com.example.vendor\"");
    assert_eq!(labels[1].value, "1.0");
    assert!(error("ENV A=1 B").contains("ENV: can't find = in \"B\""));
    assert!(error("ENV ALONE").contains("ENV: \"ALONE\" has no value"));
    assert!(error("ARG =x").contains("ARG: \"=x\" has no name"));
    assert!(error("LABEL =x").contains("empty name"));
}

#[test]
fn copy_and_add_flags() {
    let i = one("COPY --from=build --chown=55:mygroup --chmod=644 --link files* /somedir/");
    let c = copy(&i);
    assert_eq!(c.from.as_deref(), Some("build"));
    assert_eq!(c.chown.as_deref(), Some("55:mygroup"));
    assert_eq!(c.chmod.as_deref(), Some("644"));
    assert!(c.link);
    assert_eq!(c.sources, vec!["files*"]);
    assert_eq!(c.dest, "/somedir/");
    assert_eq!(i.flags.len(), 4);
    let i = one("COPY --link=false --exclude=*.txt --exclude=*.md --parents hom* /mydir/");
    let c = copy(&i);
    assert!(!c.link && c.parents);
    assert_eq!(c.exclude, vec!["*.txt", "*.md"]);
    let i = one(r#"COPY ["with space.txt", "other", "/dest dir/"]"#);
    let c = copy(&i);
    assert!(c.json_form);
    assert_eq!(c.sources, vec!["with space.txt", "other"]);
    assert_eq!(c.dest, "/dest dir/");
    let i = one("ADD --checksum=sha256:24454f83 --keep-git-dir --unpack=false https://example.com/a.tar.gz /");
    let add = copy(&i).add.clone().unwrap();
    assert_eq!(add.checksum.as_deref(), Some("sha256:24454f83"));
    assert!(add.keep_git_dir);
    assert_eq!(add.unpack, Some(false));
    // Quoted flag values keep their quotes for the planner to process.
    let i = one("COPY --chown=\"app user\" a /b");
    assert_eq!(copy(&i).chown.as_deref(), Some("\"app user\""));

    assert!(error("COPY /only").contains("COPY: requires at least two arguments, but only one"));
    assert!(error("COPY --from=a --from=b x y").contains("duplicate flag specified: --from"));
    assert!(error("ADD --from=a x y").contains("unknown flag: --from"));
    assert!(error("COPY --link=maybe a b").contains("expected true or false"));
    assert!(error("COPY --chown a b").contains("missing a value on flag: --chown"));
    assert!(error("COPY <<EOF /x").contains("unterminated heredoc"));
    assert!(error("WORKDIR --x=1 /a").contains("WORKDIR takes no flags"));
}

#[test]
fn run_flags_are_kept_as_data() {
    let i = one("RUN --mount=type=cache,target=/root/.cache/go-build \\\n  --mount=type=secret,id=aws --network=none --security=insecure go build ./...");
    let Command::Run(run) = &i.command else {
        panic!()
    };
    assert_eq!(
        run.mounts,
        vec![
            "type=cache,target=/root/.cache/go-build",
            "type=secret,id=aws"
        ]
    );
    assert_eq!(run.network.as_deref(), Some("none"));
    assert_eq!(run.security.as_deref(), Some("insecure"));
    assert_eq!(run.command, CommandLine::Shell("go build ./...".into()));
    // `--` ends the flags.
    let i = one("RUN -- --not-a-flag");
    assert_eq!(shell(&i), "--not-a-flag");
    assert!(error("RUN --mount=type=cache").contains("RUN: requires at least one argument"));
}

#[test]
fn other_instructions() {
    let df = parse(
        "FROM x\nSHELL [\"/bin/bash\", \"-c\"]\nWORKDIR /my dir\nUSER app:app\nEXPOSE 80 53/udp\nVOLUME [\"/data\", \"/logs\"]\nVOLUME /a /b\nSTOPSIGNAL SIGQUIT\nMAINTAINER Sven <sven@example.com>\n",
    )
    .unwrap();
    let commands: Vec<&Command> = df.instructions.iter().map(|i| &i.command).collect();
    assert_eq!(
        commands[1],
        &Command::Shell {
            shell: vec!["/bin/bash".into(), "-c".into()]
        }
    );
    assert_eq!(
        commands[2],
        &Command::Workdir {
            path: "/my dir".into()
        }
    );
    assert_eq!(
        commands[3],
        &Command::User {
            user: "app:app".into()
        }
    );
    assert_eq!(
        commands[4],
        &Command::Expose {
            ports: vec!["80".into(), "53/udp".into()]
        }
    );
    assert_eq!(
        commands[5],
        &Command::Volume {
            paths: vec!["/data".into(), "/logs".into()]
        }
    );
    assert_eq!(
        commands[6],
        &Command::Volume {
            paths: vec!["/a".into(), "/b".into()]
        }
    );
    assert_eq!(
        commands[7],
        &Command::StopSignal {
            signal: "SIGQUIT".into()
        }
    );
    assert_eq!(
        commands[8],
        &Command::Maintainer {
            name: "Sven <sven@example.com>".into()
        }
    );
    assert!(error("SHELL /bin/bash -c").contains("SHELL: requires the arguments in JSON form"));
    assert!(error("SHELL []").contains("must name a shell"));
    assert!(error("VOLUME [\"\"]").contains("empty string"));
}

#[test]
fn healthcheck() {
    let i = one("HEALTHCHECK --interval=5m --timeout=3s --start-period=1m30s --start-interval=500ms --retries=4 \\\n  CMD curl -f http://localhost/ || exit 1");
    let Command::Healthcheck { check: Some(h) } = &i.command else {
        panic!("{i:?}")
    };
    assert_eq!(
        h.test,
        CommandLine::Shell("curl -f http://localhost/ || exit 1".into())
    );
    assert_eq!(h.interval, Some(300_000_000_000));
    assert_eq!(h.timeout, Some(3_000_000_000));
    assert_eq!(h.start_period, Some(90_000_000_000));
    assert_eq!(h.start_interval, Some(500_000_000));
    assert_eq!(h.retries, Some(4));
    let i = one("HEALTHCHECK CMD [\"/bin/check\", \"-q\"]");
    let Command::Healthcheck { check: Some(h) } = &i.command else {
        panic!()
    };
    assert_eq!(
        h.test,
        CommandLine::Exec(vec!["/bin/check".into(), "-q".into()])
    );
    assert_eq!(h.interval, None);
    assert_eq!(
        one("healthcheck none").command,
        Command::Healthcheck { check: None }
    );
    assert!(error("HEALTHCHECK NONE x").contains("takes no arguments"));
    assert!(error("HEALTHCHECK --interval=5s NONE").contains("takes no options"));
    assert!(error("HEALTHCHECK RUN x").contains("unknown type \"RUN\""));
    assert!(error("HEALTHCHECK --interval=soon CMD x").contains("not a duration"));
    assert!(error("HEALTHCHECK --timeout=10us CMD x").contains("less than 1ms"));
    assert!(error("HEALTHCHECK --retries=-1 CMD x").contains("whole number"));
    assert!(error("HEALTHCHECK CMD").contains("needs a command"));
    assert_eq!(parse_duration("1.5h"), Some(5_400_000_000_000));
    assert_eq!(parse_duration("0"), Some(0));
    assert_eq!(parse_duration(""), None);
    assert_eq!(parse_duration("10"), None);
}

#[test]
fn onbuild() {
    let i = one("ONBUILD ADD . /app/src");
    let Command::OnBuild { trigger } = &i.command else {
        panic!()
    };
    assert_eq!(trigger.keyword, "ADD");
    assert_eq!(copy(trigger).sources, vec!["."]);
    assert_eq!(i.source, "ONBUILD ADD . /app/src");
    for inner in ["ONBUILD", "FROM", "MAINTAINER"] {
        let e = error(&format!("ONBUILD {inner} x"));
        assert!(
            e.contains(&format!(
                "ONBUILD: {inner} isn't allowed as an ONBUILD trigger"
            )),
            "{e}"
        );
    }
    assert!(error("ONBUILD").contains("requires an instruction"));
    assert!(error("ONBUILD COPY a").contains("COPY: requires at least two"));
}

#[test]
fn unknown_instructions_are_named_with_a_hint() {
    assert_eq!(
        error("FORM x"),
        "Dockerfile:1: unknown instruction: FORM (did you mean FROM?)"
    );
    assert_eq!(
        error("FROM x\n\nfrobnicate y"),
        "Dockerfile:3: unknown instruction: frobnicate"
    );
}
