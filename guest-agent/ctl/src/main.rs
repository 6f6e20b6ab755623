//! `kata-cc-agent-ctl`: drive a kata-cc (or Kata) guest agent by hand.
//!
//! ```text
//! kata-cc-agent-ctl --addr unix:///run/agent.sock run c1 --bundle ./bundle
//! kata-cc-agent-ctl --addr hvsock:///run/kata-cc/pod/vm.vsock:1024 exec c1 e1 -t -- sh
//! ```

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use protocols::agent as pb;
use protocols::{context_with, AgentAddr, AgentClient, ConnectOptions};
use tokio::io::AsyncReadExt;

/// Talk to a guest agent over ttrpc.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Agent address: unix://PATH, vsock://CID:PORT or hvsock://PATH:PORT.
    #[arg(long, env = "KATA_CC_AGENT_ADDR")]
    addr: String,
    /// Seconds to keep trying to connect.
    #[arg(long, default_value_t = 10)]
    connect_timeout: u64,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Health check.
    Check,
    /// Agent version.
    Version,
    /// Guest details.
    GuestDetails,
    /// CreateSandbox.
    CreateSandbox {
        /// Sandbox id.
        #[arg(long, default_value = "sandbox")]
        id: String,
        /// Hostname of the pod.
        #[arg(long, default_value = "")]
        hostname: String,
    },
    /// DestroySandbox (kills every container).
    DestroySandbox,
    /// CreateContainer from an OCI bundle's config.json (not started).
    Create {
        /// Container id.
        id: String,
        /// Bundle directory holding config.json.
        #[arg(long)]
        bundle: PathBuf,
        /// Rootfs path as the agent sees it (overrides root.path of config.json).
        #[arg(long)]
        rootfs: Option<String>,
    },
    /// StartContainer.
    Start {
        /// Container id.
        id: String,
    },
    /// Create, start, relay stdio, wait, remove; exits with the container's status.
    Run {
        /// Container id.
        id: String,
        /// Bundle directory holding config.json.
        #[arg(long)]
        bundle: PathBuf,
        /// Rootfs path as the agent sees it (overrides root.path of config.json).
        #[arg(long)]
        rootfs: Option<String>,
        /// Keep the container after it exits.
        #[arg(long)]
        keep: bool,
    },
    /// Run a process in a running container and relay its stdio; exits with its status.
    Exec {
        /// Container id.
        id: String,
        /// Exec id.
        exec_id: String,
        /// Allocate a terminal (interactive).
        #[arg(short = 't', long)]
        tty: bool,
        /// Extra environment, NAME=value.
        #[arg(short = 'e', long = "env")]
        env: Vec<String>,
        /// Working directory.
        #[arg(long, default_value = "/")]
        cwd: String,
        /// uid[:gid] to run as.
        #[arg(short = 'u', long)]
        user: Option<String>,
        /// The command.
        #[arg(trailing_var_arg = true, required = true)]
        args: Vec<String>,
    },
    /// Relay the output of a process until it ends.
    Attach {
        /// Container id.
        id: String,
        /// Exec id (empty: the container's init).
        #[arg(default_value = "")]
        exec_id: String,
    },
    /// SignalProcess.
    Kill {
        /// Container id.
        id: String,
        /// Exec id (empty: the container's init).
        #[arg(default_value = "")]
        exec_id: String,
        /// Signal number.
        #[arg(short, long, default_value_t = 15)]
        signal: u32,
    },
    /// WaitProcess; prints the exit status.
    Wait {
        /// Container id.
        id: String,
        /// Exec id (empty: the container's init).
        #[arg(default_value = "")]
        exec_id: String,
    },
    /// StatsContainer.
    Stats {
        /// Container id.
        id: String,
    },
    /// PauseContainer.
    Pause {
        /// Container id.
        id: String,
    },
    /// ResumeContainer.
    Resume {
        /// Container id.
        id: String,
    },
    /// RemoveContainer.
    Remove {
        /// Container id.
        id: String,
        /// Seconds allowed for the teardown (0: no limit).
        #[arg(long, default_value_t = 0)]
        timeout: u32,
    },
    /// Wait for the next OOM event and print the container id.
    OomEvent,
    /// CopyFile a local file to a path in the guest.
    CopyFile {
        /// Local file.
        src: PathBuf,
        /// Destination path in the guest (below the shared directory).
        dst: String,
    },
}

