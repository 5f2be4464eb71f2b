//! `basaltctl`: the Basalt operator CLI.
//!
//! basaltctl talks to machined's gRPC API over mutual TLS: it generates secrets and
//! configs, applies configuration, reads statistics and audit trails, and reboots, fanning
//! out to many nodes client-side (`-n a,b,c`: one line or block per node, per-node errors,
//! a non-zero exit code if any node failed; `-o json` for machines). Errors are printed
//! with their whole cause chain.

mod apply;
mod follow;
mod health;
mod images_cmd;
mod render;
mod reply;
mod resources_cmd;
mod services_cmd;
mod upgrade_cmd;

use anyhow::{Context as _, anyhow, bail};
use basaltctl::config::{ClientConfig, Context, MachineConfigInput, TokenKeyEntry};
use basaltctl::connect::{self, ConnectOptions, ServerTrust, TlsSettings};
use basaltctl::fanout::fan_out;
use basaltctl::secrets::{Secrets, write_file};
use basaltctl::token::TokenKey;
use clap::{Parser, Subcommand, ValueEnum};
use follow::StreamOp;
use render::Op;
use reply::Rendered;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use upgrade_cmd::UpgradeArgs;

/// The Basalt operator CLI.
#[derive(Debug, Parser)]
#[command(name = "basaltctl", version)]
struct Cli {
    /// Client configuration file [default: ~/.basalt/basaltctl.yaml].
    #[arg(long, env = "BASALTCONFIG", global = true)]
    basaltconfig: Option<PathBuf>,
    /// Context of the client configuration to use [default: its current context].
    #[arg(long, global = true)]
    context: Option<String>,
    /// Nodes to talk to (comma-separated `host[:port]`) [default: the context's endpoints].
    #[arg(short = 'n', long = "nodes", value_delimiter = ',', global = true)]
    nodes: Vec<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text, global = true)]
    output: Output,
    /// Bearer token sent with every call (overrides the context's token).
    #[arg(long, env = "BASALT_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Seconds allowed for connecting (TCP and TLS) to each node.
    #[arg(long, default_value_t = 5, global = true)]
    connect_timeout: u64,
    /// Connection retries (with exponential backoff) on network errors.
    #[arg(long, default_value_t = 3, global = true)]
    retries: u32,
    #[command(subcommand)]
    command: Command,
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    /// Human-readable text.
    Text,
    /// One JSON array with one object per node (streams: one JSON object per line).
    Json,
    /// The same documents as YAML (streams: one YAML document per entry).
    Yaml,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate secrets, configurations and tokens (local, no node contacted).
    #[command(subcommand)]
    Gen(Gen),
    /// Show the version of each node.
    Version,
    /// Apply a machine configuration.
    ApplyConfig(ApplyArgs),
    /// Patch the configuration each node runs (read, patch, validate, apply).
    Patch(PatchArgs),
    /// Query the audit log of each node.
    Audit(AuditArgs),
    /// Reboot each node.
    Reboot {
        /// Reboot even when a service refuses to stop in time.
        #[arg(long)]
        force: bool,
    },
    /// Switch each node's next boot back to its other slot (which must be bootable).
    Rollback {
        /// Reboot right away into the other slot.
        #[arg(long)]
        reboot: bool,
    },
    /// Power each node off (orderly: filesystems synced and made read-only first).
    Shutdown {
        /// Power off even when a service refuses to stop in time.
        #[arg(long)]
        force: bool,
    },
    /// Show CPU, memory, load, disk and network statistics of each node.
    Stats,
    /// List the processes of each node (pid, parent, resident memory, CPU, command).
    Processes,
    /// Show the A/B boot state of each node.
    BootStatus,
    /// Install a signed update bundle into the inactive slot: pushed from a file (resumed
    /// after a cut), or fetched by the node from a URL.
    Upgrade(UpgradeArgs),
    /// Show machine events (config applies, service state changes, boot and power
    /// actions); with -f keep following.
    Events {
        /// Keep the stream open and print new events as they happen.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Start with at most this many recent events (0: all the node keeps).
        #[arg(long, default_value_t = 0)]
        tail: u32,
    },
    /// Show resources the node publishes (ResourceService): TYPE is services, hostname,
    /// sysctls, modules, config, or NAMESPACE/Type; with -w keep watching for changes.
    Get {
        /// Resource type.
        #[arg(value_name = "TYPE")]
        kind: String,
        /// One resource by id.
        id: Option<String>,
        /// Print the resources, then every change as it happens.
        #[arg(short = 'w', long)]
        watch: bool,
    },
    /// Check each node: API, committed boot slot, services, config, drift, time; exits
    /// non-zero when a node fails a check.
    Health,
    /// List the services each node supervises.
    Services,
    /// Start, stop or restart one service.
    Service {
        /// The service id.
        name: String,
        /// What to do.
        #[arg(value_enum)]
        action: services_cmd::ServiceAction,
    },
    /// List the container images on each node, with the services that use them.
    Images,
    /// Manage container images: remove one (`rm NAME`) or every unused one (`prune`), or
    /// import an image archive (`import FILE`).
    Image {
        /// What to do.
        #[command(subcommand)]
        action: images_cmd::ImageAction,
    },
    /// Show the log of one service ("machined" for the daemon's own log).
    Logs {
        /// The service id.
        name: String,
        /// Keep the stream open and print new lines as they are written.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Start with at most this many of the latest lines (0: all kept).
        #[arg(long, default_value_t = 0)]
        tail: u32,
    },
    /// Show the kernel log of each node.
    Dmesg {
        /// Keep the stream open and print new messages as they arrive.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Start with at most this many of the latest messages (0: all).
        #[arg(long, default_value_t = 0)]
        tail: u32,
    },
    /// Wipe STATE and/or DATA and reboot: the node comes back in maintenance mode when STATE
    /// is wiped. Asks for confirmation unless --yes.
    #[command(group(clap::ArgGroup::new("wipe").required(true).multiple(true).args(["state", "data"])))]
    Reset {
        /// Wipe STATE: configuration, secrets, audit log, upgrade progress.
        #[arg(long)]
        state: bool,
        /// Wipe DATA: workloads, logs, container storage.
        #[arg(long)]
        data: bool,
        /// Power off after the wipe instead of rebooting.
        #[arg(long)]
        shutdown: bool,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Subcommand)]
