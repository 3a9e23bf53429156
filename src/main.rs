//! The galley command line: parse, run, map the outcome to an exit code.

use std::process::ExitCode;

use clap::Parser;
use galley::cli::{self, Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The service logs what it does; the CLI only warnings (its report says the rest).
    let (default, json) = match &cli.command {
        Command::Serve(a) => ("info", a.log_format == cli::LogFormat::Json),
        _ => ("warn", false),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("GALLEY_LOG")
        .unwrap_or_else(|_| default.into());
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        fmt.json().init();
    } else {
        fmt.init();
    }
    let result = match cli.command {
        Command::Build(args) => match cli::build::run(*args) {
            Ok(cli::build::Outcome::Finished(ok)) => Ok(ok),
            // The shell convention for "stopped by SIGINT".
            Ok(cli::build::Outcome::Interrupted) => return ExitCode::from(130),
            Err(e) => Err(e),
        },
        Command::Verify(args) => cli::verify::run(args),
        Command::Push(args) => cli::push::run(args),
        Command::Serve(args) => cli::serve::run(args),
        Command::Sbom(args) => cli::attest::run(args),
        Command::Doctor(args) => cli::doctor::run(args),
        Command::Rebase(args) => cli::rebase::run(args).map(|()| true),
        Command::Completions(args) => cli::docs::completions(args),
        Command::Man(args) => cli::docs::man(args),
        Command::Repro(args) => match cli::repro::run(args) {
            Ok(cli::repro::Outcome::Compared { identical }) => Ok(identical),
            Ok(cli::repro::Outcome::Interrupted) => return ExitCode::from(130),
            Err(e) => Err(e),
        },
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