fn main() {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kata-cc-agent-ctl: cannot start runtime: {e}");
            std::process::exit(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("kata-cc-agent-ctl: {e:#}");
            std::process::exit(1);
        }
    }
}

fn print_msg(m: &dyn protocols::protobuf::MessageDyn) {
    println!("{}", protocols::protobuf::text_format::print_to_string_pretty(m));
}

/// No timeout: for long polls (reads, waits, OOM events).
fn forever() -> ttrpc::context::Context {
    context_with(Duration::ZERO)
}

async fn run(cli: Cli) -> anyhow::Result<i32> {
    let addr: AgentAddr = cli.addr.parse().with_context(|| format!("--addr {:?}", cli.addr))?;
    let opts = ConnectOptions { timeout: Duration::from_secs(cli.connect_timeout), ..ConnectOptions::default() };
    let c = AgentClient::connect(&addr, opts).await?;
    let a = c.agent();
    match cli.cmd {
        Cmd::Check => print_msg(&c.check().await?),
        Cmd::Version => print_msg(&c.version().await?),
        Cmd::GuestDetails => {
            let mut r = pb::GuestDetailsRequest::new();
            r.mem_block_size = true;
            print_msg(&a.get_guest_details(c.context(), &r).await?);
        }
        Cmd::CreateSandbox { id, hostname } => {
            let mut r = pb::CreateSandboxRequest::new();
            r.sandbox_id = id;
            r.hostname = hostname;
            a.create_sandbox(c.context(), &r).await?;
        }
        Cmd::DestroySandbox => {
            a.destroy_sandbox(c.context(), &pb::DestroySandboxRequest::new()).await?;
        }
        Cmd::Create { id, bundle, rootfs } => {
            create(&c, &id, &bundle, rootfs).await?;
        }
        Cmd::Start { id } => start(&c, &id).await?,
        Cmd::Run { id, bundle, rootfs, keep } => {
            let tty = create(&c, &id, &bundle, rootfs).await?;
            let relay = Relay::begin(&c, &id, "", tty).await?;
            start(&c, &id).await?;
            let status = relay.finish(&c, &id, "").await?;
            if !keep {
                let mut r = pb::RemoveContainerRequest::new();
                r.container_id = id;
                a.remove_container(c.context(), &r).await?;
            }
            return Ok(status);
        }
        Cmd::Exec { id, exec_id, tty, env, cwd, user, args } => {
            let mut p = protocols::oci::Process::new();
            p.Args = args;
            p.Env = [vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()], env].concat();
            p.Cwd = cwd;
            p.Terminal = tty;
            let mut u = protocols::oci::User::new();
            if let Some(user) = user {
                let (uid, gid) = user.split_once(':').unwrap_or((&user, "0"));
                u.UID = uid.parse().with_context(|| format!("--user uid {uid:?}"))?;
                u.GID = gid.parse().with_context(|| format!("--user gid {gid:?}"))?;
            }
            p.User = protocols::protobuf::MessageField::some(u);
            let mut r = pb::ExecProcessRequest::new();
            r.container_id = id.clone();
            r.exec_id = exec_id.clone();
            r.process = protocols::protobuf::MessageField::some(p);
            a.exec_process(c.context(), &r).await?;
            let relay = Relay::begin(&c, &id, &exec_id, tty).await?;
            return relay.finish(&c, &id, &exec_id).await;
        }
        Cmd::Attach { id, exec_id } => {
            let relay = Relay::begin(&c, &id, &exec_id, false).await?;
            return relay.finish(&c, &id, &exec_id).await;
        }
        Cmd::Kill { id, exec_id, signal } => {
            let mut r = pb::SignalProcessRequest::new();
            r.container_id = id;
            r.exec_id = exec_id;
            r.signal = signal;
            a.signal_process(c.context(), &r).await?;
        }
        Cmd::Wait { id, exec_id } => {
            let mut r = pb::WaitProcessRequest::new();
            r.container_id = id;
            r.exec_id = exec_id;
            println!("{}", a.wait_process(forever(), &r).await?.status);
        }
        Cmd::Stats { id } => {
            let mut r = pb::StatsContainerRequest::new();
            r.container_id = id;
            print_msg(&a.stats_container(c.context(), &r).await?);
        }
        Cmd::Pause { id } => {
            let mut r = pb::PauseContainerRequest::new();
            r.container_id = id;
            a.pause_container(c.context(), &r).await?;
        }
        Cmd::Resume { id } => {
            let mut r = pb::ResumeContainerRequest::new();
            r.container_id = id;
            a.resume_container(c.context(), &r).await?;
        }
        Cmd::Remove { id, timeout } => {
            let mut r = pb::RemoveContainerRequest::new();
            r.container_id = id;
            r.timeout = timeout;
            a.remove_container(c.context(), &r).await?;
        }
        Cmd::OomEvent => println!("{}", a.get_oom_event(forever(), &pb::GetOOMEventRequest::new()).await?.container_id),
        Cmd::CopyFile { src, dst } => {
            use std::os::unix::fs::MetadataExt;
            let data = std::fs::read(&src).with_context(|| format!("read {}", src.display()))?;
            let meta = std::fs::metadata(&src).with_context(|| format!("stat {}", src.display()))?;
            const CHUNK: usize = 1 << 20;
            let chunks: Vec<&[u8]> = if data.is_empty() { vec![&[][..]] } else { data.chunks(CHUNK).collect() };
            for (i, chunk) in chunks.into_iter().enumerate() {
                let mut r = pb::CopyFileRequest::new();
                r.path = dst.clone();
                r.file_size = data.len() as i64;
                r.file_mode = meta.mode();
                r.dir_mode = 0o755;
                r.offset = (i * CHUNK) as i64;
                r.data = chunk.to_vec();
                a.copy_file(c.context(), &r).await?;
            }
        }
    }
    Ok(0)
}

