//! The command line of `kubeca`: every command, flag and help text (with an example each).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Rotate the certificate authorities of a kubeadm-style Kubernetes cluster with no outage.
///
/// Every action is recorded in a crash-safe journal in the state directory: a rotation can pause
/// for days, resume exactly after any crash (run `kubeca run` again), roll back to the
/// old-CA-only configuration, and be exported for audits.
#[derive(Debug, Parser)]
#[command(name = "kubeca", version, propagate_version = true)]
#[command(after_help = "Example:\n  kubeca --state-dir ./rot init --inventory cluster.toml\n  \
kubeca --state-dir ./rot plan\n  kubeca --state-dir ./rot run\n\n\
Exit codes: 0 done, 75 paused and resumable, 1 failed (see `kubeca status`), 2 usage or configuration error.")]
pub struct Cli {
    /// The rotation's state directory (journal, backups, lock); created mode 0700.
    #[arg(long, global = true, env = "KUBECA_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// More log detail (-v: debug, -vv: trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for machines.
    Json,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Output {
    /// For people.
    #[default]
    Text,
    /// For machines.
    Json,
}

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// JSON Lines: one record per line.
    Jsonl,
    /// CSV with a header line.
    Csv,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a rotation: read the inventory, discover every node, back up every file that will
    /// change, and record the plan.
    #[command(after_help = "Example:\n  kubeca --state-dir ./rot init --inventory cluster.toml")]
    Init {
        /// The cluster inventory (TOML).
        #[arg(long, value_name = "FILE")]
        inventory: PathBuf,
    },
    /// Show every step of the recorded plan, with the trust check of every intermediate state.
    #[command(after_help = "Example:\n  kubeca --state-dir ./rot plan --output json")]
    Plan {
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Run (or resume) the rotation until it completes, reaches a gate, `--until`, or the window
    /// closes.
    #[command(after_help = "Examples:\n  kubeca --state-dir ./rot run\n  \
kubeca --state-dir ./rot run --until trust-nodes\n  \
kubeca --state-dir ./rot run --window 2026-12-05T02:00Z/4h")]
    Run {
        /// Stop after this phase completes (preflight, prepare, trust-control-plane,
        /// trust-nodes, switch, verify, finalize).
        #[arg(long, value_name = "PHASE")]
        until: Option<String>,
        /// Maintenance window START/DURATION (RFC 3339 start, duration like 4h or 90m): no step
        /// starts that could not finish inside it.
        #[arg(long, value_name = "START/DURATION")]
        window: Option<String>,
    },
    /// What happened last, and what to type next.
    #[command(after_help = "Example:\n  kubeca --state-dir ./rot status --output json")]
    Status {
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Approve a gate (the one gate is `finalize`: the old CA is dropped only after it).
    #[command(after_help = "Example:\n  kubeca --state-dir ./rot approve finalize")]
    Approve {
        /// The gate's name.
        gate: String,
    },
    /// Roll back to the old-CA-only configuration (itself journaled and resumable).
    #[command(after_help = "Example:\n  kubeca --state-dir ./rot rollback --yes")]
    Rollback {
        /// Confirm: rollback restarts components on every node.
        #[arg(long)]
        yes: bool,
    },
    /// Work with the journal: export it for an audit, verify its hash chain, clear a stale lock.
    Journal(JournalArgs),
    /// Check the live cluster: does every client still trust every server (real TLS handshakes)?
    #[command(after_help = "Example:\n  kubeca verify --inventory cluster.toml")]
    Verify {
        /// The cluster inventory (TOML).
        #[arg(long, value_name = "FILE")]
        inventory: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
}

/// `kubeca journal ...`.
#[derive(Debug, Args)]
pub struct JournalArgs {
    /// What to do with the journal.
    #[command(subcommand)]
    pub command: JournalCommand,
}

/// The journal commands.
#[derive(Debug, Subcommand)]
pub enum JournalCommand {
    /// Export every record (no key material, only digests) for an audit.
    #[command(
        after_help = "Example:\n  kubeca --state-dir ./rot journal export --format csv -o audit.csv"
    )]
    Export {
        /// Format.
        #[arg(long, value_enum)]
        format: ExportFormat,
        /// Output file (default: stdout).
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Verify the hash chain of the journal, or of an export file on its own.
    #[command(after_help = "Examples:\n  kubeca --state-dir ./rot journal verify\n  \
kubeca journal verify --export audit.jsonl --format jsonl")]
    Verify {
        /// Verify this export instead of the state directory's journal.
        #[arg(long, value_name = "FILE", requires = "format")]
        export: Option<PathBuf>,
        /// The export's format.
        #[arg(long, value_enum)]
        format: Option<ExportFormat>,
    },
    /// Clear a stale lock left by a kubeca that died (kill -9, power loss). Needs the lock's id,
    /// which the refusal to start names.
    #[command(
        after_help = "Example:\n  kubeca --state-dir ./rot journal unlock --lock-id 3f9a0c1d2e4b5a69"
    )]
    Unlock {
        /// The id the stale-lock error printed.
        #[arg(long, value_name = "ID")]
        lock_id: String,
    },
}
