//! `containerd-shim-kata-cc-v2`: containerd's runtime `io.containerd.kata-cc.v2`.

use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::{run, spawn, ExitSignal, Shim};
use containerd_shim::protos::api::DeleteResponse;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::types::introspection::RuntimeInfo;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::{Config, Error, Flags, StartOpts};
use kata_cc_shim::service::{cleanup_after_crash, pod_id_of, TaskService};

/// The runtime name containerd knows us by.
const RUNTIME_ID: &str = "io.containerd.kata-cc.v2";

struct KataShim {
    exit: Arc<ExitSignal>,
    id: String,
    namespace: String,
    bundle: std::path::PathBuf,
}

#[async_trait]
impl Shim for KataShim {
    type T = TaskService;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        let bundle = if args.bundle.is_empty() {
            std::env::current_dir().unwrap_or_default()
        } else {
            args.bundle.clone().into()
        };
        KataShim { exit: Arc::new(ExitSignal::default()), id: args.id.clone(), namespace: args.namespace.clone(), bundle }
    }

    /// Not reached: `main` answers `start` itself (see [`start`]).
    async fn start_shim(&mut self, opts: StartOpts) -> Result<String, Error> {
        start_daemon(opts).await
    }

    /// Cleans up after a shim that is gone (containerd calls this when the task's shim died).
    async fn delete_shim(&mut self) -> Result<DeleteResponse, Error> {
        let cleaned = cleanup_after_crash(&self.id, &self.bundle);
        log::info!("delete {} in {}: {}", self.id, self.namespace, if cleaned { "pod VM and state removed" } else { "nothing to clean" });
        Ok(DeleteResponse {
            pid: 0,
            exit_status: 128 + libc::SIGKILL as u32,
            exited_at: MessageField::some(Timestamp::now()),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    /// Not reached: `main` runs the daemon itself (see `server.rs`).
    async fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        TaskService::new(self.namespace.clone(), Some(publisher), Arc::clone(&self.exit))
    }

    /// The `-info` action (containerd 2.x): name, version and the runtime features
    /// (`rro` mounts among them), see `kata_cc_shim::features`.
    fn runtime_info(runtime_id: &str, _options: Option<&Any>) -> Result<RuntimeInfo, Error> {
        kata_cc_shim::features::runtime_info(runtime_id).map_err(|e| Error::Other(format!("runtime features: {e}")))
    }
}

/// One shim per pod: containers of a CRI pod share their sandbox's shim (and VM).
async fn start_daemon(opts: StartOpts) -> Result<String, Error> {
    let spec = oci_spec::runtime::Spec::load("config.json")
        .map_err(|e| Error::InvalidArgument(format!("read config.json of {}: {e}", opts.id)))?;
    let grouping = pod_id_of(&spec, &opts.id);
    let address = spawn(opts, &grouping, Vec::new()).await?;
    std::fs::write("address", address.as_bytes()).map_err(|e| Error::Other(format!("write address file: {e}")))?;
    Ok(address)
}

/// The `start` action, answered with the bare socket address. The crate answers with a
/// JSON object that containerd 1.7+ understands but 1.6 (Debian bookworm) dials as if it
/// were a path; every version accepts the bare address (task API v2 over ttrpc).
async fn start(flags: &Flags) -> Result<String, Error> {
    use std::io::{IsTerminal, Read};
    // Runtime options arrive on stdin; the shim daemon reads them from the Create request.
    if !std::io::stdin().is_terminal() {
        let mut sink = Vec::new();
        let _ = std::io::stdin().take(1 << 20).read_to_end(&mut sink);
    }
    let opts = StartOpts {
        id: flags.id.clone(),
        publish_binary: flags.publish_binary.clone(),
        address: flags.address.clone(),
        ttrpc_address: std::env::var("TTRPC_ADDRESS").unwrap_or_default(),
        namespace: flags.namespace.clone(),
        debug: flags.debug,
        ..StartOpts::default()
    };
    start_daemon(opts).await
}

#[tokio::main]
async fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if let Ok(flags) = containerd_shim::parse(&argv[1..]) {
        if flags.action.is_empty() && !flags.socket.is_empty() && !flags.info && !flags.version {
            if let Err(e) = kata_cc_shim::server::serve(&flags).await {
                eprintln!("{RUNTIME_ID}: {e}");
                std::process::exit(1);
            }
            return;
        }
        if flags.action == "start" {
            match start(&flags).await {
                Ok(address) => {
                    print!("{address}");
                    return;
                }
                Err(e) => {
                    eprintln!("{RUNTIME_ID}: start: {e}");
                    std::process::exit(1);
                }
            }
        }
    }
    // The VM and vsock daemon are our children and the hypervisor crate waits for them:
    // no reaper that would steal their exit statuses, and no subreaper role.
    let config = Config { no_reaper: true, no_sub_reaper: true, ..Config::default() };
    run::<KataShim>(RUNTIME_ID, Some(config)).await;
}