/// Sends CreateContainer for the bundle; returns whether the process has a terminal.
async fn create(c: &AgentClient, id: &str, bundle: &std::path::Path, rootfs: Option<String>) -> anyhow::Result<bool> {
    let path = bundle.join("config.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let mut spec: oci_spec::runtime::Spec =
        serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
    if let Some(r) = rootfs {
        let mut root = spec.root().clone().unwrap_or_default();
        root.set_path(PathBuf::from(r));
        spec.set_root(Some(root));
    }
    let tty = spec.process().as_ref().and_then(|p| p.terminal()).unwrap_or(false);
    let mut r = pb::CreateContainerRequest::new();
    r.container_id = id.to_string();
    r.exec_id = id.to_string();
    r.OCI = protocols::protobuf::MessageField::some(protocols::convert::spec_to_grpc(&spec));
    c.agent().create_container(c.context(), &r).await?;
    Ok(tty)
}

async fn start(c: &AgentClient, id: &str) -> anyhow::Result<()> {
    let mut r = pb::StartContainerRequest::new();
    r.container_id = id.to_string();
    c.agent().start_container(c.context(), &r).await?;
    Ok(())
}

/// Copies a process's output to ours and our stdin to it.
struct Relay {
    outputs: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
    input: Option<tokio::task::JoinHandle<()>>,
    _raw: Option<RawMode>,
}

impl Relay {
    async fn begin(c: &AgentClient, id: &str, exec_id: &str, tty: bool) -> anyhow::Result<Relay> {
        let raw = if tty && std::io::stdin().is_terminal() { Some(RawMode::enter()?) } else { None };
        if tty {
            resize(c, id, exec_id).await;
        }
        let mut outputs = vec![tokio::spawn(copy_out(c.clone(), id.to_string(), exec_id.to_string(), true))];
        if !tty {
            outputs.push(tokio::spawn(copy_out(c.clone(), id.to_string(), exec_id.to_string(), false)));
        }
        let input = Some(tokio::spawn(copy_in(c.clone(), id.to_string(), exec_id.to_string())));
        Ok(Relay { outputs, input, _raw: raw })
    }

    async fn finish(mut self, c: &AgentClient, id: &str, exec_id: &str) -> anyhow::Result<i32> {
        let mut r = pb::WaitProcessRequest::new();
        r.container_id = id.to_string();
        r.exec_id = exec_id.to_string();
        let status = c.agent().wait_process(forever(), &r).await?.status;
        for o in self.outputs.drain(..) {
            o.await.context("output relay")??;
        }
        if let Some(i) = self.input.take() {
            i.abort();
        }
        Ok(status)
    }
}

async fn copy_out(c: AgentClient, id: String, exec_id: String, stdout: bool) -> anyhow::Result<()> {
    let mut r = pb::ReadStreamRequest::new();
    r.container_id = id;
    r.exec_id = exec_id;
    r.len = 32 * 1024;
    loop {
        let resp = if stdout {
            c.agent().read_stdout(forever(), &r).await
        } else {
            c.agent().read_stderr(forever(), &r).await
        };
        let data = resp?.data;
        if data.is_empty() {
            return Ok(());
        }
        let written = if stdout {
            let mut o = std::io::stdout().lock();
            o.write_all(&data).and_then(|()| o.flush())
        } else {
            let mut o = std::io::stderr().lock();
            o.write_all(&data).and_then(|()| o.flush())
        };
        written.context("write local output")?;
    }
}

async fn copy_in(c: AgentClient, id: String, exec_id: String) {
    let mut stdin = tokio::io::stdin();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        // A read error ends our input like EOF does.
        let n = stdin.read(&mut buf).await.unwrap_or_default();
        if n == 0 {
            let mut r = pb::CloseStdinRequest::new();
            r.container_id = id.clone();
            r.exec_id = exec_id.clone();
            let _ = c.agent().close_stdin(c.context(), &r).await;
            return;
        }
        let mut r = pb::WriteStreamRequest::new();
        r.container_id = id.clone();
        r.exec_id = exec_id.clone();
        r.data = buf[..n].to_vec();
        if c.agent().write_stdin(c.context(), &r).await.is_err() {
            return;
        }
    }
}

/// Sends our terminal's size to the process's pty (if we have a terminal).
async fn resize(c: &AgentClient, id: &str, exec_id: &str) {
    let mut ws = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes one `winsize` into the valid pointer; fd 0 may not be a
    // terminal, in which case the call fails and `ws` is left zeroed.
    let rc = unsafe { libc::ioctl(0, libc::TIOCGWINSZ, &mut ws) };
    if rc != 0 || ws.ws_row == 0 {
        return;
    }
    let mut r = pb::TtyWinResizeRequest::new();
    r.container_id = id.to_string();
    r.exec_id = exec_id.to_string();
    r.row = u32::from(ws.ws_row);
    r.column = u32::from(ws.ws_col);
    let _ = c.agent().tty_win_resize(c.context(), &r).await;
}

/// Puts the local terminal in raw mode until dropped.
struct RawMode {
    saved: nix::sys::termios::Termios,
}

impl RawMode {
    fn enter() -> anyhow::Result<Self> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).context("read terminal settings")?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSANOW, &raw).context("set raw mode")?;
        Ok(Self { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(std::io::stdin(), nix::sys::termios::SetArg::TCSANOW, &self.saved);
    }
}

