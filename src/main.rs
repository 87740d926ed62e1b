//! The operator binary: parses the command line, waits for the CRD, serves
//! health and metrics, and runs the controller.

use axum::{extract::State, http::StatusCode, routing::get, Router};
use clap::{Parser, Subcommand, ValueEnum};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{Api, Client, Config};
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tracing::{error, info, warn};
use trainingjob_operator::api::SpotProvider;
use trainingjob_operator::controller::{self, Context};
use trainingjob_operator::defaults::Defaults;
use trainingjob_operator::leader;
use trainingjob_operator::metrics::Metrics;

#[derive(Parser)]
#[command(
    name = "trainingjob-operator",
    version,
    about = "Keeps GPU training jobs alive across spot preemptions"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller.
    Run(RunArgs),
    /// Print the CustomResourceDefinition.
    Crd,
    /// Stop the operator and take its finalizer off every pod it manages
    /// (the chart's pre-delete hook), so uninstalling leaves nothing stuck.
    ReleaseFinalizers(trainingjob_operator::uninstall::Args),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Kubeconfig to use; without it, KUBECONFIG, ~/.kube/config, then the
    /// in-cluster service account.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<std::path::PathBuf>,
    /// Image the training pods copy the launcher from: the operator's own.
    #[arg(
        long,
        env = "OPERATOR_IMAGE",
        default_value = "localhost/trainingjob-operator:dev"
    )]
    operator_image: String,
    /// Watch one namespace only (default: all).
    #[arg(long, env = "WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Act only while holding a Lease, so replicas form a warm standby.
    #[arg(long, env = "LEADER_ELECT")]
    leader_elect: bool,
    /// Namespace of the leader-election Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    #[arg(long, env = "LEASE_NAME", default_value = "trainingjob-operator")]
    lease_name: String,
    /// Preemption notice for jobs whose spec sets none. Unset: the spot
    /// provider's documented notice (GKE 15, EKS/Karpenter 120, AKS 30), else 30.
    #[arg(long, env = "DEFAULT_NOTICE_SECONDS",
          value_parser = clap::value_parser!(i32).range(1..=3600))]
    default_notice_seconds: Option<i32>,
    /// Spot provider whose node selector and toleration jobs get when their
    /// spec names none.
    #[arg(long, env = "DEFAULT_SPOT_PROVIDER", value_parser = parse_spot)]
    default_spot_provider: Option<SpotProvider>,
    /// Reconciles that may run at once. Each one in flight holds its own
    /// copy of a job and its pods (about 13 KB), and with no cap a restart
    /// at 10000 jobs started all 10000 at once. Past a few dozen the API
    /// server, not this number, sets the pace.
    #[arg(long, env = "MAX_CONCURRENT_RECONCILES", default_value_t = 64,
          value_parser = clap::value_parser!(u16).range(1..))]
    max_concurrent_reconciles: u16,
}

fn parse_spot(s: &str) -> Result<SpotProvider, String> {
    serde_json::from_value(serde_json::Value::String(s.into()))
        .map_err(|_| format!("{s:?} is not one of GKE, EKS, Karpenter, AKS"))
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

struct Http {
    registry: Registry,
    ready: AtomicBool,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Crd => {
            print!("{}", trainingjob_operator::crd::yaml());
            0
        }
        Command::Run(args) => run(args).await,
        Command::ReleaseFinalizers(args) => trainingjob_operator::uninstall::main(args).await,
    };
    std::process::exit(code);
}

async fn run(args: RunArgs) -> i32 {
    init_logging(args.log_format);
    let client = match client(args.kubeconfig.as_deref()).await {
        Ok(c) => c,
        Err(e) => {
            error!("{e}");
            return 1;
        }
    };
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    tokio::spawn(metrics.heap.clone().run(HEAP_TRIM_PERIOD));
    let http = Arc::new(Http {
        registry,
        ready: AtomicBool::new(false),
    });
    let server = match serve(args.listen, http.clone()).await {
        Ok(task) => task,
        Err(e) => {
            error!("{e}");
            return 1;
        }
    };

    let defaults = Defaults {
        notice_seconds: args.default_notice_seconds,
        spot: args.default_spot_provider,
    };
    let ctx = Arc::new(Context::new(
        client.clone(),
        metrics,
        args.operator_image,
        defaults,
    ));
    let stop = Stop::install();
    let elector = args.leader_elect.then(|| {
        leader::Elector::new(
            client.clone(),
            &args.lease_namespace,
            &args.lease_name,
            leader::identity(),
        )
    });
    let mut controller = tokio::spawn({
        let http = http.clone();
        let stop = stop.clone();
        async move {
            wait_for_crd(client).await;
            http.ready.store(true, Ordering::SeqCst);
            info!("TrainingJob CRD found");
            if let Some(elector) = &elector {
                elector.acquire().await;
            }
            info!("controller running");
            let work = controller::run(
                ctx,
                args.namespace.clone(),
                args.max_concurrent_reconciles,
                stop.wait(),
            );
            lead(work, elector.as_ref()).await
        }
    });

    // Both tasks are critical: a dead health server would get the pod
    // restarted anyway, and a dead controller must not look healthy.
    tokio::select! {
        r = server => { error!("the HTTP server stopped: {r:?}"); 1 }
        r = &mut controller => ended(r),
        _ = stop.wait() => {
            // In-flight reconciles get a moment to finish and the lease is
            // released; past that the process goes anyway. Every action is
            // idempotent, so one cut short is redone by the next leader.
            match tokio::time::timeout(SHUTDOWN_GRACE, controller).await {
                Ok(r) => ended(r),
                Err(_) => { warn!("stopping with reconciles still in flight"); 0 }
            }
        }
    }
}

