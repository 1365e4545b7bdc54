//! `berth login`'s questions on a terminal: the user name (echoed) and the
//! password (not echoed), as `docker login` asks them.
//!
//! No terminal crate is a dependency (rpassword is not in Cargo.lock), and
//! turning the terminal's ECHO flag off around one line read is all it takes,
//! so this is a few lines of termios through `libc`.

use std::io::{BufRead, IsTerminal, Write};
use std::os::fd::AsRawFd;

use anyhow::{bail, Context, Result};

/// Whether questions can be asked: stdin is a terminal.
pub fn can_prompt() -> bool {
    std::io::stdin().is_terminal()
}

/// Ask on stderr, read one line from stdin (echoed).
pub fn ask(question: &str) -> Result<String> {
    eprint!("{question}");
    std::io::stderr().flush().ok();
    read_line()
}

/// Ask on stderr, read one line from stdin with the terminal's echo off.
pub fn ask_hidden(question: &str) -> Result<String> {
    let answer = {
        // Echo off before the question shows, so nothing typed after it is echoed.
        let _echo_off = EchoOff::new()?;
        eprint!("{question}");
        std::io::stderr().flush().ok();
        read_line()
    };
    // The Enter the user typed was not echoed either.
    eprintln!();
    answer
}

fn read_line() -> Result<String> {
    let mut line = String::new();
    let n = std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading from the terminal")?;
    if n == 0 {
        bail!("no answer (end of input)");
    }
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// Echo is off while this lives; the terminal's old settings come back on drop.
struct EchoOff {
    fd: i32,
    saved: libc::termios,
}

impl EchoOff {
    fn new() -> Result<EchoOff> {
        let fd = std::io::stdin().as_raw_fd();
        // SAFETY: termios is plain data; tcgetattr fills it for a valid fd.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: fd is stdin, `saved` a valid termios to write to.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return Err(std::io::Error::last_os_error()).context("reading the terminal's settings");
        }
        let mut quiet = saved;
        quiet.c_lflag &= !(libc::ECHO | libc::ECHONL);
        quiet.c_lflag |= libc::ICANON;
        // TCSANOW, not TCSAFLUSH: keep what was typed ahead.
        // SAFETY: fd is stdin, `quiet` a valid termios.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &quiet) } != 0 {
            return Err(std::io::Error::last_os_error()).context("turning the terminal's echo off");
        }
        Ok(EchoOff { fd, saved })
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        // SAFETY: restores the settings read from the same fd.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}
