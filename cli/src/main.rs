//! `kubeca`: the command-line interface — flags, output formats, exit codes; no rotation logic.

mod args;

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
struct UsageError(String);

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, cli.verbose);
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("kubeca: {err:#}");
            if err.downcast_ref::<UsageError>().is_some() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::from(EXIT_FAILED)
            }
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
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
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
            JournalCommand::Export { .. } | JournalCommand::Verify { .. } => {
                bail!(
                    "`kubeca journal export|verify` is not built yet: it needs the rotation engine's event types"
                )
            }
        },
        Command::Verify { .. } => {
            bail!("`kubeca verify` is not built yet: the live trust check comes with the procedure")
        }
        other => {
            state_dir(&cli)?;
            bail!(
                "`kubeca {}` is not built yet: the rotation engine and procedure are still being built \
             (see README.md, Status)",
                name_of(other)
            )
        }
    }
}

fn name_of(command: &Command) -> &'static str {
    match command {
        Command::Init { .. } => "init",
        Command::Plan { .. } => "plan",
        Command::Run { .. } => "run",
        Command::Status { .. } => "status",
        Command::Approve { .. } => "approve",
        Command::Rollback { .. } => "rollback",
        Command::Journal(_) => "journal",
        Command::Verify { .. } => "verify",
    }
}
