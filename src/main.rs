//! The galley command line: parse, run, map the outcome to an exit code.

use std::process::ExitCode;

use clap::Parser;
use galley::cli::{self, Cli, Command};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("GALLEY_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Build(args) => match cli::build::run(args) {
            Ok(cli::build::Outcome::Finished(ok)) => Ok(ok),
            // The shell convention for "stopped by SIGINT".
            Ok(cli::build::Outcome::Interrupted) => return ExitCode::from(130),
            Err(e) => Err(e),
        },
        Command::Verify(args) => cli::verify::run(args),
        Command::Push(args) => cli::push::run(args),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        // A refused binary or a failed variant: the report says why.
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes, skipping a cause whose text the message already holds (most of
/// galley's errors name their source in their own message).
fn describe(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}
