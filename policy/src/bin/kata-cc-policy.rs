//! `kata-cc-policy`: author and check kata-cc agent policies.
//!
//! ```text
//! kata-cc-policy gen pod.yaml --oci-layout ./images/app -o pod.cc.yaml --rego-dir out/
//! kata-cc-policy eval out/Pod-web.rego CreateContainerRequest create.json
//! kata-cc-policy explain out/Pod-web.rego CreateContainerRequest create.json
//! kata-cc-policy diff old.rego new.rego
//! kata-cc-policy digest pod.cc.yaml
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use policy::gen::{self, ImageStore, InitData, Settings};
use policy::{BodyOutcome, PolicyEngine};
use protocols::initdata;

#[derive(Parser)]
#[command(name = "kata-cc-policy", version, about = "Author and check kata-cc agent policies")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate the policy of every pod in Kubernetes YAML and write the YAML back with
    /// images pinned, the initdata annotation and `runtimeClassName: kata-cc`.
    Gen {
        /// Kubernetes YAML files (Pod, Deployment, ..., List; ConfigMaps and Secrets they use).
        #[arg(required = true)]
        yaml: Vec<PathBuf>,
        /// Where to write the YAML (default: stdout).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// An OCI image layout holding images of the pod (repeatable).
        #[arg(long = "oci-layout")]
        oci_layout: Vec<PathBuf>,
        /// A directory of OCI image layouts (repeatable).
        #[arg(long = "image-config")]
        image_config: Vec<PathBuf>,
        /// Settings JSON (fields it omits keep the built-in defaults).
        #[arg(long)]
        settings: Option<PathBuf>,
        /// Look up images that no layout holds in their registries (tags are pinned to the
        /// digest they name now).
        #[arg(long)]
        registry: bool,
        /// A registry spoken to over plain HTTP, `host:port` (repeatable).
        #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
        insecure_registry: Vec<String>,
        /// Registry credentials, `HOST=USER:PASSWORD` (repeatable).
        #[arg(long = "registry-auth", value_name = "HOST=USER:PASSWORD")]
        registry_auth: Vec<String>,
        /// A docker config.json with registry credentials (default: $DOCKER_CONFIG/config.json
        /// or ~/.docker/config.json, if present).
        #[arg(long = "docker-config")]
        docker_config: Option<PathBuf>,
        /// Also write `<Kind>-<name>.rego` and `<Kind>-<name>.initdata.toml` here.
        #[arg(long = "rego-dir")]
        rego_dir: Option<PathBuf>,
    },
    /// Decide one request: prints allowed/denied and why; exit 0 allowed, 1 denied, 2 error.
    Eval(EvalArgs),
    /// Like eval, and show which rule failed, on which field, what was sent and allowed.
    Explain(EvalArgs),
    /// Compare two generated policies; exit 0 identical, 1 different, 2 error.
    Diff {
        /// The old policy (.rego, or initdata .toml).
        a: PathBuf,
        /// The new policy.
        b: PathBuf,
    },
    /// Print the initdata digest and the SNP HOST_DATA / TDX MRCONFIGID values.
    Digest {
        /// An initdata TOML file, or Kubernetes YAML carrying the initdata annotation.
        file: PathBuf,
    },
    /// Print the built-in settings (a starting point for --settings).
    Settings,
}

