//! How `berth build` shows its steps (`--progress`).
//!
//! The executor reports each event as one line (`#N [stage 1/3] RUN ...` when a
//! step starts, `#N | output` for each line the step prints, `#N CACHED`,
//! `#N DONE 1.2s`, anything else is a build-wide message). This module renders
//! those lines:
//! - `tty`: a live view like BuildKit's: each running step with a timer and the
//!   last lines of its output, collapsed to one line when it is done;
//! - `plain`: the lines as they come (CI logs);
//! - `quiet`: nothing;
//! - `rawjson`: one JSON object per event on stderr, for tools.
//!
//! In the tty view a step's output is only shown while it runs, so the last
//! lines of steps that never finished are printed when the build fails.

use std::collections::{BTreeMap, VecDeque};
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Lines of a running step's output shown under it in the tty view.
const LIVE_LINES: usize = 6;
/// Lines of an unfinished step's output printed when the build fails.
const FAILURE_LINES: usize = 30;
/// Longer titles and output lines are cut in the live view: a line that wraps
/// would break the redrawing of the lines below it.
const LIVE_WIDTH: usize = 110;

fn cut(text: &str) -> String {
    if text.chars().count() <= LIVE_WIDTH {
        text.to_string()
    } else {
        let mut s: String = text.chars().take(LIVE_WIDTH - 1).collect();
        s.push('…');
        s
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// tty when stderr is a terminal, plain otherwise
    Auto,
    Plain,
    Tty,
    Quiet,
    Rawjson,
}

impl ProgressMode {
    /// `auto` decided; `--quiet` and `--json` mean quiet unless a mode was asked for.
    pub fn resolve(self, quiet: bool) -> ProgressMode {
        match self {
            ProgressMode::Auto if quiet => ProgressMode::Quiet,
            ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Tty,
            ProgressMode::Auto => ProgressMode::Plain,
            other => other,
        }
    }
}

/// One event of the executor's line protocol.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    Start { step: u64, title: &'a str },
    Output { step: u64, text: &'a str },
    Cached { step: u64 },
    Done { step: u64, took: &'a str },
    Message(&'a str),
}

impl<'a> Event<'a> {
    pub fn parse(line: &'a str) -> Event<'a> {
        let Some((number, rest)) = line
            .strip_prefix('#')
            .and_then(|l| l.split_once(' '))
            .and_then(|(n, rest)| n.parse::<u64>().ok().map(|n| (n, rest)))
        else {
            return Event::Message(line);
        };
        if let Some(text) = rest
            .strip_prefix("| ")
            .or(if rest == "|" { Some("") } else { None })
        {
            Event::Output { step: number, text }
        } else if rest == "CACHED" {
            Event::Cached { step: number }
        } else if let Some(took) = rest.strip_prefix("DONE ") {
            Event::Done { step: number, took }
        } else {
            Event::Start {
                step: number,
                title: rest,
            }
        }
    }
}

struct Step {
    title: String,
    bar: Option<ProgressBar>,
    last: VecDeque<String>,
    finished: bool,
}

pub struct BuildProgress {
    mode: ProgressMode,
    multi: MultiProgress,
    steps: Mutex<BTreeMap<u64, Step>>,
}

impl BuildProgress {
    pub fn new(mode: ProgressMode) -> BuildProgress {
        let target = if mode == ProgressMode::Tty {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        BuildProgress {
            mode,
            multi: MultiProgress::with_draw_target(target),
            steps: Mutex::new(BTreeMap::new()),
        }
    }

    /// One line from the executor (or the CLI's own messages).
    pub fn line(&self, line: &str) {
        match self.mode {
            ProgressMode::Quiet => {}
            ProgressMode::Plain | ProgressMode::Auto => eprintln!("{line}"),
            ProgressMode::Rawjson => eprintln!("{}", raw_json(&Event::parse(line))),
            ProgressMode::Tty => self.tty(Event::parse(line)),
        }
    }

    fn tty(&self, event: Event<'_>) {
        let Ok(mut steps) = self.steps.lock() else {
            return;
        };
        match event {
            Event::Message(text) => {
                let _ = self.multi.println(text);
            }
            Event::Start { step, title } => {
                let bar = self.multi.add(ProgressBar::new_spinner());
                bar.set_style(running_style());
                bar.set_prefix(cut(&format!("#{step} {title}")));
                bar.enable_steady_tick(Duration::from_millis(100));
                steps.insert(
                    step,
                    Step {
                        title: title.to_string(),
                        bar: Some(bar),
                        last: VecDeque::new(),
                        finished: false,
                    },
                );
            }
            Event::Output { step, text } => {
                if let Some(s) = steps.get_mut(&step) {
                    s.last.push_back(text.to_string());
                    while s.last.len() > FAILURE_LINES {
                        s.last.pop_front();
                    }
                    if let Some(bar) = &s.bar {
                        let skip = s.last.len().saturating_sub(LIVE_LINES);
                        let shown: Vec<String> = s
                            .last
                            .iter()
                            .skip(skip)
                            .map(|l| format!("  │ {}", cut(l)))
                            .collect();
                        bar.set_message(format!("\n{}", shown.join("\n")));
                    }
                }
            }
            Event::Cached { step } => self.finish(&mut steps, step, "CACHED".to_string()),
            Event::Done { step, took } => self.finish(&mut steps, step, format!("DONE {took}")),
        }
    }

    fn finish(&self, steps: &mut BTreeMap<u64, Step>, step: u64, word: String) {
        if let Some(s) = steps.get_mut(&step) {
            s.finished = true;
            if let Some(bar) = s.bar.take() {
                bar.set_style(done_style());
                bar.set_message(word);
                bar.finish();
            }
        }
    }

    /// The build failed: show the last output of the steps that did not finish
    /// (the tty view hid it once it scrolled past), and stop the live view.
    pub fn failed(&self) {
        if self.mode != ProgressMode::Tty {
            return;
        }
        let Ok(mut steps) = self.steps.lock() else {
            return;
        };
        for (number, s) in steps.iter_mut() {
            if let Some(bar) = s.bar.take() {
                bar.set_style(done_style());
                bar.set_message("ERROR");
                bar.finish();
            }
            if !s.finished && !s.last.is_empty() {
                let _ = self
                    .multi
                    .println(format!("#{number} {} (last output):", s.title));
                for l in &s.last {
                    let _ = self.multi.println(format!("  │ {l}"));
                }
            }
        }
    }
}

fn running_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {prefix} {elapsed:.dim}{msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

fn done_style() -> ProgressStyle {
    ProgressStyle::with_template("  {prefix} {msg:.dim}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

fn raw_json(event: &Event<'_>) -> serde_json::Value {
    let time = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default();
    match event {
        Event::Start { step, title } => {
            serde_json::json!({"time": time, "step": step, "event": "start", "name": title})
        }
        Event::Output { step, text } => {
            serde_json::json!({"time": time, "step": step, "event": "log", "text": text})
        }
        Event::Cached { step } => {
            serde_json::json!({"time": time, "step": step, "event": "cached"})
        }
        Event::Done { step, took } => {
            serde_json::json!({"time": time, "step": step, "event": "done", "took": took})
        }
        Event::Message(text) => serde_json::json!({"time": time, "event": "message", "text": text}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_executor_line_protocol() {
        assert_eq!(
            Event::parse("#3 [build 2/4] RUN make"),
            Event::Start {
                step: 3,
                title: "[build 2/4] RUN make"
            }
        );
        assert_eq!(
            Event::parse("#3 | cc -o x x.c"),
            Event::Output {
                step: 3,
                text: "cc -o x x.c"
            }
        );
        assert_eq!(Event::parse("#3 |"), Event::Output { step: 3, text: "" });
        assert_eq!(Event::parse("#12 CACHED"), Event::Cached { step: 12 });
        assert_eq!(
            Event::parse("#12 DONE 0.4s"),
            Event::Done {
                step: 12,
                took: "0.4s"
            }
        );
        assert_eq!(
            Event::parse("resolving 127.0.0.1:5000/busybox:1"),
            Event::Message("resolving 127.0.0.1:5000/busybox:1")
        );
        // A comment-like message is not a step.
        assert_eq!(Event::parse("#not a step"), Event::Message("#not a step"));
    }

    #[test]
    fn raw_json_names_the_event() {
        let v = raw_json(&Event::parse("#2 | hello"));
        assert_eq!(v["event"], "log");
        assert_eq!(v["step"], 2);
        assert_eq!(v["text"], "hello");
        let v = raw_json(&Event::parse("warning: x"));
        assert_eq!(v["event"], "message");
    }
}
