//! `berth completion bash|zsh|fish`: shell completions from the clap definitions.

use clap::{CommandFactory, Parser};
use clap_complete::Shell;

#[derive(Parser, Debug)]
#[command(after_help = "Examples:
  berth completion bash > /etc/bash_completion.d/berth
  berth completion zsh > \"${fpath[1]}/_berth\"
  berth completion fish > ~/.config/fish/completions/berth.fish")]
pub struct CompletionArgs {
    /// The shell to write completions for
    shell: Shell,
}

pub fn completion<C: CommandFactory>(args: CompletionArgs) -> anyhow::Result<()> {
    let mut command = C::command();
    // Into a buffer first: clap_complete panics when stdout closes early (| head).
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, "berth", &mut script);
    match std::io::Write::write_all(&mut std::io::stdout(), &script) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}
