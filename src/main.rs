use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use pps_sidecar::auth::hmac;

mod spool_cli;

/// glibc's malloc showed as a tenth of the delivery path's CPU in profiles; mimalloc's thread-local
/// free lists make the many small per-request allocations (headers, buffers) cheap.
#[global_allocator]
static GLOBAL: pps_sidecar::allocator::MiMalloc = pps_sidecar::allocator::MiMalloc;
use pps_sidecar::config::{Config, LogFormat, Method};
use pps_sidecar::logging;

/// Verifies, deduplicates and normalises Pitchpoint webhooks in front of an app.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// The TOML configuration file.
    #[arg(long, short, env = "PPS_SIDECAR_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve deliveries (the default).
    Run,
    /// Validate the configuration and every secret it references.
    Check,
    /// Print the headers, or a curl command, of a correctly signed test delivery.
    Sign(Box<SignArgs>),
    /// The dead-letter spool of deliveries the app refused (`[spool] dir`).
    #[command(subcommand)]
    Spool(SpoolCommand),
    /// Print Kubernetes YAML with the sidecar added to its workloads and their Services repointed:
    /// `pps-sidecar inject deploy.yaml | kubectl apply -f -`.
    Inject(InjectArgs),
}

#[derive(Args)]
struct InjectArgs {
    /// The YAML (Deployments, StatefulSets, DaemonSets, Pods and their Services), or - for standard input.
    #[arg(default_value = "-")]
    file: String,
    /// A plain second container, for clusters before Kubernetes 1.29 (default: a native sidecar).
    #[arg(long)]
    legacy: bool,
    /// The sidecar's webhook port (server.listen in the ConfigMap).
    #[arg(long, default_value_t = 8080)]
    webhook_port: u16,
    /// The sidecar's admin port (server.admin_listen in the ConfigMap).
    #[arg(long, default_value_t = 9090)]
    admin_port: u16,
    /// The app's port, by name or number, when the Services do not tell it (or the annotation
    /// pps-sidecar.io/app-port on the workload).
    #[arg(long)]
    app_port: Option<String>,
}

