//! Running commands: captured output, a timeout, a stdin, and asserting success or failure.
use std::borrow::BorrowMut;
use std::io::{Read, Write};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Captured result of a finished command.
#[derive(Debug)]
pub struct CmdOutput {
    pub command: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOutput {
    pub fn describe(&self) -> String {
        format!(
            "command: {}\nstatus: {}\n--- stdout ---\n{}\n--- stderr ---\n{}\n--------------",
            self.command,
            self.status,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

/// Runs a command with stdin closed and stdout/stderr captured. Panics when it does not finish
/// within `timeout` (after killing it by PID) or cannot be started at all.
pub fn run(cmd: impl BorrowMut<Command>, timeout: Duration) -> CmdOutput {
    run_with_input(cmd, None, timeout)
}

/// Like [`run`], with `input` written to the command's stdin (then closed) when given.
pub fn run_with_input(
    mut cmd: impl BorrowMut<Command>,
    input: Option<&[u8]>,
    timeout: Duration,
) -> CmdOutput {
    let cmd = cmd.borrow_mut();
    let command = format!("{cmd:?}");
    eprintln!("+ {command}");
    let mut child = cmd
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command}: {e}"));
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        let input = input.to_vec();
        // A writer thread, so a command that does not read its stdin cannot block us.
        std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
    }
    let mut out_pipe = child.stdout.take().expect("stdout was piped");
    let mut err_pipe = child.stderr.take().expect("stderr was piped");
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out_pipe.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err_pipe.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "timed out after {timeout:?}, killed pid {}: {command}",
                    child.id()
                );
            }
            Err(e) => panic!("waiting for {command}: {e}"),
        }
    };
    let stdout = String::from_utf8_lossy(&out_reader.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned();
    CmdOutput {
        command,
        status,
        stdout,
        stderr,
    }
}

/// Runs a command that must succeed; returns its stdout. Panics with all output otherwise.
pub fn run_ok(cmd: impl BorrowMut<Command>, timeout: Duration) -> String {
    let out = run(cmd, timeout);
    if !out.status.success() {
        panic!(
            "command failed but was expected to succeed\n{}",
            out.describe()
        );
    }
    out.stdout
}

/// Runs a command that must fail; returns its output. Panics if it succeeds.
pub fn run_fail(cmd: impl BorrowMut<Command>, timeout: Duration) -> CmdOutput {
    let out = run(cmd, timeout);
    if out.status.success() {
        panic!(
            "command succeeded but was expected to fail\n{}",
            out.describe()
        );
    }
    out
}

/// Parses a command's stdout as exactly one JSON document (surrounding whitespace allowed).
pub fn parse_json(stdout: &str, what: &str) -> serde_json::Value {
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{what}: stdout is not one JSON document ({e}):\n{stdout}"))
}

/// Shorthand: a `Command` for `program` with `args`.
pub fn cmd<I, S>(program: &str, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut c = Command::new(program);
    c.args(args);
    c
}
