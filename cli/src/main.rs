//! `kubeca`: the command-line interface — flags, output formats, exit codes; no rotation logic.

mod args;
mod rotate;

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Parser;

use args::{Cli, Command, JournalCommand, LogFormat};

/// Exit code: finished what was asked.
const EXIT_OK: u8 = 0;
/// Exit code: failed; the state is journaled and `status` says what to do.
const EXIT_FAILED: u8 = 1;
/// Exit code: usage or configuration error (clap uses it for usage errors too).
const EXIT_USAGE: u8 = 2;

/// An error that maps to "usage or configuration" (exit 2) rather than "failed" (exit 1).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct UsageError(pub(crate) String);

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, cli.verbose);
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("kubeca: {err:#}");
            let usage = err.downcast_ref::<UsageError>().is_some()
                || err
                    .downcast_ref::<actions::session::SessionError>()
                    .is_some_and(actions::session::SessionError::is_usage);
            if usage { ExitCode::from(EXIT_USAGE) } else { ExitCode::from(EXIT_FAILED) }
        }
    }
}

fn init_logging(format: LogFormat, verbose: u8) {
    let level = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("KUBECA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    // Colours only on a terminal: a log file or a pipe gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn state_dir(cli: &Cli) -> anyhow::Result<&std::path::Path> {
    cli.state_dir.as_deref().ok_or_else(|| {
        UsageError("--state-dir DIR is required for this command (or set KUBECA_STATE_DIR)".into())
            .into()
    })
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    match &cli.command {
        Command::Journal(j) => match &j.command {
            JournalCommand::Unlock { lock_id } => {
                let dir = state_dir(&cli)?;
                if journal::lock_status(dir)
                    .with_context(|| format!("reading the lock of {}", dir.display()))?
                    .is_none()
                {
                    println!("{} is not locked; nothing to clear", dir.display());
                    return Ok(EXIT_OK);
                }
                journal::force_unlock(dir, lock_id)
                    .with_context(|| format!("clearing the lock of {}", dir.display()))?;
                println!("lock {lock_id} of {} cleared", dir.display());
                Ok(EXIT_OK)
            }
            JournalCommand::Export { format, output } => {
                rotate::export(state_dir(&cli)?, *format, output.as_ref())
            }
            JournalCommand::Verify { export, format } => {
                if export.is_some() {
                    rotate::verify_journal(None, export.as_ref(), *format)
                } else {
                    rotate::verify_journal(Some(state_dir(&cli)?), None, None)
                }
            }
        },
        Command::Init { inventory } => rotate::init(state_dir(&cli)?, inventory),
        Command::Plan { output } => rotate::plan(state_dir(&cli)?, *output),
        Command::Run { until, window } => {
            rotate::drive(state_dir(&cli)?, until.as_deref(), window.as_deref(), false)
        }
        Command::Status { output } => rotate::status(state_dir(&cli)?, *output),
        Command::Approve { gate } => rotate::approve(state_dir(&cli)?, gate),
        Command::Rollback { yes } => {
            let dir = state_dir(&cli)?;
            if !yes {
                bail!(UsageError(
                    "rollback restarts components on every node: confirm with --yes".into()
                ));
            }
            rotate::drive(dir, None, None, true)
        }
        Command::Verify { inventory, output } => rotate::verify_live(inventory, *output),
    }
}
