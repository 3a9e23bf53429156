//! `galley completions SHELL` and `galley man DIR`: generated from the clap definitions, so they
//! cannot drift from the commands.

use anyhow::Context as _;
use clap::CommandFactory;

use super::{Cli, CompletionsArgs, ManArgs};

/// Prints the completion script for a shell on stdout.
pub fn completions(args: CompletionsArgs) -> anyhow::Result<bool> {
    let mut cmd = Cli::command();
    clap_complete::generate(args.shell, &mut cmd, "galley", &mut std::io::stdout());
    Ok(true)
}

/// Writes `galley.1` and `galley-COMMAND.1` for every command into the directory.
pub fn man(args: ManArgs) -> anyhow::Result<bool> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    let cmd = Cli::command();
    let mut pages = vec![("galley".to_string(), cmd.clone())];
    for sub in cmd.get_subcommands() {
        let name = format!("galley-{}", sub.get_name());
        // clap names are 'static; this command runs once and exits.
        let title: &'static str = Box::leak(name.clone().into_boxed_str());
        pages.push((name, sub.clone().name(title)));
    }
    for (name, page) in pages {
        let path = args.dir.join(format!("{name}.1"));
        let mut out = Vec::new();
        clap_mangen::Man::new(page)
            .render(&mut out)
            .with_context(|| format!("rendering {name}.1"))?;
        std::fs::write(&path, out).with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(true)
}
