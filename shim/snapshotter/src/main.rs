//! `kata-cc-snapshotter`: containerd proxy snapshotter `kata-cc` for guest pull.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kata_cc_snapshotter::pull;
use kata_cc_snapshotter::register::{self, RegisterOpts};
use kata_cc_snapshotter::{server, GuestPullSnapshotter};
use tokio::signal::unix::{signal, SignalKind};

/// containerd remote snapshotter for kata-cc guest pull: records image layers without
/// fetching them and hands the image reference to the shim in the `kata-cc.image-ref=`
/// option of a read-only bind of an empty directory. Without a subcommand it serves
/// containerd.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Unix socket to serve containerd's snapshot API on (containerd's
    /// `[proxy_plugins.kata-cc] address`).
    #[arg(
        long,
        env = "KATA_CC_SNAPSHOTTER_ADDRESS",
        default_value = "/run/kata-cc-snapshotter/snapshotter.sock"
    )]
    address: PathBuf,
    /// Directory for the snapshot metadata (`metadata.json`) and the empty directory
    /// `guest-pull-rootfs` that every mount binds.
    #[arg(
        long,
        env = "KATA_CC_SNAPSHOTTER_ROOT",
        default_value = "/var/lib/kata-cc-snapshotter"
    )]
    root: PathBuf,
    /// Log filter (tracing `EnvFilter` syntax, e.g. `info`, `debug`); `RUST_LOG` wins if set.
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Pull IMAGE for guest pull without downloading any layer: fetch its index/manifest
    /// and config into containerd (with `ctr content fetch-object`), create the image,
    /// and register its layers with the snapshotter (see register-image). Use this
    /// instead of `ctr image pull`, which downloads and unpacks every layer on the host.
    Pull {
        /// The image reference (`registry/repo:tag`); also the image's name in containerd
        /// and the reference the guest will pull.
        image: String,
        #[command(flatten)]
        target: Target,
        /// The ctr binary.
        #[arg(long, default_value = "ctr")]
        ctr: PathBuf,
        /// Talk plain HTTP to the registry (ctr --plain-http).
        #[arg(long)]
        plain_http: bool,
        /// Registry credentials `user[:password]` (ctr --user).
        #[arg(long, short = 'u')]
        user: Option<String>,
        /// containerd registry host configuration directory (ctr --hosts-dir).
        #[arg(long)]
        hosts_dir: Option<PathBuf>,
    },
    /// Make an image whose manifest and config containerd already has unpacked for
    /// kata-cc, without any layer blob (what a CRI pull does). For a multi-platform image
    /// `ctr content fetch --metadata-only REF` gets just those; `pull` does both steps.
    RegisterImage {
        /// The image name in containerd; also the reference the guest will pull.
        image: String,
        #[command(flatten)]
        target: Target,
    },
}

/// Where `pull`/`register-image` work.
#[derive(Debug, clap::Args)]
struct Target {
    /// containerd's gRPC socket.
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    containerd: PathBuf,
    /// containerd namespace.
    #[arg(long, short = 'n', default_value = "default")]
    namespace: String,
    /// The snapshotter's name in containerd's configuration.
    #[arg(long, default_value = "kata-cc")]
    snapshotter: String,
    /// Platform (`os/arch[/variant]`) to pick from a multi-platform image [default: the host's].
    #[arg(long)]
    platform: Option<String>,
}

impl Target {
    fn into_opts(self, image: String) -> RegisterOpts {
        RegisterOpts {
            containerd: self.containerd,
            namespace: self.namespace,
            snapshotter: self.snapshotter,
            image,
            platform: self.platform.unwrap_or_else(register::host_platform),
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    // h2/hyper/tower debug output drowns the requests: keep them at warn unless asked.
    let default = format!("h2=warn,hyper=warn,tower=warn,{}", args.log_level);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&default))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kata-cc-snapshotter: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match args.command {
        None => runtime.block_on(serve(args.address, args.root)),
        Some(Command::RegisterImage { image, target }) => {
            let opts = target.into_opts(image);
            let chain = runtime.block_on(register::register_image(&opts))?;
            report(&opts, &chain);
            Ok(())
        }
        Some(Command::Pull {
            image,
            target,
            ctr,
            plain_http,
            user,
            hosts_dir,
        }) => {
            let opts = target.into_opts(image);
            let mut registry_flags = Vec::new();
            if plain_http {
                registry_flags.push("--plain-http".to_owned());
            }
            if let Some(user) = user {
                registry_flags.extend(["--user".to_owned(), user]);
            }
            if let Some(dir) = hosts_dir {
                registry_flags.extend(["--hosts-dir".to_owned(), dir.display().to_string()]);
            }
            let fetch = pull::FetchOpts {
                ctr,
                registry_flags,
            };
            let chain = runtime.block_on(pull::pull(&opts, &fetch))?;
            report(&opts, &chain);
            Ok(())
        }
    }
}

fn report(opts: &RegisterOpts, chain: &[String]) {
    println!(
        "{}: {} layer(s) registered with snapshotter {} (no layer downloaded); top chain ID:",
        opts.image,
        chain.len(),
        opts.snapshotter
    );
    println!("{}", chain.last().map(String::as_str).unwrap_or_default());
}

async fn serve(address: PathBuf, root: PathBuf) -> anyhow::Result<()> {
    let snapshotter = GuestPullSnapshotter::open(&root)?;
    let listener = server::bind(&address).await?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
    };
    tracing::info!(address = %address.display(), root = %root.display(), "serving snapshotter kata-cc");
    server::serve(snapshotter, listener, &address, shutdown).await?;
    Ok(())
}