#[derive(clap::Args)]
struct EvalArgs {
    /// The policy (.rego, or initdata .toml carrying policy.rego).
    policy: PathBuf,
    /// The request message name, e.g. CreateContainerRequest (or the RPC name).
    request: String,
    /// The request as JSON (proto field names).
    input: PathBuf,
    /// Requests to decide first, to build up the policy state: REQUEST=FILE (repeatable).
    #[arg(long = "before", value_name = "REQUEST=FILE")]
    before: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Gen {
            yaml,
            output,
            oci_layout,
            image_config,
            settings,
            rego_dir,
            registry,
            insecure_registry,
            registry_auth,
            docker_config,
        } => {
            let settings = match settings {
                Some(p) => Settings::load(&p)?,
                None => Settings::default(),
            };
            let mut store = ImageStore::new(&settings.platform);
            for l in &oci_layout {
                store.add_layout(l)?;
            }
            for d in &image_config {
                store.add_layouts_in(d)?;
            }
            if registry {
                let mut options = gen::RegistryOptions { insecure: insecure_registry, ..Default::default() };
                for a in &registry_auth {
                    options.add_auth(a)?;
                }
                let default_config = std::env::var_os("DOCKER_CONFIG")
                    .map(PathBuf::from)
                    .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")))
                    .map(|d| d.join("config.json"))
                    .filter(|p| p.is_file());
                if let Some(path) = docker_config.or(default_config) {
                    options.add_docker_config(&path)?;
                }
                store = store.with_remote(Box::new(gen::Registry::new(options)?));
            } else if !insecure_registry.is_empty() || !registry_auth.is_empty() || docker_config.is_some() {
                bail!("--insecure-registry, --registry-auth and --docker-config need --registry");
            }
            let docs = gen::load_files(&yaml)?;
            let out = gen::generate(docs, &store, &settings)?;
            for p in &out.policies {
                let init = InitData::parse(&p.initdata)?;
                eprintln!(
                    "{}: {} containers, initdata {} {}",
                    p.workload,
                    p.data.containers.len(),
                    init.algorithm,
                    hex::encode(initdata::digest(init.algorithm, p.initdata.as_bytes()))
                );
                for c in &p.data.containers {
                    eprintln!("  {} {}: {}", c.kind, c.name, c.image);
                }
                if let Some(dir) = &rego_dir {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("creating {}", dir.display()))?;
                    let stem = file_stem(&p.workload);
                    write(&dir.join(format!("{stem}.rego")), &p.rego)?;
                    write(&dir.join(format!("{stem}.initdata.toml")), &p.initdata)?;
                }
            }
            match output {
                Some(path) => write(&path, &out.yaml)?,
                None => print!("{}", out.yaml),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Eval(args) => {
            let (mut engine, request, input) = prepare(&args)?;
            let decision = engine.evaluate(&request, &input)?;
            if decision.allowed {
                println!("{request}: {decision}");
                Ok(ExitCode::SUCCESS)
            } else {
                println!("{request}: {decision}");
                Ok(ExitCode::from(1))
            }
        }
        Command::Explain(args) => {
            let (engine, request, input) = prepare(&args)?;
            let why = engine.explain(&request, &input)?;
            let allowed = match &why.decision {
                Ok(d) => {
                    println!("{request}: {}", if d.allowed { "allowed" } else { "denied" });
                    d.allowed
                }
                Err(e) => {
                    println!("{request}: denied (evaluation failed: {e})");
                    false
                }
            };
            if allowed {
                return Ok(ExitCode::SUCCESS);
            }
            // Our rules list every failing field; other policies get the engine's trace.
            let details =
                gen::request_errors(engine.source(), &request, &input, engine.pstate())?;
            match details {
                Some(errors) if !errors.is_empty() => {
                    println!("failed checks (field: value sent, value allowed):");
                    for e in errors {
                        println!("  {e}");
                    }
                }
                _ => {
                    if let Ok(Some(reason)) = why.decision.as_ref().map(|d| d.reason.as_ref()) {
                        println!("reason: {reason}");
                    }
                    if why.rules.is_empty() {
                        println!("no rule named {request} in the policy (default deny)");
                    }
                    for rule in &why.rules {
                        for body in &rule.bodies {
                            if let BodyOutcome::StoppedAt(c) | BodyOutcome::ReachedEnd(c) =
                                &body.outcome
                            {
                                let indent = "  ".repeat(rule.depth + 1);
                                println!("{indent}{} (line {}): {}", rule.name, c.line, c.text);
                            }
                        }
                    }
                }
            }
            Ok(ExitCode::from(1))
        }
        Command::Diff { a, b } => {
            let ta = read_policy(&a)?;
            let tb = read_policy(&b)?;
            let report = gen::diff(&ta, &tb)
                .with_context(|| format!("comparing {} and {}", a.display(), b.display()))?;
            print!("{report}");
            Ok(if report.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        Command::Digest { file } => {
            let text = read(&file)?;
            let documents = match InitData::parse(&text) {
                Ok(_) => vec![(file.display().to_string(), text)],
                Err(toml_err) => {
                    let found = initdata_in_yaml(&file, &text)?;
                    if found.is_empty() {
                        return Err(anyhow::Error::new(toml_err).context(format!(
                            "{} is neither initdata TOML nor YAML with the {} annotation",
                            file.display(),
                            gen::INITDATA_ANNOTATION
                        )));
                    }
                    found
                }
            };
            for (label, toml) in documents {
                let algorithm = InitData::parse(&toml).with_context(|| label.clone())?.algorithm;
                let digest = initdata::digest(algorithm, toml.as_bytes());
                let host_data = initdata::host_data(&digest);
                let mrconfigid = initdata::mrconfigid(&digest);
                println!("{label}");
                println!("  algorithm:             {algorithm}");
                println!("  digest:                {}", hex::encode(&digest));
                println!("  SNP HOST_DATA (32 B):  {}", hex::encode(host_data));
                println!("  SNP host-data (base64): {}", b64(&host_data));
                println!("  TDX MRCONFIGID (48 B): {}", hex::encode(mrconfigid));
                println!("  TDX mrconfigid (base64): {}", b64(&mrconfigid));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Settings => {
            println!("{}", serde_json::to_string_pretty(&Settings::default())?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn file_stem(workload: &str) -> String {
    let label = workload.split(" (").next().unwrap_or(workload);
    label.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '_' { c } else { '-' }).collect()
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// A policy file: Rego, or initdata TOML whose `policy.rego` is used.
fn read_policy(path: &Path) -> anyhow::Result<String> {
    let text = read(path)?;
    if text.trim_start().starts_with("version") {
        if let Ok(init) = InitData::parse(&text) {
            return match init.policy() {
                Some(p) => Ok(p.to_owned()),
                None => bail!("{}: initdata has no policy.rego", path.display()),
            };
        }
    }
    Ok(text)
}

fn request_name(name: &str) -> String {
    policy::request_name(name).map_or_else(|| name.to_owned(), str::to_owned)
}

fn read_json(path: &Path) -> anyhow::Result<serde_json::Value> {
    serde_json::from_str(&read(path)?).with_context(|| format!("{} is not JSON", path.display()))
}

fn prepare(args: &EvalArgs) -> anyhow::Result<(PolicyEngine, String, serde_json::Value)> {
    let source = read_policy(&args.policy)?;
    let mut engine = PolicyEngine::from_rego(&source, None)
        .with_context(|| format!("loading {}", args.policy.display()))?;
    for step in &args.before {
        let Some((req, file)) = step.split_once('=') else {
            bail!("--before {step}: expected REQUEST=FILE");
        };
        let req = request_name(req);
        let d = engine.evaluate(&req, &read_json(Path::new(file))?)?;
        if !d.allowed {
            bail!("--before {step} was denied: {d}");
        }
    }
    let input = read_json(&args.input)?;
    Ok((engine, request_name(&args.request), input))
}

/// The initdata TOML of every pod template in a YAML file that carries the annotation.
fn initdata_in_yaml(path: &Path, text: &str) -> anyhow::Result<Vec<(String, String)>> {
    let docs = gen::parse_str(path, text)?;
    let mut out = Vec::new();
    for doc in &docs {
        for w in gen::workloads(doc)? {
            if let Some(value) = w.annotation(gen::INITDATA_ANNOTATION) {
                let toml = gen::decode_annotation(value).with_context(|| w.label())?;
                out.push((w.label(), toml));
            }
        }
    }
    Ok(out)
}
