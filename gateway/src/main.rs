//! The `gateway` binary: serve, check a plugin.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

/// Session Gateway: durable sessions for AI agents, with WebAssembly hooks.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Configuration file.
    #[arg(
        long,
        short,
        env = "GATEWAY_CONFIG",
        default_value = "gateway.toml",
        global = true
    )]
    config: PathBuf,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "GATEWAY_LOG_JSON", global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API (the default).
    Serve,
    /// Work with plugins.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Work with API keys.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Import sessions written by the Python `mongodb-session-manager` library
    /// into the configured store (idempotent: re-running is safe).
    #[cfg(feature = "mongodb")]
    Import(Box<gateway::import::ImportArgs>),
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Print a new API key and the `[[auth.keys]]` entry to paste into gateway.toml.
    ///
    /// Roles: `agent` uses the session API (read and write) of its tenant;
    /// `reader` only reads it; `admin` also uses /v1/admin/*, limited to its
    /// own tenant (its outbox items, its plugin quarantines; no plugin
    /// reload); `operator` is admin across every tenant (reload plugins for
    /// everyone, every tenant's outbox, process-wide counters). Give operator
    /// keys to the people who run the gateway, not to tenants.
    New {
        /// Tenant the key acts for ([a-z0-9_-], 1–64 characters); for an
        /// operator key, the tenant its session-API calls act for.
        #[arg(long)]
        tenant: String,
        /// agent (session API), reader (GET only), admin (/v1/admin/* for its
        /// own tenant) or operator (/v1/admin/* across all tenants).
        #[arg(long, value_parser = ["agent", "reader", "admin", "operator"])]
        role: String,
        /// A label for logs (default: <tenant>-<role>).
        #[arg(long)]
        id: Option<String>,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Validate a component against the WIT and print what it exports.
    Check {
        /// The `.wasm` component.
        file: PathBuf,
    },
}

fn init_tracing(json: bool, command: Option<&Command>) {
    // `import` prints its report on stdout and progress on stderr: its logs go
    // to stderr and only warnings show by default.
    let (level, stderr) = match command {
        #[cfg(feature = "mongodb")]
        Some(Command::Import(_)) => ("warn", true),
        _ => ("info", false),
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    // One writer type for both destinations: each distinct subscriber type
    // is a full copy of the fmt layer in the binary (and in its build time).
    let writer = if stderr {
        BoxMakeWriter::new(std::io::stderr)
    } else {
        BoxMakeWriter::new(std::io::stdout)
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(cli.log_json, cli.command.as_ref());
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => gateway::serve_config(cli.config).await,
        #[cfg(feature = "mongodb")]
        Command::Import(args) => {
            let code = gateway::import::run(&cli.config, *args).await?;
            std::io::Write::flush(&mut std::io::stdout())?;
            std::process::exit(code);
        }
        Command::Key {
            command: KeyCommand::New { tenant, role, id },
        } => {
            gateway::auth::validate_tenant(&tenant).map_err(anyhow::Error::msg)?;
            let key = gateway::auth::new_key();
            let id = id.unwrap_or_else(|| format!("{tenant}-{role}"));
            println!("API key (shown once; give it to the client):\n\n  {key}\n");
            println!("Add to gateway.toml (only the hash is stored):\n");
            println!(
                "[[auth.keys]]\nid = {id:?}\ntenant = {tenant:?}\nrole = {role:?}\nsha256 = {:?}",
                gateway::auth::hash_key(&key)
            );
            Ok(())
        }
        Command::Plugin {
            command: PluginCommand::Check { file },
        } => {
            let report = gateway::hooks::check_plugin(&file)
                .with_context(|| format!("{} is not a valid plugin", file.display()))?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
    }
}