enum Gen {
    /// Generate a CA, a node server certificate and admin/operator/reader client
    /// certificates.
    Secrets {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// IP address or DNS name of the node(s), for the server certificate (repeatable).
        #[arg(long = "san", required = true)]
        sans: Vec<String>,
        /// Validity of the certificates, in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Write a machine configuration and a client configuration (basaltctl.yaml).
    Config {
        /// Directory written by `gen secrets`.
        #[arg(long)]
        secrets: PathBuf,
        /// Hostname of the node: its machine id (token audience, shown by Version).
        #[arg(long, alias = "machine-id")]
        hostname: String,
        /// Cluster id: names the client context when set.
        #[arg(long, alias = "cluster-id")]
        cluster: Option<String>,
        /// A patch applied to the generated configuration, in order (repeatable): a strategic
        /// merge patch (YAML documents with `kind`) or an RFC 6902 JSON patch (a list of
        /// operations on `/MachineConfig/...`); `@FILE` reads it from a file.
        #[arg(long = "config-patch")]
        config_patches: Vec<String>,
        /// Node address(es) for the client configuration (repeatable).
        #[arg(long = "endpoint", required = true)]
        endpoints: Vec<String>,
        /// Role of the client certificate put into basaltctl.yaml.
        #[arg(long, default_value = "admin")]
        role: String,
        /// Trusted token key `ID=BASE64PUBLICKEY[@AUDIENCE]` (repeatable); its tokens must
        /// name AUDIENCE (default: the hostname).
        #[arg(long = "token-key")]
        token_keys: Vec<String>,
        /// Output directory (machine.yaml and basaltctl.yaml).
        #[arg(long)]
        out: PathBuf,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Generate an Ed25519 token signing key; prints the public key for the config.
    TokenKey {
        /// Key file to write (PEM, mode 0600).
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a bearer token.
    Token {
        /// Key file written by `gen token-key`.
        #[arg(long)]
        key: PathBuf,
        /// Key id the node trusts the key under.
        #[arg(long)]
        kid: String,
        /// Audience: machine id or cluster id (repeatable).
        #[arg(long = "aud", required = true)]
        audience: Vec<String>,
        /// Scope: `role:admin|operator|reader` or `rpc:/pkg.Service/Method` (repeatable).
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        /// Token id (`jti`) [default: random].
        #[arg(long)]
        jti: Option<String>,
    },
}

#[derive(Debug, clap::Args)]
struct PatchArgs {
    /// A patch, in order (repeatable): a strategic merge patch (YAML documents with `kind`)
    /// or an RFC 6902 JSON patch (operations on `/MachineConfig/...`); `@FILE` reads a file.
    #[arg(short = 'p', long = "patch", required = true)]
    patches: Vec<String>,
    /// How the configuration takes effect.
    #[arg(long, value_enum, default_value_t = apply::Mode::Auto)]
    mode: apply::Mode,
    /// Only validate and show the diff.
    #[arg(long)]
    dry_run: bool,
    /// For `--mode try`: seconds before the previous configuration is restored.
    #[arg(long, default_value_t = 60)]
    try_timeout: u64,
}

#[derive(Debug, clap::Args)]
struct ApplyArgs {
    /// The machine configuration file.
    #[arg(short = 'f', long = "file")]
    file: PathBuf,
    /// How the configuration takes effect.
    #[arg(long, value_enum, default_value_t = apply::Mode::Auto)]
    mode: apply::Mode,
    /// Only validate and show the diff.
    #[arg(long)]
    dry_run: bool,
    /// For `--mode try`: seconds before the previous configuration is restored.
    #[arg(long, default_value_t = 60)]
    try_timeout: u64,
    /// Talk to a node in maintenance mode: no client certificate, and the server is
    /// checked by --fingerprint (or not at all without it).
    #[arg(long)]
    insecure: bool,
    /// SHA-256 fingerprint of the maintenance certificate, as printed on the node console.
    #[arg(long, requires = "insecure")]
    fingerprint: Option<String>,
}

#[derive(Debug, clap::Args)]
struct AuditArgs {
    /// Only entries at or after this RFC 3339 time.
    #[arg(long)]
    since: Option<String>,
    /// Only this RPC (full method path).
    #[arg(long)]
    rpc: Option<String>,
    /// Only this result: a gRPC code name (OK, PERMISSION_DENIED, …) or DENIED.
    #[arg(long)]
    result: Option<String>,
    /// At most this many entries (most recent).
    #[arg(long, default_value_t = 100)]
    limit: u32,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("basaltctl: error: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("basaltctl: error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, joined with ": ", leaving out a cause whose text an earlier
/// message already contains (several layers repeat their source in their own message).
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let msg = cause.to_string();
        if out.contains(&msg) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&msg);
    }
    out
}

fn default_config_path() -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    home.join(".basalt").join("basaltctl.yaml")
}

/// Asks on the terminal before a destructive operation; anything but `yes` aborts.
fn confirm(question: &str) -> anyhow::Result<()> {
    use std::io::{BufRead as _, Write as _};
    eprint!("{question} Type 'yes' to continue: ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if answer.trim() != "yes" {
        bail!("not confirmed: nothing was done (pass --yes to skip the question)");
    }
    Ok(())
}

/// The operation of a command: unary (collected, then printed) or a stream (printed as it
/// arrives).
enum Work {
    Unary(Op),
    Stream(StreamOp),
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::Gen(g) = &cli.command {
        return generate(g);
    }
    let op = match &cli.command {
        Command::Events { follow, tail } => Work::Stream(StreamOp::Events {
            tail: *tail,
            follow: *follow,
        }),
        Command::Get { kind, id, watch } => Work::Stream(StreamOp::Get {
            kind: resources_cmd::resolve(kind)?,
            id: id.clone(),
            watch: *watch,
        }),
        Command::Logs { name, follow, tail } => Work::Stream(StreamOp::Logs {
            service: name.clone(),
            tail: *tail,
            follow: *follow,
        }),
        Command::Dmesg { follow, tail } => Work::Stream(StreamOp::Dmesg {
            tail: *tail,
            follow: *follow,
        }),
        _ => Work::Unary(unary_op(&cli)?),
    };
    connect_and_run(cli, op).await
}

fn unary_op(cli: &Cli) -> anyhow::Result<Op> {
    Ok(match &cli.command {
        Command::Gen(_) => unreachable!("gen is local"),
        Command::Version => Op::Version,
        Command::ApplyConfig(a) => {
            let data =
                std::fs::read(&a.file).with_context(|| format!("reading {}", a.file.display()))?;
            Op::Apply {
                data: Arc::new(data),
                mode: a.mode,
                dry_run: a.dry_run,
                try_timeout: a.try_timeout,
            }
        }
        Command::Patch(p) => Op::Patch {
            patches: Arc::new(
                p.patches
                    .iter()
                    .map(|t| read_patch(t))
                    .collect::<anyhow::Result<Vec<_>>>()?,
            ),
            mode: p.mode,
            dry_run: p.dry_run,
            try_timeout: p.try_timeout,
        },
        Command::Audit(a) => Op::Audit {
            since: a.since.clone(),
            rpc: a.rpc.clone(),
            result: a.result.clone(),
            limit: a.limit,
        },
        Command::Reboot { force } => Op::Reboot { force: *force },
        Command::Shutdown { force } => Op::Shutdown { force: *force },
        Command::Rollback { reboot } => Op::Rollback { reboot: *reboot },
        Command::Stats => Op::Stats,
        Command::Processes => Op::Processes,
        Command::BootStatus => Op::BootStatus,
        Command::Upgrade(u) => u.op(),
        Command::Services => Op::Services,
        Command::Images => Op::Images,
        Command::Image { action } => Op::Image {
            action: action.clone(),
        },
        Command::Health => Op::Health,
        Command::Service { name, action } => Op::Service {
            id: name.clone(),
            action: *action,
        },
        Command::Reset {
            state,
            data,
            shutdown,
            yes,
        } => {
            if !yes {
                let what = match (state, data) {
                    (true, true) => "STATE and DATA",
                    (true, false) => "STATE",
                    _ => "DATA",
                };
                let nodes = if cli.nodes.is_empty() {
                    "the context's nodes".to_string()
                } else {
                    cli.nodes.join(", ")
                };
                confirm(&format!(
                    "This wipes {what} on {nodes} and then {}.",
                    if *shutdown { "powers off" } else { "reboots" }
                ))?;
            }
            Op::Reset {
                wipe_state: *state,
                wipe_data: *data,
                shutdown: *shutdown,
            }
        }
        Command::Events { .. }
        | Command::Logs { .. }
        | Command::Dmesg { .. }
        | Command::Get { .. } => {
            unreachable!("streaming commands are not unary")
        }
    })
}

async fn connect_and_run(cli: Cli, op: Work) -> anyhow::Result<ExitCode> {
    let insecure = match &cli.command {
        Command::ApplyConfig(a) if a.insecure => Some(a.fingerprint.clone()),
        _ => None,
    };
    let (nodes, tls, context_token) = match insecure {
        Some(fingerprint) => {
            if cli.nodes.is_empty() {
                bail!("--insecure needs the node(s) to talk to: -n ADDRESS");
            }
            let trust = match fingerprint {
                Some(fp) => ServerTrust::Fingerprint(fp),
                None => {
                    eprintln!(
                        "basaltctl: warning: --insecure without --fingerprint: the node's identity is not checked"
                    );
                    ServerTrust::Insecure
                }
            };
            let tls = TlsSettings {
                trust,
                identity: None,
            };
            (cli.nodes.clone(), tls, None)
        }
        None => {
            let path = cli.basaltconfig.clone().unwrap_or_else(default_config_path);
            let config = ClientConfig::load(&path).context("loading the client configuration")?;
            let ctx = config.context(cli.context.as_deref(), &path)?;
            let nodes = if cli.nodes.is_empty() {
                ctx.endpoints.clone()
            } else {
                cli.nodes.clone()
            };
            if nodes.is_empty() {
                bail!("no nodes: pass -n or set endpoints in the context");
            }
            let tls = TlsSettings::mutual(&ctx.ca, &ctx.cert, &ctx.key)
                .with_context(|| format!("TLS settings of {}", path.display()))?;
            (nodes, tls, ctx.token.clone())
        }
    };
    // An upgrade streams a whole slot image and an image import a whole archive, a followed
    // stream lasts until interrupted: no per-call deadline.
    let request_timeout = match (&cli.command, &op) {
        (Command::Upgrade(_), _)
        | (
            Command::Image {
                action: images_cmd::ImageAction::Import { .. },
            },
            _,
        ) => Duration::from_secs(24 * 3600),
        (_, Work::Stream(s)) if s.follows() => Duration::from_secs(365 * 24 * 3600),
        _ => ConnectOptions::default().request_timeout,
    };
    let opts = ConnectOptions {
        connect_timeout: Duration::from_secs(cli.connect_timeout),
        request_timeout,
        retries: cli.retries,
        token: cli.token.clone().or(context_token),
        ..ConnectOptions::default()
    };
    let tls = Arc::new(tls);
    let op = match op {
        Work::Unary(op) => op,
        Work::Stream(op) => return stream(&nodes, tls, opts, op, cli.output).await,
    };
    let results = fan_out(&nodes, |node| {
        let (tls, opts, op) = (tls.clone(), opts.clone(), op.clone());
        async move {
            let clients = connect::connect(&node, &tls, &opts)
                .await
                .map_err(|e| error_chain(&anyhow::Error::new(e)))?;
            op.run(clients).await.map_err(|e| error_chain(&e))
        }
    })
    .await;
    let failed = results.iter().filter(|r| r.result.is_err()).count();
    match cli.output {
        Output::Json | Output::Yaml => {
            let doc: Vec<serde_json::Value> = results
                .iter()
                .map(|r| match &r.result {
                    Ok(Rendered { json, .. }) => {
                        serde_json::json!({"node": r.node, "result": json})
                    }
                    Err(e) => serde_json::json!({"node": r.node, "error": e}),
                })
                .collect();
            if cli.output == Output::Yaml {
                print!("{}", yaml_serde::to_string(&doc)?);
            } else {
                println!("{}", serde_json::to_string_pretty(&doc)?);
            }
        }
        Output::Text => {
            let single = results.len() == 1;
            for r in &results {
                match &r.result {
                    Ok(Rendered { text, .. }) if single => println!("{text}"),
                    Ok(Rendered { text, .. }) if !text.contains('\n') => {
                        println!("{}\t{text}", r.node)
                    }
                    Ok(Rendered { text, .. }) => println!("== {} ==\n{text}", r.node),
                    Err(e) => eprintln!("basaltctl: {}: error: {e}", r.node),
                }
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Runs a streaming operation on every node at once, printing entries as they arrive.
async fn stream(
    nodes: &[String],
    tls: Arc<TlsSettings>,
    opts: ConnectOptions,
    op: StreamOp,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let several = nodes.len() > 1;
    let format = match output {
        Output::Text => follow::Format::Text,
        Output::Json => follow::Format::Json,
        Output::Yaml => follow::Format::Yaml,
    };
    let results = fan_out(nodes, |node| {
        let (tls, opts, op) = (tls.clone(), opts.clone(), op.clone());
        async move {
            let clients = connect::connect(&node, &tls, &opts)
                .await
                .map_err(|e| error_chain(&anyhow::Error::new(e)))?;
            let mut emit = |line| follow::print(&node, several, format, line);
            op.run(clients, &mut emit)
                .await
                .map_err(|e| error_chain(&e))
        }
    })
    .await;
    let mut failed = false;
    for r in &results {
        if let Err(e) = &r.result {
            eprintln!("basaltctl: {}: error: {e}", r.node);
            failed = true;
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn generate(g: &Gen) -> anyhow::Result<ExitCode> {
    match g {
        Gen::Secrets {
            out,
            sans,
            days,
            force,
        } => {
            let secrets = Secrets::generate(sans, *days)?;
            for path in secrets.write_dir(out, *force)? {
                println!("wrote {}", path.display());
            }
        }
        Gen::Config {
            secrets,
            hostname,
            cluster,
            config_patches,
            endpoints,
            role,
            token_keys,
            out,
            force,
        } => {
            let s = Secrets::read_dir(secrets)
                .with_context(|| format!("reading secrets from {}", secrets.display()))?;
            let client = s
                .client(role)
                .ok_or_else(|| anyhow!("no client certificate for role {role:?}"))?;
            let token_keys = token_keys
                .iter()
                .map(|kv| kv.parse::<TokenKeyEntry>().map_err(|e| anyhow!(e)))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let patches = config_patches
                .iter()
                .map(|p| read_patch(p))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let machine = basaltctl::config::render_machine_config(
                &MachineConfigInput {
                    hostname: hostname.clone(),
                    cluster: cluster.clone(),
                    ca_pem: s.ca.cert_pem.clone(),
                    cert_pem: s.server.cert_pem.clone(),
                    key_pem: s.server.key_pem.clone(),
                    token_keys,
                },
                &patches,
            )?;
            let name = cluster.clone().unwrap_or_else(|| hostname.clone());
            let client_config = ClientConfig {
                context: name.clone(),
                contexts: BTreeMap::from([(
                    name,
                    Context {
                        endpoints: endpoints.clone(),
                        ca: s.ca.cert_pem.clone(),
                        cert: client.cert_pem.clone(),
                        key: client.key_pem.clone(),
                        token: None,
                    },
                )]),
            };
            std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
            for (file, text) in [
                ("machine.yaml", machine),
                ("basaltctl.yaml", client_config.to_yaml()),
            ] {
                let path = out.join(file);
                refuse_overwrite(&path, *force)?;
                write_file(&path, text.as_bytes(), true)?;
                println!("wrote {}", path.display());
            }
        }
        Gen::TokenKey { out } => {
            let key = TokenKey::generate()?;
            refuse_overwrite(out, false)?;
            write_file(out, key.to_pem().as_bytes(), true)?;
            println!("wrote {}", out.display());
            println!("publicKey: {}", key.public_key_base64());
        }
        Gen::Token {
            key,
            kid,
            audience,
            scopes,
            ttl,
            jti,
        } => {
            let pem = std::fs::read_to_string(key)
                .with_context(|| format!("reading {}", key.display()))?;
            let key = TokenKey::from_pem(&pem)?;
            let now = SystemTime::now().duration_since(UNIX_EPOCH)?;
            let jti = jti
                .clone()
                .unwrap_or_else(|| format!("{kid}-{}", now.as_nanos()));
            println!(
                "{}",
                key.sign(
                    kid,
                    audience,
                    scopes,
                    (now.as_secs(), now.as_secs() + ttl),
                    &jti
                )
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn refuse_overwrite(path: &Path, force: bool) -> anyhow::Result<()> {
    if path.exists() && !force {
        bail!("{} exists (pass --force to overwrite)", path.display());
    }
    Ok(())
}

/// A `--config-patch` value: inline text, or `@FILE`.
fn read_patch(arg: &str) -> anyhow::Result<basalt_config::Patch> {
    let (text, origin) = match arg.strip_prefix('@') {
        Some(file) => (
            std::fs::read_to_string(file).with_context(|| format!("reading patch {file}"))?,
            file.to_string(),
        ),
        None => (arg.to_string(), "inline patch".to_string()),
    };
    basalt_config::Patch::parse(&text).with_context(|| format!("{origin}: not a config patch"))
}