/// Runs `work` while holding the lease, if there is one to hold.
async fn lead(
    work: impl std::future::Future<Output = ()>,
    elector: Option<&leader::Elector>,
) -> Result<(), &'static str> {
    let Some(elector) = elector else {
        work.await;
        return Ok(());
    };
    tokio::select! {
        _ = work => {
            elector.release().await;
            Ok(())
        }
        // Lost the lease: stop acting at once. The restart rejoins as a
        // standby.
        _ = elector.hold() => Err("lost the leader lease"),
    }
}

/// /healthz, /readyz and /metrics, served from their own task.
async fn serve(
    addr: SocketAddr,
    http: Arc<Http>,
) -> Result<tokio::task::JoinHandle<std::io::Result<()>>, String> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    info!("serving /healthz, /readyz and /metrics on {addr}");
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(http);
    Ok(tokio::spawn(
        async move { axum::serve(listener, app).await },
    ))
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    // Colour codes only for a person at a terminal: `kubectl logs` and log
    // collectors read the escape sequences as text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    match format {
        LogFormat::Json => fmt.json().init(),
        LogFormat::Text => fmt.init(),
    }
}

/// A client from the kubeconfig given, else KUBECONFIG, ~/.kube/config,
/// then the in-cluster service account.
async fn client(kubeconfig: Option<&std::path::Path>) -> Result<Client, String> {
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("cannot read kubeconfig {}: {e}", path.display()))?;
            Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .map_err(|e| e.to_string())
        }
        None => Config::infer().await.map_err(|e| e.to_string()),
    };
    config
        .map(with_user_agent)
        .and_then(|c| Client::try_from(c).map_err(|e| e.to_string()))
        .map_err(|e| format!("cannot build a Kubernetes client: {e}"))
}

/// kube-client sends no User-Agent; an operator that names itself can be
/// told apart in the API server's audit log and request metrics.
fn with_user_agent(mut config: Config) -> Config {
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_static(concat!("trainingjob-operator/", env!("CARGO_PKG_VERSION"))),
    ));
    config
}

/// How often the heap's free pages go back to the kernel (heap.rs): often
/// enough that a burst's garbage does not sit in the RSS for long.
const HEAP_TRIM_PERIOD: Duration = Duration::from_secs(60);

/// How long a stopping operator waits for in-flight work.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(900);

fn ended(r: Result<Result<(), &'static str>, tokio::task::JoinError>) -> i32 {
    match r {
        Ok(Ok(())) => {
            info!("controller stopped");
            0
        }
        Ok(Err(why)) => {
            error!("stopping: {why}");
            1
        }
        Err(e) => {
            error!("the controller task died: {e}");
            1
        }
    }
}

/// SIGTERM or SIGINT, seen once and told to everyone who waits.
#[derive(Clone)]
struct Stop(tokio::sync::watch::Receiver<bool>);

impl Stop {
    fn install() -> Self {
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                error!("cannot install the SIGTERM handler");
                return;
            };
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
            info!("stopping on a signal");
            let _ = tx.send(true);
        });
        Self(rx)
    }

    fn wait(&self) -> impl std::future::Future<Output = ()> + Send + Sync + 'static {
        let mut rx = self.0.clone();
        async move {
            let _ = rx.wait_for(|stopped| *stopped).await;
        }
    }
}

/// The operator stays up without its CRD (installed later, or being
/// upgraded) and only reports not-ready until it appears.
async fn wait_for_crd(client: Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client);
    let mut warned = false;
    loop {
        match crds.get_opt("trainingjobs.trainingjob.dev").await {
            Ok(Some(crd)) if established(&crd) => return,
            Ok(_) if !warned => {
                warn!("waiting for the TrainingJob CRD: install it with `kubectl apply --server-side -f crds/`");
                warned = true;
            }
            Err(e) if !warned => {
                warn!("cannot read the TrainingJob CRD yet: {e}");
                warned = true;
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

fn established(crd: &CustomResourceDefinition) -> bool {
    crd.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        })
}

async fn readyz(State(http): State<Arc<Http>>) -> (StatusCode, &'static str) {
    if http.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ok")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the TrainingJob CRD",
        )
    }
}

async fn metrics_text(State(http): State<Arc<Http>>) -> (StatusCode, String) {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &http.registry) {
        Ok(()) => (StatusCode::OK, body),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_args(extra: &[&str]) -> Result<RunArgs, clap::Error> {
        let argv = ["trainingjob-operator", "run"].iter().chain(extra);
        match Cli::try_parse_from(argv)?.command {
            Command::Run(args) => Ok(args),
            _ => unreachable!("parsed as run"),
        }
    }

    #[test]
    fn reconciles_at_once_are_capped_and_the_cap_is_never_zero() {
        assert_eq!(run_args(&[]).unwrap().max_concurrent_reconciles, 64);
        let set = run_args(&["--max-concurrent-reconciles", "8"]).unwrap();
        assert_eq!(set.max_concurrent_reconciles, 8);
        // 0 would mean no cap to kube-runtime, not none at all.
        let Err(zero) = run_args(&["--max-concurrent-reconciles", "0"]) else {
            panic!("a cap of 0 was taken");
        };
        assert!(
            zero.to_string().contains("max-concurrent-reconciles"),
            "{zero}"
        );
    }
}
