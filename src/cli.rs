//! The `reportd` command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::Settings;
use crate::{db, queue, startup};

/// reportd: takes long-running report jobs off a web server's hands (SQS + PostgreSQL).
#[derive(Debug, Parser)]
#[command(name = "reportd", version, about)]
pub struct Cli {
    /// Configuration file.
    #[arg(
        long,
        global = true,
        default_value = "./config.toml",
        env = "REPORTD_CONFIG"
    )]
    pub config: PathBuf,
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The `reportd` commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (the roles in `server.roles`) until SIGTERM/SIGINT.
    Serve,
    /// Create the database if missing and apply pending migrations.
    Migrate,
    /// Manage the SQS queues.
    Queues {
        /// The `queues` subcommand to run.
        #[command(subcommand)]
        command: QueuesCommand,
    },
    /// Check the report store (`[storage]`).
    Storage {
        /// The `storage` subcommand to run.
        #[command(subcommand)]
        command: StorageCommand,
    },
    /// Inspect the configuration.
    Config {
        /// The `config` subcommand to run.
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Look into the dead-letter queue and act on it.
    Dlq {
        /// The `dlq` subcommand to run.
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Cancel reports: waiting ones at once, running ones at their worker's next
    /// heartbeat (on whichever process runs them). Prints one line per id; exits 1 if
    /// any id is unknown or already completed or failed.
    Cancel {
        /// Report ids.
        #[arg(required = true)]
        ids: Vec<uuid::Uuid>,
        /// Why (kept on the report as `cancelReason`).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Fill the demo `user_activity` table for the built-in CSV generator.
    SeedDemo {
        /// Users 1..=N get activity.
        #[arg(long, default_value_t = 100)]
        users: i64,
        /// Days of activity, ending yesterday.
        #[arg(long, default_value_t = 90)]
        days: i64,
    },
}

/// `reportd queues`: manage the SQS queues.
#[derive(Debug, Subcommand)]
pub enum QueuesCommand {
    /// Create the main queue and its dead-letter queue, or fix their attributes.
    Ensure,
}

/// `reportd dlq`: look into the dead-letter queue and act on it.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List the DLQ's messages with their reports (without consuming them).
    List {
        /// Most messages to show.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Send failed reports back to the main queue with a new message (reset to
    /// in-queue, attempts kept); messages of reports that are not failed stay.
    Redrive {
        /// A report id or message id; repeat for several. Poison messages only this way.
        #[arg(long = "id")]
        ids: Vec<String>,
        /// Every message that has a report row.
        #[arg(long)]
        all: bool,
    },
    /// Delete every message in the DLQ.
    Purge {
        /// Confirms the purge.
        #[arg(long)]
        yes: bool,
    },
}

/// `reportd storage`: the report store.
#[derive(Debug, Subcommand)]
pub enum StorageCommand {
    /// Verify that the store is reachable and writable: put and delete a small probe
    /// object under the prefix (s3), or a probe file in `report.output_dir` (local).
    /// Creates nothing else, not even a missing bucket.
    Check,
}

/// `reportd config`: inspect the configuration.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the resolved configuration with secrets redacted, after preparing every
    /// declared SQL report type's query against the database.
    Check,
}

/// Runs a command that needs no actors (everything but `serve`).
pub async fn run_tool(command: Command, settings: Settings) -> anyhow::Result<()> {
    match command {
        Command::Serve => anyhow::bail!("serve is run by main"),
        Command::Config {
            command: ConfigCommand::Check,
        } => {
            // Prepared before printing: a query that does not prepare is a bad config.
            crate::report::check_queries(settings.database.reports_url(), &settings.report_types)
                .await?;
            print!("{}", settings.to_redacted_toml());
        }
        Command::Migrate => {
            if settings.database.create_if_missing
                && db::create_database_if_missing(&settings.database.url).await?
            {
                println!(
                    "created database {}",
                    crate::config::redact_url(&settings.database.url)
                );
            }
            let applied = db::run_migrations(&settings.database.url).await?;
            if applied.is_empty() {
                println!("migrations: up to date");
            } else {
                println!("migrations applied: {}", applied.join(", "));
            }
        }
        Command::Queues {
            command: QueuesCommand::Ensure,
        } => {
            let client = queue::build_client(&settings.sqs).await;
            let report = queue::provision::ensure_queues(&client, &settings.sqs).await?;
            print!("{report}");
        }
        Command::Storage {
            command: StorageCommand::Check,
        } => {
            let store = crate::storage::ReportStore::open(&settings).await;
            let found = store.check().await?;
            println!("storage: {found}");
        }
        Command::Dlq { command } => run_dlq(command, &settings).await?,
        Command::Cancel { ids, reason } => run_cancel(&ids, reason.as_deref(), &settings).await?,
        Command::SeedDemo { users, days } => {
            anyhow::ensure!(users >= 1, "--users must be at least 1");
            anyhow::ensure!(days >= 1, "--days must be at least 1");
            startup::prepare_database(&settings).await?;
            let rows = crate::report::seed_demo(&settings.database.url, users, days).await?;
            println!("inserted {rows} user_activity rows for {users} users over {days} days");
        }
    }
    Ok(())
}

/// `reportd cancel`: straight on the database (no daemon needed), like the API's cancel.
async fn run_cancel(
    ids: &[uuid::Uuid],
    reason: Option<&str>,
    settings: &Settings,
) -> anyhow::Result<()> {
    let pool = db::build_pool(&settings.database.url, 1)?;
    let mut conn = db::connection(&pool).await?;
    let mut refused = 0;
    for &id in ids {
        let outcome = db::reports::request_cancel(&mut conn, id, reason).await?;
        let status = db::reports::find(&mut conn, id).await?.map(|r| r.status);
        let line = match (outcome, status.as_deref()) {
            (Some(db::reports::CancelOutcome::Cancelled), _) => "cancelled".to_string(),
            (Some(db::reports::CancelOutcome::Requested), _) => {
                "cancel requested (running; stops at its next heartbeat)".to_string()
            }
            (None, Some("cancelled")) => "cancelled already".to_string(),
            (None, Some(status)) => {
                refused += 1;
                format!("not cancelled: it is {status}")
            }
            (None, None) => {
                refused += 1;
                "not cancelled: no such report".to_string()
            }
        };
        println!("{id}: {line}");
    }
    anyhow::ensure!(
        refused == 0,
        "{refused} of {} reports not cancelled",
        ids.len()
    );
    Ok(())
}

async fn run_dlq(command: DlqCommand, settings: &Settings) -> anyhow::Result<()> {
    let client = queue::build_client(&settings.sqs).await;
    let sqs = queue::SqsQueue::connect(client, &settings.sqs).await?;
    let pool = db::build_pool(&settings.database.url, 2)?;
    match command {
        DlqCommand::List { limit } => {
            anyhow::ensure!(
                (1..=10_000).contains(&limit),
                "--limit must be in 1..=10000"
            );
            let entries = crate::dlq::list(&sqs, &pool, limit).await?;
            println!("{}", serde_json::to_string_pretty(&entries)?);
        }
        DlqCommand::Redrive { ids, all } => {
            anyhow::ensure!(
                all || !ids.is_empty(),
                "name messages with --id ID (repeatable) or use --all"
            );
            let report =
                crate::dlq::redrive(&sqs, &pool, &crate::dlq::Selection { ids, all }).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        DlqCommand::Purge { yes } => {
            anyhow::ensure!(
                yes,
                "purge deletes every DLQ message for good: add --yes to confirm"
            );
            crate::dlq::purge(&sqs).await?;
            println!("purged {}", sqs.dlq_url);
        }
    }
    Ok(())
}
