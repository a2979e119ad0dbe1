//! `lampyr`: the command-line entry point. A thin shell: it parses
//! arguments, sets up logging, and hands over to the server crate (`serve`)
//! or the CLI crate (every other command).

#![forbid(unsafe_code)]

/// The request path allocates small, short-lived buffers on every
/// invocation; mimalloc serves those faster than the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use lampyr_api::Runtime;
use lampyr_cli::{Client, CommandError};
use lampyr_server::{Server, ServerConfig};

/// lampyr: a self-hosted serverless platform for Node.js and Python functions.
///
/// Three steps from nothing to a live URL:
///   lampyr init hello --runtime nodejs
///   lampyr deploy hello
///   curl http://127.0.0.1:8080/fn/hello
#[derive(Parser)]
#[command(name = "lampyr", version, verbatim_doc_comment)]
struct Cli {
    /// Server to talk to (client commands).
    #[arg(
        long,
        global = true,
        env = "LAMPYR_URL",
        default_value = "http://127.0.0.1:8080",
        help_heading = "Global options"
    )]
    url: String,
    /// Data directory: where `serve` keeps its state, and where client
    /// commands find the API token [default: ~/.local/share/lampyr]
    #[arg(
        long,
        global = true,
        env = "LAMPYR_DATA_DIR",
        help_heading = "Global options"
    )]
    data_dir: Option<PathBuf>,
    /// API token; by default read from the data directory.
    #[arg(
        long,
        global = true,
        env = "LAMPYR_TOKEN",
        hide_env_values = true,
        help_heading = "Global options"
    )]
    token: Option<String>,
    /// Print machine-readable JSON instead of text (errors included, on
    /// stdout as `{"error": {"code", "message"}}`).
    #[arg(long, global = true, help_heading = "Global options")]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8080]
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Server configuration file (see config/lampyr-server.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Deploy the bundled example functions (hello-node, hello-python) at start.
    #[arg(long)]
    demo: bool,
    /// Format of the server's own log.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Instance isolation: auto (all the host offers, warning when
    /// something is missing), strict (refuse to start without full
    /// isolation) or off (plain processes) [default: auto]
    #[arg(long)]
    isolation: Option<String>,
    /// Keep pools of pre-started runtimes for fast cold starts [default: on]
    #[arg(long, value_parser = ["on", "off"])]
    pools: Option<String>,
    /// Worker threads serving requests [default: half the CPUs, at least 1]
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    workers: Option<u16>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: the HTTP trigger, the function service and the API.
    Serve(ServeArgs),
    /// Scaffold a new function: DIR/lampyr.toml and a hello-world handler.
    Init {
        dir: PathBuf,
        /// Language runtime.
        #[arg(long, value_parser = parse_runtime)]
        runtime: Runtime,
        /// Function name [default: the directory's name]
        #[arg(long)]
        name: Option<String>,
    },
    /// Validate, package and upload a function; prints its URL.
    ///
    /// PATH may also be another platform's template: AWS SAM's
    /// template.yaml, Function Compute's template.yml or Serverless Devs'
    /// s.yaml. Each of its functions is deployed from its code directory
    /// with the lampyr.toml made of it (`--dry-run` prints it); a field
    /// lampyr does not support is refused by name.
    ///
    /// The server checks that the new version loads (starts an instance and
    /// loads its handler, within the function's init timeout) before it takes
    /// traffic; if it does not, the deploy fails with the error and the
    /// previous version keeps serving.
    Deploy {
        /// The function's directory, its lampyr.toml, or a template
        /// (template.yaml, template.yml, s.yaml).
        #[arg(default_value = ".")]
        path: PathBuf,
        /// List what would be shipped (after .lampyrignore) and its size;
        /// upload nothing. With a template: print the lampyr.toml made of
        /// each function.
        #[arg(long)]
        dry_run: bool,
        /// With a template: deploy only this function (its name in the
        /// template or in lampyr) [default: every function]
        #[arg(long, value_name = "NAME")]
        function: Option<String>,
        /// Skip the load check (for code whose initialisation needs what
        /// only a request brings).
        #[arg(long)]
        no_verify: bool,
        /// Say what the new version is (`lampyr versions` shows it).
        #[arg(long)]
        description: Option<String>,
        /// Point this alias at the new version.
        #[arg(long)]
        alias: Option<String>,
        /// Move the alias gradually: PERCENT%/INTERVAL (e.g. 10%/5m) of its
        /// traffic on the new version, then all of it unless the new
        /// version's error rate is worse (else it is rolled back).
        #[arg(long, requires = "alias")]
        canary: Option<String>,
    },
    /// Invoke a function with a JSON event and print its result.
    Invoke {
        /// NAME, or NAME@ALIAS, NAME@VERSION, NAME@$LATEST.
        name: String,
        /// The event: inline JSON, `@file`, or `@-` for stdin [default: {}]
        #[arg(long, short)]
        data: Option<String>,
        /// Queue the event and print its request id at once; it runs
        /// later, retried on failure (see `lampyr invocations NAME --events`).
        #[arg(long = "async")]
        is_async: bool,
        /// With --async: events with the same key within 24 h are one.
        #[arg(long, requires = "is_async")]
        idempotency_key: Option<String>,
    },
    /// List functions.
    #[command(alias = "list")]
    Ls,
    /// Show one function: version, limits, live instances, URL.
    Info { name: String },
    /// Delete a function, its versions and code.
    #[command(alias = "delete")]
    Rm { name: String },
    /// Show a function's logs.
    Logs {
        name: String,
        /// Only lines of this invocation.
        #[arg(long)]
        request_id: Option<String>,
        /// Only lines newer than this, e.g. 10m or 2h.
        #[arg(long)]
        since: Option<String>,
        /// At most this many of the newest lines.
        #[arg(long, default_value_t = 200)]
        tail: usize,
        /// Only lines of this version.
        #[arg(long)]
        version: Option<u64>,
        /// Keep printing new lines as they are written.
        #[arg(long, short)]
        follow: bool,
    },
    /// List a function's recent invocations: start kind, status, duration, billing.
    Invocations {
        name: String,
        /// At most this many, newest first.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Only this status: ok, error, timeout, out_of_memory, crashed, throttled.
        #[arg(long)]
        status: Option<String>,
        /// Only invocations newer than this, e.g. 10m or 2h.
        #[arg(long)]
        since: Option<String>,
        /// List the function's asynchronous events and their states instead.
        #[arg(long, conflicts_with_all = ["status", "since"])]
        events: bool,
        /// With --events: only this state: queued, running, retrying,
        /// succeeded, dead_lettered.
        #[arg(long, requires = "events")]
        state: Option<String>,
    },
    /// A function's dead-letter list: asynchronous events that failed for
    /// good. `lampyr dlq NAME` lists them.
    #[command(args_conflicts_with_subcommands = true)]
    Dlq {
        #[command(subcommand)]
        action: Option<DlqAction>,
        /// The function whose dead letters to list.
        name: Option<String>,
    },
    /// Summarise a function's invocations: counts, error and cold-start
    /// rates, p50/p95/p99 of duration and of each cold-start phase, GB-s.
    Stats {
        name: String,
        /// The window, back from now.
        #[arg(long, default_value = "1h")]
        since: String,
    },
    /// Access keys for AWS SDKs and the AWS CLI: they sign their calls of
    /// the Lambda Invoke API (`/2015-03-31/functions/NAME/invocations`)
    /// with one.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// A function's versions: number, deploy time, code digest,
    /// description. `lampyr versions NAME` lists them.
    #[command(args_conflicts_with_subcommands = true)]
    Versions {
        #[command(subcommand)]
        action: Option<VersionsAction>,
        /// The function whose versions to list.
        name: Option<String>,
    },
    /// A function's aliases: names that point at one version, or at two
    /// with a share of the traffic on the second.
    Alias {
        #[command(subcommand)]
        action: AliasAction,
    },
    /// Point an alias back at what it pointed at before, at once (calls
    /// already running finish on their version).
    Rollback {
        name: String,
        /// The alias [default: the one the HTTP trigger serves, or the
        /// function's only one].
        alias: Option<String>,
    },
    /// Print the web dashboard's address, with the token to open it.
    Ui,
    /// Report the runtimes found, the isolation available and the data directory.
    Doctor,
    /// Print a shell completion script: `lampyr completions bash > ~/.local/share/bash-completion/completions/lampyr`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
enum DlqAction {
    /// Show one dead letter: its payload and every attempt's error.
    Show { name: String, request_id: String },
    /// Queue dead letters again (their attempts start over).
    Redrive {
        name: String,
        /// The request ids to redrive.
        request_ids: Vec<String>,
        /// Redrive every dead letter of the function.
        #[arg(long, conflicts_with = "request_ids")]
        all: bool,
    },
    /// Delete a function's dead letters.
    Purge { name: String },
}

#[derive(Subcommand)]
enum KeysAction {
    /// Issue a key; its secret is printed this once.
    Create {
        /// A note on who or what uses it.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// List the keys (ids, names, when made; no secrets).
    Ls,
    /// Revoke a key.
    Rm { id: String },
}

#[derive(Subcommand)]
enum VersionsAction {
    /// Delete a version and its code (refused for the newest version and
    /// for one an alias routes to).
    Rm { name: String, version: u64 },
}

#[derive(Subcommand)]
enum AliasAction {
    /// Point ALIAS at VERSION (creating it).
    Set {
        name: String,
        alias: String,
        version: u64,
        /// A second version and its share of the traffic, e.g. 3=0.05.
        #[arg(long)]
        weight: Option<String>,
        /// Instances kept ready for the alias's versions.
        #[arg(long)]
        min_instances: Option<u32>,
    },
    /// List a function's aliases.
    Ls { name: String },
    /// Delete an alias.
    Rm { name: String, alias: String },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn parse_runtime(s: &str) -> Result<Runtime, String> {
    s.parse()
}

fn main() -> ExitCode {
    // Every jailed instance starts as `lampyr __sandbox-init`.
    if std::env::args_os().nth(1).as_deref()
        == Some(std::ffi::OsStr::new(lampyr_server::SANDBOX_INIT_ARG))
    {
        lampyr_server::sandbox_init();
    }
    let cli = Cli::parse();
    let json = cli.json;
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let command = e.downcast_ref::<CommandError>();
            if matches!(command, Some(CommandError::FunctionFailed)) {
                // The function's error is printed already.
            } else if json {
                let body = match command {
                    Some(c) => c.body(),
                    None => lampyr_api::ErrorBody::new("error", format!("{e:#}")),
                };
                println!("{}", serde_json::to_string(&body).expect("serialises"));
            } else {
                eprintln!("error: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let data_dir = cli
        .data_dir
        .clone()
        .unwrap_or_else(lampyr_cli::paths::default_data_dir);
    // The API token: --token / LAMPYR_TOKEN, else the server's token file.
    let token = || {
        cli.token.clone().or_else(|| {
            std::fs::read_to_string(data_dir.join(lampyr_cli::paths::TOKEN_FILE))
                .ok()
                .map(|t| t.trim().to_string())
        })
    };
    let client = || Client::new(&cli.url, token());
    match &cli.command {
        Command::Serve(args) => serve(cli.data_dir.clone(), args),
        Command::Init { dir, runtime, name } => {
            let name = lampyr_cli::scaffold::init(dir, *runtime, name.as_deref())?;
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({"name": name, "dir": dir, "runtime": runtime.as_str()})
                );
            } else {
                println!("created function '{name}' ({runtime}) in {}", dir.display());
                println!("next: lampyr deploy {}", dir.display());
            }
            Ok(())
        }
        Command::Deploy {
            path,
            dry_run,
            function,
            no_verify,
            description,
            alias,
            canary,
        } => {
            let args = lampyr_cli::DeployArgs {
                path: path.clone(),
                dry_run: *dry_run,
                verify: !no_verify,
                description: description.clone(),
                alias: alias.clone(),
                canary: canary.clone(),
                function: function.clone(),
            };
            Ok(lampyr_cli::deploy(&client(), &args, cli.json)?)
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "lampyr",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Invoke {
            name,
            data,
            is_async: true,
            idempotency_key,
        } => Ok(lampyr_cli::events::invoke_async(
            &client(),
            name,
            data.as_deref(),
            idempotency_key.as_deref(),
            cli.json,
        )?),
        Command::Invoke { name, data, .. } => Ok(lampyr_cli::invoke(
            &client(),
            name,
            data.as_deref(),
            cli.json,
        )?),
        Command::Dlq { action, name } => match (action, name) {
            (Some(DlqAction::Show { name, request_id }), _) => Ok(lampyr_cli::events::dlq_show(
                &client(),
                name,
                request_id,
                cli.json,
            )?),
            (
                Some(DlqAction::Redrive {
                    name,
                    request_ids,
                    all,
                }),
                _,
            ) => Ok(lampyr_cli::events::dlq_redrive(
                &client(),
                name,
                request_ids,
                *all,
                cli.json,
            )?),
            (Some(DlqAction::Purge { name }), _) => {
                Ok(lampyr_cli::events::dlq_purge(&client(), name, cli.json)?)
            }
            (None, Some(name)) => Ok(lampyr_cli::events::dlq_list(&client(), name, cli.json)?),
            (None, None) => anyhow::bail!(
                "name the function: `lampyr dlq NAME` lists its dead letters (see `lampyr dlq --help`)"
            ),
        },
        Command::Versions { action, name } => match (action, name) {
            (Some(VersionsAction::Rm { name, version }), _) => Ok(
                lampyr_cli::versions::remove(&client(), name, *version, cli.json)?,
            ),
            (None, Some(name)) => Ok(lampyr_cli::versions::list(&client(), name, cli.json)?),
            (None, None) => anyhow::bail!(
                "name the function: `lampyr versions NAME` (or `lampyr versions rm NAME VERSION`)"
            ),
        },
        Command::Alias { action } => match action {
            AliasAction::Set {
                name,
                alias,
                version,
                weight,
                min_instances,
            } => {
                let args = lampyr_cli::versions::AliasArgs {
                    name: name.clone(),
                    alias: alias.clone(),
                    version: *version,
                    weight: weight.clone(),
                    min_instances: *min_instances,
                };
                Ok(lampyr_cli::versions::set(&client(), &args, cli.json)?)
            }
            AliasAction::Ls { name } => Ok(lampyr_cli::versions::list_aliases(
                &client(),
                name,
                cli.json,
            )?),
            AliasAction::Rm { name, alias } => Ok(lampyr_cli::versions::remove_alias(
                &client(),
                name,
                alias,
                cli.json,
            )?),
        },
        Command::Rollback { name, alias } => Ok(lampyr_cli::versions::rollback(
            &client(),
            name,
            alias.as_deref(),
            cli.json,
        )?),
        Command::Ls => Ok(lampyr_cli::list(&client(), cli.json)?),
        Command::Info { name } => Ok(lampyr_cli::info(&client(), name, cli.json)?),
        Command::Rm { name } => Ok(lampyr_cli::remove(&client(), name, cli.json)?),
        Command::Invocations {
            name,
            limit,
            events: true,
            state,
            ..
        } => Ok(lampyr_cli::events::events(
            &client(),
            name,
            state.as_deref(),
            *limit,
            cli.json,
        )?),
        Command::Invocations {
            name,
            limit,
            status,
            since,
            ..
        } => Ok(lampyr_cli::invocations(
            &client(),
            name,
            *limit,
            status.as_deref(),
            since.as_deref(),
            cli.json,
        )?),
        Command::Stats { name, since } => Ok(lampyr_cli::stats(&client(), name, since, cli.json)?),
        Command::Ui => {
            let Some(token) = token() else {
                anyhow::bail!("no API token found in {}: run this on the server's host as the same user, pass --data-dir, or set LAMPYR_TOKEN", data_dir.display());
            };
            let url = format!("{}/ui#token={token}", cli.url.trim_end_matches('/'));
            if cli.json {
                println!("{}", serde_json::json!({ "url": url }));
            } else {
                println!("{url}");
            }
            Ok(())
        }
        Command::Logs {
            name,
            request_id,
            since,
            tail,
            version,
            follow,
        } => Ok(lampyr_cli::logs(
            &client(),
            name,
            &lampyr_cli::LogsArgs {
                request_id: request_id.as_deref(),
                since: since.as_deref(),
                tail: *tail,
                version: *version,
                follow: *follow,
            },
            cli.json,
        )?),
        Command::Doctor => doctor(&data_dir, cli.json),
        Command::Keys { action } => Ok(match action {
            KeysAction::Create { name } => lampyr_cli::keys::create(&client(), name, cli.json),
            KeysAction::Ls => lampyr_cli::keys::list(&client(), cli.json),
            KeysAction::Rm { id } => lampyr_cli::keys::remove(&client(), id, cli.json),
        }?),
    }
}

fn doctor(data_dir: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let report = lampyr_server::doctor::local_report(data_dir)?;
    lampyr_cli::print_doctor(&report, data_dir, json);
    Ok(())
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("LAMPYR_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn serve(data_dir: Option<PathBuf>, args: &ServeArgs) -> anyhow::Result<()> {
    init_tracing(args.log_format);
    let demo = args.demo;
    let mut cfg = match &args.config {
        Some(p) => ServerConfig::from_file(p)?,
        None => ServerConfig::default(),
    };
    if args.listen.is_some() {
        cfg.listen = args.listen;
    }
    if data_dir.is_some() {
        cfg.data_dir = data_dir;
    }
    if let Some(i) = &args.isolation {
        cfg.sandbox.isolation = i.clone();
    }
    if let Some(p) = &args.pools {
        cfg.pools.enabled = p == "on";
    }
    if let Some(w) = args.workers {
        cfg.workers = Some(usize::from(w));
    }
    let data_dir = cfg
        .data_dir
        .clone()
        .unwrap_or_else(lampyr_cli::paths::default_data_dir);
    let workers = cfg.worker_threads()?;
    let rt = lampyr_server::async_runtime(workers).context("starting the async runtime")?;
    rt.block_on(async move {
        let server = Server::start(cfg, data_dir).await?;
        if demo {
            lampyr_server::demo::deploy_examples(server.scheduler()).await?;
        }
        let url = server.app_url();
        tracing::info!(data_dir = %server.data_dir.display(), workers, "lampyr listening on {url} (dashboard: {url}/ui, `lampyr ui` prints it with its token)");
        if demo {
            eprintln!("\ntry:\n  curl {url}/fn/hello-node\n  curl {url}/fn/hello-python\n");
        }
        server.run(shutdown_signal()).await.context("serving")?;
        tracing::info!("lampyr stopped");
        Ok(())
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