#[derive(Subcommand)]
enum SpoolCommand {
    /// One line per entry, oldest first: id, time, app status, verification, tenant, topic, webhook id.
    List,
    /// An entry's metadata, then the request as the app received it, head and body.
    Show { id: String },
    /// Asks the running sidecar (its admin listener, from this host) to re-send entries to the app.
    Replay {
        ids: Vec<String>,
        /// Every entry, oldest first.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
    /// Removes entries without replaying them.
    Drop {
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

#[derive(Args)]
struct SignArgs {
    /// File holding the body, or - for standard input.
    #[arg(long, default_value = "-")]
    body: String,
    /// The HMAC secret, from this environment variable.
    #[arg(long, group = "secret")]
    secret_env: Option<String>,
    /// The HMAC secret, from this file (trailing newline trimmed).
    #[arg(long, group = "secret")]
    secret_file: Option<PathBuf>,
    /// The HMAC secret itself (visible to other users in the process list; prefer the others).
    #[arg(long, group = "secret")]
    secret_value: Option<String>,
    #[arg(long, default_value = "orders/placed")]
    topic: String,
    #[arg(long)]
    sub_topic: Option<String>,
    #[arg(long)]
    tenant: Option<String>,
    /// Defaults to a fresh UUID.
    #[arg(long)]
    webhook_id: Option<String>,
    /// Print a ready curl command for this URL instead of the headers.
    #[arg(long)]
    url: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => {
            // The logger first, in the format the file asks for: with "json", a refused file is one JSON
            // line too, like every line after it.
            let format = cli
                .config
                .as_deref()
                .map_or(LogFormat::Text, logging::format_in_file);
            logging::init(format);
            let config = match load(cli.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            logging::set_format(config.server.log_format);
            pps_sidecar::server::run(config)
        }
        Command::Check => match load(cli.config) {
            Ok(c) => {
                println!("{}", summary(&c));
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Spool(cmd) => match load(cli.config) {
            Ok(c) => spool_cli::run(&c, cmd),
            Err(code) => code,
        },
        Command::Inject(args) => inject(args),
        Command::Sign(args) => match sign(*args) {
            Ok(out) => {
                print!("{out}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
    }
}

fn load(path: Option<PathBuf>) -> Result<Config, ExitCode> {
    let Some(path) = path else {
        report("no configuration: pass --config PATH or set PPS_SIDECAR_CONFIG");
        return Err(ExitCode::from(2));
    };
    Config::load(&path)
        .and_then(|c| pps_sidecar::spool::prepare(&c).map(|()| c))
        .map_err(|e| {
            report(&e.to_string());
            ExitCode::from(1)
        })
}

/// An error that ends the command: a log line when `run` writes JSON logs, else `error: ...` on stderr.
fn report(e: &str) {
    if log::log_enabled!(log::Level::Error) && logging::format_now() == LogFormat::Json {
        log::error!("{e}");
    } else {
        eprintln!("error: {e}");
    }
}

fn summary(c: &Config) -> String {
    let methods: Vec<String> = c
        .auth
        .methods
        .iter()
        .map(|m| match m {
            Method::Hmac => format!("hmac ({} secrets)", c.auth.hmac.secrets.len()),
            Method::Jwt => format!("jwt ({} issuers)", c.auth.jwt.issuers.len()),
        })
        .collect();
    format!(
        "{}: ok: listen {}, admin {}, app {}, paths {}, auth {}{}, dedup {}, spool {}, tracing {}",
        c.path.display(),
        c.server.listen,
        c.server.admin_listen,
        c.upstream.address,
        c.webhooks.paths.join(" "),
        methods.join(" + "),
        if c.auth.enforce { "" } else { " (shadow mode)" },
        c.dedup.describe(),
        c.spool.as_ref().map_or("off".into(), |s| format!(
            "{} (max {} bytes, {} h)",
            s.dir.display(),
            s.max_bytes,
            s.max_age.as_secs() / 3_600
        )),
        // Whether spans are exported, not where: the URL may carry credentials.
        c.tracing
            .as_ref()
            .map_or("propagated, not exported".into(), |t| format!(
                "exported over OTLP/HTTP (sample_ratio {})",
                t.sample_ratio
            )),
    )
}

fn sign(a: SignArgs) -> Result<String, String> {
    let secret = if let Some(var) = &a.secret_env {
        std::env::var(var).map_err(|_| format!("environment variable {var} is not set"))?
    } else if let Some(path) = &a.secret_file {
        std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {}", path.display(), e.kind()))?
            .trim_end_matches(['\n', '\r'])
            .to_string()
    } else if let Some(v) = &a.secret_value {
        v.clone()
    } else {
        return Err("a secret is needed: --secret-env, --secret-file or --secret-value".into());
    };
    let body = if a.body == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(|e| format!("cannot read standard input: {e}"))?;
        buf
    } else {
        std::fs::read(&a.body).map_err(|e| format!("cannot read {}: {}", a.body, e.kind()))?
    };
    let webhook_id = a
        .webhook_id
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let mut headers = vec![
        ("Content-Type", "application/json".to_string()),
        ("X-Pps-Topic", a.topic),
    ];
    if let Some(v) = a.sub_topic {
        headers.push(("X-Pps-Sub-Topic", v));
    }
    if let Some(v) = a.tenant {
        headers.push(("X-Pps-Tenant-Id", v));
    }
    headers.push(("X-Pps-Webhook-Id", webhook_id));
    headers.push(("X-Pps-Triggered-At", now_rfc3339()));
    headers.push(("X-Pps-Hmac-Sha256", hmac::sign(secret.as_bytes(), &body)));

    let Some(url) = a.url else {
        return Ok(headers.iter().map(|(k, v)| format!("{k}: {v}\n")).collect());
    };
    let mut cmd = format!("curl -sS -i -X POST {}", shell_quote(&url));
    for (k, v) in &headers {
        cmd.push_str(&format!(" -H {}", shell_quote(&format!("{k}: {v}"))));
    }
    if a.body == "-" {
        let text = String::from_utf8(body).map_err(
            |_| "a binary body from standard input cannot go in a command line; use --body FILE",
        )?;
        cmd.push_str(&format!(" --data-binary {}", shell_quote(&text)));
    } else {
        cmd.push_str(&format!(" --data-binary @{}", shell_quote(&a.body)));
    }
    cmd.push('\n');
    Ok(cmd)
}

/// `inject`: the YAML on stdout, notes on stderr; on a refusal, every reason on stderr and nothing on
/// stdout, so that `| kubectl apply -f -` applies nothing.
fn inject(a: InjectArgs) -> ExitCode {
    let input = if a.file == "-" {
        let mut buf = String::new();
        std::io::stdin().read_to_string(&mut buf).map(|_| buf)
    } else {
        std::fs::read_to_string(&a.file)
    };
    let input = match input {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot read {}: {}", a.file, e.kind());
            return ExitCode::from(2);
        }
    };
    let opts = pps_sidecar::inject::Options {
        legacy: a.legacy,
        webhook_port: a.webhook_port,
        admin_port: a.admin_port,
        app_port: a.app_port,
    };
    match pps_sidecar::inject::inject(&input, &opts) {
        Ok(out) => {
            print!("{}", out.yaml);
            for n in out.notes {
                eprintln!("note: {n}");
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in errors {
                eprintln!("error: {e}");
            }
            ExitCode::from(1)
        }
    }
}

fn now_rfc3339() -> String {
    use pps_sidecar::timefmt::{Timestamp, format_rfc3339, unix_now};
    format_rfc3339(&Timestamp {
        unix: unix_now(),
        frac: String::new(),
    })
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}
