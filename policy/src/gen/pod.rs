//! From a pod template and its images' configs to [`PolicyData`]: what the CRI will ask the
//! agent for, container by container.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::image::{ImageConfig, ImageError, ImageRef, ImageStore, ResolvedImage};
use super::k8s::{self, regex_escape, scalar_string, K8sError, References, Workload};
use super::{
    ContainerData, MountData, PolicyData, ProcessData, ResourceLimits, SandboxData, Settings, StorageData,
    POLICY_DATA_VERSION,
};

/// The PATH containerd gives a container whose image sets none.
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Where Kata's shim shares a container's Kubernetes files: `$(cpath)/<cid>-<16 random>-<name>`.
const SHARED_PREFIX: &str = "$(cpath)/$(bundle-id)-[a-z0-9]{16}-";
const SERVICE_ACCOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
const IPV4: &str = r"[0-9]{1,3}(\.[0-9]{1,3}){3}";

/// Why a pod's policy could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    /// The pod template has an unexpected shape.
    #[error(transparent)]
    Shape(#[from] K8sError),
    /// An image could not be resolved.
    #[error("container {container}: image {image}")]
    Image {
        /// The container.
        container: String,
        /// The image as written.
        image: String,
        /// The cause.
        #[source]
        source: ImageError,
    },
    /// Two containers share a name.
    #[error("two containers are named {0}")]
    DuplicateContainer(String),
    /// A container ends up with no command.
    #[error("container {0}: no command (neither the pod nor the image gives one)")]
    NoCommand(String),
    /// The user is a name, which needs the image's /etc/passwd.
    #[error("container {container}: image user `{user}` is a name; resolving it needs the image's /etc/passwd, which is not implemented: set securityContext.runAsUser")]
    UserName {
        /// The container.
        container: String,
        /// The image's `User`.
        user: String,
    },
    /// A ConfigMap or Secret the pod needs is not in the input.
    #[error("container {container}: {kind} {name}{} is not in the input (add it to the YAML, or mark the reference optional)", key.as_ref().map(|k| format!(" key {k}")).unwrap_or_default())]
    MissingReference {
        /// The container.
        container: String,
        /// `ConfigMap` or `Secret`.
        kind: &'static str,
        /// Its name.
        name: String,
        /// The key, for a key reference.
        key: Option<String>,
    },
    /// A volume type the generator does not know how the shim mounts.
    #[error("container {container}: volume {volume} is of a kind not supported yet ({kind})")]
    UnsupportedVolume {
        /// The container.
        container: String,
        /// The volume.
        volume: String,
        /// Its kind (`csi`, `ephemeral`, ...).
        kind: String,
    },
    /// A pod feature the rules do not allow.
    #[error("{0} is not supported in a kata-cc pod policy")]
    Unsupported(&'static str),
}

/// The policy data of a pod and the pinned image of each container (for the YAML).
#[derive(Debug)]
pub(crate) struct Pinned {
    pub(crate) data: PolicyData,
    pub(crate) images: BTreeMap<String, String>,
}

struct Ctx<'a> {
    w: &'a Workload,
    refs: &'a References,
    settings: &'a Settings,
    namespace: String,
    spec: &'a Value,
}

/// Build the policy data of workload `w`.
pub(crate) fn build(
    w: &Workload,
    refs: &References,
    images: &ImageStore,
    settings: &Settings,
) -> Result<Pinned, PodError> {
    let spec = w.template.get("spec").unwrap_or(&Value::Null);
    if spec.get("shareProcessNamespace").and_then(Value::as_bool) == Some(true) {
        return Err(PodError::Unsupported("shareProcessNamespace"));
    }
    let namespace = w.namespace.clone().unwrap_or_else(|| settings.default_namespace.clone());
    let ctx = Ctx { w, refs, settings, namespace, spec };

    let mut containers = vec![pause(&ctx, images)?];
    let mut pinned_images = BTreeMap::new();
    let mut names = BTreeSet::new();
    for (list, field) in [("initContainers", "spec.initContainers"), ("containers", "spec.containers")] {
        let items = match spec.get(list) {
            None | Some(Value::Null) => continue,
            Some(Value::Array(items)) => items,
            Some(_) => return Err(w.shape(field, "expected a list").into()),
        };
        for (i, c) in items.iter().enumerate() {
            let field = format!("{field}[{i}]");
            let data = container(&ctx, c, &field, images)?;
            if !names.insert(data.name.clone()) {
                return Err(PodError::DuplicateContainer(data.name));
            }
            pinned_images.insert(data.name.clone(), data.image.clone());
            containers.push(data);
        }
    }
    if names.is_empty() {
        return Err(w.shape("spec.containers", "no containers").into());
    }
    let sysctls = spec
        .pointer("/securityContext/sysctls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| {
            Some((s.get("name")?.as_str()?.to_owned(), scalar_string(s.get("value")?)))
        })
        .collect();
    let data = PolicyData {
        version: POLICY_DATA_VERSION,
        common: settings.common.clone(),
        sandbox: SandboxData {
            name_regex: w.name_regex.clone(),
            namespace: ctx.namespace.clone(),
            sysctls,
            hostname: spec.get("hostname").and_then(Value::as_str).map(str::to_owned),
        },
        request_defaults: settings.request_defaults.clone(),
        containers,
    };
    Ok(Pinned { data, images: pinned_images })
}

fn resolve(images: &ImageStore, container: &str, image: &str) -> Result<ResolvedImage, PodError> {
    images.resolve(image).map_err(|source| PodError::Image {
        container: container.to_owned(),
        image: image.to_owned(),
        source,
    })
}

/// The pause container: from its image if a layout has it, else the well-known config of
/// the pause image when the settings pin it by digest.
fn pause(ctx: &Ctx<'_>, images: &ImageStore) -> Result<ContainerData, PodError> {
    let reference = &ctx.settings.pause_image;
    let (image_ref, digest, config) = match images.resolve(reference) {
        Ok(r) => (r.reference, r.digest, r.config),
        Err(ImageError::NotFound(_)) => {
            let r = ImageRef::parse(reference).map_err(|source| PodError::Image {
                container: "pause".to_owned(),
                image: reference.clone(),
                source,
            })?;
            let Some(digest) = r.digest.clone() else {
                return Err(PodError::Image {
                    container: "pause (settings.pause_image)".to_owned(),
                    image: reference.clone(),
                    source: ImageError::NotFound(reference.clone()),
                });
            };
            let config = ImageConfig {
                entrypoint: Some(vec!["/pause".to_owned()]),
                user: Some("65535:65535".to_owned()),
                env: Some(vec![DEFAULT_PATH.to_owned()]),
                ..ImageConfig::default()
            };
            (r, digest, config)
        }
        Err(source) => {
            return Err(PodError::Image { container: "pause".to_owned(), image: reference.clone(), source })
        }
    };
    let args = merge_command(&config, None, None);
    if args.is_empty() {
        return Err(PodError::NoCommand("pause".to_owned()));
    }
    let (uid, gid) = image_user(&config, "pause")?;
    let pinned = image_ref.pinned(&digest);
    let mut mounts = Vec::new();
    // containerd 1.7+ adds nosuid/nodev/noexec; 1.6 sends `rbind, ro` only.
    for options in [&["rbind", "ro", "nosuid", "nodev", "noexec"][..], &["rbind", "rw", "nosuid", "nodev", "noexec"], &["rbind", "ro"]] {
        mounts.push(MountData {
            destination: "/etc/resolv.conf".to_owned(),
            kind: "bind".to_owned(),
            source: format!("{SHARED_PREFIX}resolv\\.conf"),
            options: strings(options),
            alt_options: Vec::new(),
            required: false,
        });
    }
    Ok(ContainerData {
        name: "pause".to_owned(),
        kind: "sandbox".to_owned(),
        image: pinned.clone(),
        image_names: vec![pinned],
        privileged: false,
        read_only_root: true,
        seccomp: seccomp(ctx.spec.get("securityContext"), None),
        process: ProcessData {
            Args: args,
            Cwd: config.working_dir.clone().filter(|d| !d.is_empty()).unwrap_or_else(|| "/".to_owned()),
            UID: uid,
            GID: gid,
            // containerd gives the sandbox the image's env only (no default PATH).
            Env: config.env.clone().unwrap_or_default(),
            EnvRegex: Vec::new(),
            NoNewPrivileges: true,
            Terminal: false,
            Capabilities: ctx.settings.common.default_caps.clone(),
            AdditionalGids: supplemental_groups(ctx.spec.get("securityContext")),
        },
        mounts,
        storages: Vec::new(),
        exec_commands: Vec::new(),
        resources: ResourceLimits::default(),
    })
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

fn with_default_path(env: Vec<String>) -> Vec<String> {
    if env.iter().any(|e| e.starts_with("PATH=")) {
        env
    } else {
        let mut out = vec![DEFAULT_PATH.to_owned()];
        out.extend(env);
        out
    }
}

fn string_list(w: &Workload, v: Option<&Value>, field: &str) -> Result<Option<Vec<String>>, PodError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => Ok(Some(items.iter().map(scalar_string).collect())),
        Some(_) => Err(w.shape(field, "expected a list of strings").into()),
    }
}

fn container(
    ctx: &Ctx<'_>,
    c: &Value,
    field: &str,
    images: &ImageStore,
) -> Result<ContainerData, PodError> {
    let w = ctx.w;
    let name = c
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| w.shape(&format!("{field}.name"), "missing"))?
        .to_owned();
    let image = c
        .get("image")
        .and_then(Value::as_str)
        .ok_or_else(|| w.shape(&format!("{field}.image"), "missing"))?;
    let resolved = resolve(images, &name, image)?;
    if let Some(pin) = &resolved.reference.digest {
        if pin != &resolved.digest {
            return Err(PodError::Image {
                container: name,
                image: image.to_owned(),
                source: ImageError::PinMismatch {
                    reference: image.to_owned(),
                    pinned: pin.clone(),
                    found: resolved.digest,
                },
            });
        }
    }
    let pinned = resolved.reference.pinned(&resolved.digest);
    let config = &resolved.config;

    // Env: the image's, then the pod's (envFrom, then env), as containerd merges them.
    let (k8s_env, env_regex) = pod_env(ctx, c, &name, field)?;
    let env = merge_env(config.env.clone().unwrap_or_default(), &k8s_env);
    let mut env_regex = env_regex;
    // HOSTNAME is the pod's hostname: `spec.hostname`, or the pod name.
    match ctx.spec.get("hostname").and_then(Value::as_str) {
        Some(h) => env_regex.push(format!("^HOSTNAME={}$", regex_escape(h))),
        None => env_regex.push(format!("^HOSTNAME={}$", strip_anchors(&w.name_regex))),
    }
    let exact: BTreeMap<String, String> = k8s_env
        .iter()
        .filter_map(|e| e.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    let expand_all = |list: Option<Vec<String>>| list.map(|l| l.iter().map(|s| expand_vars(s, &exact)).collect());
    let command = expand_all(string_list(w, c.get("command"), &format!("{field}.command"))?);
    let args = expand_all(string_list(w, c.get("args"), &format!("{field}.args"))?);
    let argv = merge_command(config, command, args);
    if argv.is_empty() {
        return Err(PodError::NoCommand(name));
    }

    let pod_sc = ctx.spec.get("securityContext");
    let sc = c.get("securityContext");
    let flag = |key: &str| sc.and_then(|s| s.get(key)).and_then(Value::as_bool);
    let privileged = flag("privileged") == Some(true);
    let no_new_privs = !privileged && flag("allowPrivilegeEscalation") == Some(false);
    let read_only_root = flag("readOnlyRootFilesystem") == Some(true);
    let int = |key: &str| {
        sc.and_then(|s| s.get(key))
            .or_else(|| pod_sc.and_then(|s| s.get(key)))
            .and_then(Value::as_u64)
            .and_then(|v| u32::try_from(v).ok())
    };
    let (uid, gid) = match int("runAsUser") {
        Some(uid) => (Some(uid), int("runAsGroup")),
        None => {
            let (u, g) = image_user(config, &name)?;
            (u, int("runAsGroup").or(g))
        }
    };
    let caps = capabilities(ctx.settings, sc, privileged);
    let (mounts, storages) = mounts(ctx, c, &name, field)?;
    let exec_commands = exec_commands(w, c, &name)?;
    Ok(ContainerData {
        name,
        kind: "container".to_owned(),
        image: pinned.clone(),
        image_names: vec![pinned],
        privileged,
        read_only_root,
        seccomp: seccomp(pod_sc, sc),
        process: ProcessData {
            Args: argv,
            Cwd: c
                .get("workingDir")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .or_else(|| config.working_dir.clone())
                .filter(|d| !d.is_empty())
                .unwrap_or_else(|| "/".to_owned()),
            UID: uid,
            GID: gid,
            Env: with_default_path(env),
            EnvRegex: env_regex,
            NoNewPrivileges: no_new_privs,
            Terminal: c.get("tty").and_then(Value::as_bool) == Some(true),
            Capabilities: caps,
            AdditionalGids: supplemental_groups(pod_sc),
        },
        mounts,
        storages,
        exec_commands,
        resources: resource_limits(w, c, field)?,
    })
}

/// The pod's `supplementalGroups` and `fsGroup`: the groups the kubelet adds to every
/// process of the pod.
fn supplemental_groups(pod_sc: Option<&Value>) -> Vec<u32> {
    let mut gids: Vec<u32> = pod_sc
        .and_then(|s| s.get("supplementalGroups"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .chain(pod_sc.and_then(|s| s.get("fsGroup")))
        .filter_map(Value::as_u64)
        .filter_map(|g| u32::try_from(g).ok())
        .collect();
    gids.sort_unstable();
    gids.dedup();
    gids
}

/// `resources.limits.memory` and `.cpu` of a container.
fn resource_limits(w: &Workload, c: &Value, field: &str) -> Result<ResourceLimits, PodError> {
    let limit = |key: &str, milli: bool| -> Result<Option<u64>, PodError> {
        let Some(v) = c.pointer(&format!("/resources/limits/{key}")) else { return Ok(None) };
        let text = scalar_string(v);
        parse_quantity(&text, milli)
            .map(Some)
            .ok_or_else(|| w.shape(&format!("{field}.resources.limits.{key}"), format!("{text:?} is not a quantity")).into())
    };
    Ok(ResourceLimits { memory_limit: limit("memory", false)?, cpu_limit_milli: limit("cpu", true)? })
}

/// A Kubernetes quantity (`128Mi`, `1G`, `500m`, `0.5`, `2e3`) as an integer: in units,
/// rounded up, or (with `milli`) in thousandths of a unit. `None` if it does not parse or
/// does not fit.
pub fn parse_quantity(text: &str, milli: bool) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|ch: char| !(ch.is_ascii_digit() || ch == '.')).unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    if num.is_empty() || num.matches('.').count() > 1 {
        return None;
    }
    let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
    // value = (int_part.frac_part) * mult / div, computed in integers.
    let (mult, div): (u128, u128) = match suffix {
        "" => (1, 1),
        "m" => (1, 1000),
        "k" => (1000, 1),
        "M" => (1_000_000, 1),
        "G" => (1_000_000_000, 1),
        "T" => (1_000_000_000_000, 1),
        "P" => (1_000_000_000_000_000, 1),
        "E" => (1_000_000_000_000_000_000, 1),
        "Ki" => (1 << 10, 1),
        "Mi" => (1 << 20, 1),
        "Gi" => (1 << 30, 1),
        "Ti" => (1 << 40, 1),
        "Pi" => (1 << 50, 1),
        "Ei" => (1 << 60, 1),
        _ => {
            let exp: u32 = suffix.strip_prefix(['e', 'E'])?.parse().ok()?;
            (10u128.checked_pow(exp)?, 1)
        }
    };
    if frac_part.len() > 9 {
        return None;
    }
    let scale = 10u128.pow(u32::try_from(frac_part.len()).ok()?);
    let digits: u128 = format!("{int_part}{frac_part}").parse().ok()?;
    let unit = if milli { 1000 } else { 1 };
    let numer = digits.checked_mul(mult)?.checked_mul(unit)?;
    let denom = scale.checked_mul(div)?;
    u64::try_from(numer.div_ceil(denom)).ok()
}

fn strip_anchors(re: &str) -> &str {
    re.strip_prefix('^').unwrap_or(re).strip_suffix('$').unwrap_or(re.strip_prefix('^').unwrap_or(re))
}

/// The CRI's rule: `command` replaces the entrypoint (and drops the image cmd); `args`
/// replaces the image cmd.
pub(crate) fn merge_command(
    config: &ImageConfig,
    command: Option<Vec<String>>,
    args: Option<Vec<String>>,
) -> Vec<String> {
    let mut argv = Vec::new();
    match command {
        Some(cmd) if !cmd.is_empty() => {
            argv.extend(cmd);
            argv.extend(args.unwrap_or_default());
        }
        _ => {
            argv.extend(config.entrypoint.clone().unwrap_or_default());
            match args {
                Some(a) if !a.is_empty() => argv.extend(a),
                _ => argv.extend(config.cmd.clone().unwrap_or_default()),
            }
        }
    }
    argv
}

/// containerd's merge: a pod var replaces the image var of the same name in place; new
/// ones are appended.
fn merge_env(image: Vec<String>, pod: &[String]) -> Vec<String> {
    let mut out = image;
    for e in pod {
        let key = e.split_once('=').map_or(e.as_str(), |(k, _)| k);
        match out.iter_mut().find(|x| x.split_once('=').map_or(x.as_str(), |(k, _)| k) == key) {
            Some(slot) => slot.clone_from(e),
            None => out.push(e.clone()),
        }
    }
    out
}

/// Kubernetes' `$(VAR)` expansion (`$$` escapes); unknown references stay as written.
pub(crate) fn expand_vars(s: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(end) => {
                    let name = &inner[..end];
                    match vars.get(name) {
                        Some(v) => out.push_str(v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &inner[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = inner;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The pod's env for a container: exact `NAME=value` entries, and anchored regexes for
/// values only known at run time (downward API).
fn pod_env(
    ctx: &Ctx<'_>,
    c: &Value,
    container: &str,
    field: &str,
) -> Result<(Vec<String>, Vec<String>), PodError> {
    let w = ctx.w;
    let mut exact: Vec<(String, String)> = Vec::new();
    let mut regex: Vec<(String, String)> = Vec::new();
    let mut set = |name: String, value: Result<String, String>| {
        exact.retain(|(k, _)| k != &name);
        regex.retain(|(k, _)| k != &name);
        match value {
            Ok(v) => exact.push((name, v)),
            Err(pattern) => regex.push((name, pattern)),
        }
    };
    let default_ns = &ctx.settings.default_namespace;
    let missing = |kind: &'static str, name: &str, key: Option<&str>| PodError::MissingReference {
        container: container.to_owned(),
        kind,
        name: name.to_owned(),
        key: key.map(str::to_owned),
    };
    for (i, from) in c.get("envFrom").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let prefix = from.get("prefix").and_then(Value::as_str).unwrap_or("");
        for (kind, key) in [("ConfigMap", "configMapRef"), ("Secret", "secretRef")] {
            let Some(r) = from.get(key) else { continue };
            let name = r
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| w.shape(&format!("{field}.envFrom[{i}].{key}.name"), "missing"))?;
            let optional = r.get("optional").and_then(Value::as_bool) == Some(true);
            let data = if kind == "ConfigMap" {
                ctx.refs.config_map(&ctx.namespace, default_ns, name)
            } else {
                ctx.refs.secret(&ctx.namespace, default_ns, name)
            };
            match data {
                Some(data) => {
                    for (k, v) in data {
                        set(format!("{prefix}{k}"), Ok(v.clone()));
                    }
                }
                None if optional => {}
                None => return Err(missing(kind, name, None)),
            }
        }
    }
    let mut defined: BTreeMap<String, String> = BTreeMap::new();
    for (i, e) in c.get("env").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let f = format!("{field}.env[{i}]");
        let name = e
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| w.shape(&format!("{f}.name"), "missing"))?
            .to_owned();
        if let Some(v) = e.get("value") {
            let v = expand_vars(&scalar_string(v), &defined);
            defined.insert(name.clone(), v.clone());
            set(name, Ok(v));
            continue;
        }
        let Some(from) = e.get("valueFrom") else {
            defined.insert(name.clone(), String::new());
            set(name, Ok(String::new()));
            continue;
        };
        let key_ref = |key: &str| -> Option<(String, String, bool)> {
            let r = from.get(key)?;
            Some((
                r.get("name")?.as_str()?.to_owned(),
                r.get("key")?.as_str()?.to_owned(),
                r.get("optional").and_then(Value::as_bool) == Some(true),
            ))
        };
        let value: Option<Result<String, String>> = if let Some((cm, key, optional)) = key_ref("configMapKeyRef") {
            match ctx.refs.config_map(&ctx.namespace, default_ns, &cm).and_then(|d| d.get(&key)) {
                Some(v) => Some(Ok(v.clone())),
                None if optional => None,
                None => return Err(missing("ConfigMap", &cm, Some(&key))),
            }
        } else if let Some((s, key, optional)) = key_ref("secretKeyRef") {
            if ctx.refs.is_binary(&s, &key) {
                return Err(w.shape(&f, format!("Secret {s} key {key} is not UTF-8")).into());
            }
            match ctx.refs.secret(&ctx.namespace, default_ns, &s).and_then(|d| d.get(&key)) {
                Some(v) => Some(Ok(v.clone())),
                None if optional => None,
                None => return Err(missing("Secret", &s, Some(&key))),
            }
        } else if let Some(path) = from.pointer("/fieldRef/fieldPath").and_then(Value::as_str) {
            Some(field_ref(ctx, path).ok_or_else(|| w.shape(&format!("{f}.valueFrom.fieldRef"), format!("fieldPath {path} is not supported")))?)
        } else if from.get("resourceFieldRef").is_some() {
            Some(Err("[0-9]+".to_owned()))
        } else {
            return Err(w.shape(&format!("{f}.valueFrom"), "unknown source").into());
        };
        match value {
            Some(Ok(v)) => {
                defined.insert(name.clone(), v.clone());
                set(name, Ok(v));
            }
            Some(Err(pattern)) => set(name, Err(pattern)),
            None => {}
        }
    }
    Ok((
        exact.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
        regex.into_iter().map(|(k, p)| format!("^{}=({p})$", regex_escape(&k))).collect(),
    ))
}

/// A downward-API field: `Ok(value)` when known now, `Err(regex)` when only at run time.
fn field_ref(ctx: &Ctx<'_>, path: &str) -> Option<Result<String, String>> {
    let meta = ctx.w.template.get("metadata");
    let map_key = |prefix: &str, map: &str| -> Option<Result<String, String>> {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        let v = meta?.get(map)?.get(key)?;
        Some(Ok(scalar_string(v)))
    };
    Some(match path {
        "metadata.name" => Err(strip_anchors(&ctx.w.name_regex).to_owned()),
        "metadata.namespace" => Ok(ctx.namespace.clone()),
        "metadata.uid" => Err("[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}".to_owned()),
        "spec.nodeName" => Err("[a-z0-9]([-a-z0-9.]*[a-z0-9])?".to_owned()),
        "spec.serviceAccountName" => Ok(ctx
            .spec
            .get("serviceAccountName")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_owned()),
        "status.hostIP" | "status.podIP" => Err(IPV4.to_owned()),
        "status.hostIPs" | "status.podIPs" => Err("[0-9a-fA-F.:,]+".to_owned()),
        _ => return map_key("metadata.labels['", "labels").or_else(|| map_key("metadata.annotations['", "annotations")),
    })
}

/// `(UID, GID)` from the image's `User`; a name cannot be resolved without /etc/passwd.
fn image_user(config: &ImageConfig, container: &str) -> Result<(Option<u32>, Option<u32>), PodError> {
    let user = config.user.clone().unwrap_or_default();
    if user.is_empty() {
        return Ok((Some(0), Some(0)));
    }
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user.as_str(), None),
    };
    let uid = u.parse::<u32>().map_err(|_| PodError::UserName {
        container: container.to_owned(),
        user: user.clone(),
    })?;
    // A group name would need /etc/group: leave the GID unchecked then.
    let gid = g.and_then(|g| g.parse::<u32>().ok());
    Ok((Some(uid), if g.is_none() && uid == 0 { Some(0) } else { gid }))
}

fn capabilities(settings: &Settings, sc: Option<&Value>, privileged: bool) -> Vec<String> {
    if privileged {
        return settings.common.privileged_caps.clone();
    }
    let list = |key: &str| -> Vec<String> {
        sc.and_then(|s| s.pointer(&format!("/capabilities/{key}")))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(|c| {
                let c = c.to_ascii_uppercase();
                if c.starts_with("CAP_") || c == "ALL" { c } else { format!("CAP_{c}") }
            })
            .collect()
    };
    let mut caps = settings.common.default_caps.clone();
    let drop = list("drop");
    if drop.iter().any(|c| c == "ALL") {
        caps.clear();
    } else {
        caps.retain(|c| !drop.contains(c));
    }
    for c in list("add") {
        if c == "ALL" {
            for p in &settings.common.privileged_caps {
                if !caps.contains(p) {
                    caps.push(p.clone());
                }
            }
        } else if !caps.contains(&c) {
            caps.push(c);
        }
    }
    caps
}

fn seccomp(pod_sc: Option<&Value>, sc: Option<&Value>) -> String {
    let kind = sc
        .and_then(|s| s.pointer("/seccompProfile/type"))
        .or_else(|| pod_sc.and_then(|s| s.pointer("/seccompProfile/type")))
        .and_then(Value::as_str)
        .unwrap_or("Unconfined");
    match kind {
        "RuntimeDefault" => "runtime-default",
        "Localhost" => "localhost",
        _ => "unconfined",
    }
    .to_owned()
}

fn shared_mount(destination: &str, name_regex: &str, options: &[&str], required: bool) -> MountData {
    MountData {
        destination: destination.to_owned(),
        kind: "bind".to_owned(),
        source: format!("{SHARED_PREFIX}{name_regex}"),
        options: strings(options),
        alt_options: Vec::new(),
        required,
    }
}

/// A volume mount's read-only flag as the kubelet and containerd turn it into a mount
/// option: `rw`, `ro`, or `rro` for `recursiveReadOnly: Enabled`; `IfPossible` gives
/// `rro` where the runtime handler reports recursive read-only support (kata-cc on
/// containerd 2.x) and `ro` elsewhere, so both are allowed (the second value).
fn read_only_flag(read_only: bool, vm: &Value, f: &str, w: &Workload) -> Result<(&'static str, Option<&'static str>), PodError> {
    let rro = vm.get("recursiveReadOnly").and_then(Value::as_str).unwrap_or("Disabled");
    match (read_only, rro) {
        (false, "Disabled") => Ok(("rw", None)),
        (true, "Disabled") => Ok(("ro", None)),
        (true, "Enabled") => Ok(("rro", None)),
        (true, "IfPossible") => Ok(("rro", Some("ro"))),
        (false, "Enabled" | "IfPossible") => {
            Err(w.shape(&format!("{f}.recursiveReadOnly"), format!("{rro} needs readOnly: true")).into())
        }
        (_, other) => Err(w.shape(&format!("{f}.recursiveReadOnly"), format!("{other:?} is not Disabled, IfPossible or Enabled")).into()),
    }
}

/// `options` and, when `alt` is given, the same set with the read-only flag `alt`.
fn with_alt(mut m: MountData, flag: &str, alt: Option<&str>) -> MountData {
    if let Some(alt) = alt {
        m.alt_options = m.options.iter().map(|o| if o == flag { alt.to_owned() } else { o.clone() }).collect();
    }
    m
}

/// The container's mounts besides the default ones: the files Kubernetes adds (hosts,
/// hostname, resolv.conf, termination log, service account token) and its volume mounts.
fn mounts(
    ctx: &Ctx<'_>,
    c: &Value,
    container: &str,
    field: &str,
) -> Result<(Vec<MountData>, Vec<StorageData>), PodError> {
    let w = ctx.w;
    let mut mounts = Vec::new();
    let mut storages = Vec::new();
    let volumes: BTreeMap<&str, &Value> = ctx
        .spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| Some((v.get("name")?.as_str()?, v)))
        .collect();
    let mut destinations = BTreeSet::new();
    for (i, vm) in c.get("volumeMounts").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let f = format!("{field}.volumeMounts[{i}]");
        let name = vm
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| w.shape(&format!("{f}.name"), "missing"))?;
        let dest = vm
            .get("mountPath")
            .and_then(Value::as_str)
            .ok_or_else(|| w.shape(&format!("{f}.mountPath"), "missing"))?;
        let volume = volumes
            .get(name)
            .ok_or_else(|| w.shape(&format!("{f}.name"), format!("no volume named {name}")))?;
        let read_only = vm.get("readOnly").and_then(Value::as_bool) == Some(true);
        let sub_path = vm.get("subPath").and_then(Value::as_str).filter(|s| !s.is_empty());
        let base = sub_path.and_then(|s| s.rsplit('/').next()).unwrap_or(name);
        let (rw, alt) = read_only_flag(read_only, vm, &f, w)?;
        destinations.insert(dest.to_owned());
        let kind = ["configMap", "secret", "projected", "downwardAPI", "emptyDir", "hostPath", "persistentVolumeClaim"]
            .into_iter()
            .find(|k| volume.get(*k).is_some());
        match kind {
            Some("configMap" | "secret" | "projected" | "downwardAPI") => {
                // Read-only whatever the mount says (the kubelet mounts these read-only).
                let (ro, alt) = if rw == "rro" { (rw, alt) } else { ("ro", None) };
                mounts.push(with_alt(shared_mount(dest, &regex_escape(base), &["rbind", "rprivate", ro], true), ro, alt));
            }
            Some("hostPath" | "persistentVolumeClaim") => {
                mounts.push(with_alt(shared_mount(dest, &regex_escape(base), &["rbind", "rprivate", rw], true), rw, alt));
            }
            Some("emptyDir") => {
                let memory = volume.pointer("/emptyDir/medium").and_then(Value::as_str) == Some("Memory");
                let (driver, dir) = if memory {
                    ("ephemeral", "/run/kata-containers/sandbox/ephemeral/".to_owned())
                } else {
                    ("local", "$(cpath)/$(sandbox-id)/rootfs/local/".to_owned())
                };
                let point = format!("{dir}{}", regex_escape(name));
                let source = match sub_path {
                    Some(s) => format!("{point}/{}", regex_escape(s)),
                    None => point.clone(),
                };
                mounts.push(with_alt(
                    MountData {
                        destination: dest.to_owned(),
                        kind: "bind".to_owned(),
                        source,
                        options: strings(&["rbind", "rprivate", rw]),
                        alt_options: Vec::new(),
                        required: true,
                    },
                    rw,
                    alt,
                ));
                storages.push(StorageData { driver: driver.to_owned(), mount_point: point });
            }
            _ => {
                let kind = volume
                    .as_object()
                    .and_then(|o| o.keys().find(|k| *k != "name").cloned())
                    .unwrap_or_else(|| "unknown".to_owned());
                return Err(PodError::UnsupportedVolume {
                    container: container.to_owned(),
                    volume: name.to_owned(),
                    kind,
                });
            }
        }
    }
    let mut standard = |dest: &str, name: &str, options: &[&[&str]]| {
        if !destinations.contains(dest) {
            for o in options {
                mounts.push(shared_mount(dest, name, o, false));
            }
        }
    };
    standard("/etc/hosts", "hosts", &[&["rbind", "rprivate", "rw"], &["rbind", "rprivate", "ro"]]);
    let termination = c
        .get("terminationMessagePath")
        .and_then(Value::as_str)
        .unwrap_or("/dev/termination-log");
    standard(termination, "termination-log", &[&["rbind", "rprivate", "rw"]]);
    standard("/etc/hostname", "hostname", &[&["rbind", "rprivate", "ro"], &["rbind", "rprivate", "rw"]]);
    standard("/etc/resolv.conf", "resolv\\.conf", &[&["rbind", "rprivate", "ro"], &["rbind", "rprivate", "rw"]]);
    let automount = ctx.spec.get("automountServiceAccountToken").and_then(Value::as_bool) != Some(false);
    if automount {
        standard(SERVICE_ACCOUNT_PATH, "(serviceaccount|kube-api-access-[a-z0-9]{5})", &[&["rbind", "rprivate", "ro"]]);
    }
    Ok((mounts, storages))
}

/// The allow-list annotation's commands, then the container's exec probes and exec
/// lifecycle hooks (the kubelet runs those through ExecProcess too).
fn exec_commands(w: &Workload, c: &Value, container: &str) -> Result<Vec<Vec<String>>, PodError> {
    let mut out = k8s::exec_allow(w, container)?;
    let paths = [
        "/livenessProbe/exec/command",
        "/readinessProbe/exec/command",
        "/startupProbe/exec/command",
        "/lifecycle/postStart/exec/command",
        "/lifecycle/preStop/exec/command",
    ];
    for p in paths {
        if let Some(cmd) = c.pointer(p).and_then(Value::as_array) {
            out.push(cmd.iter().map(scalar_string).collect());
        }
    }
    let mut seen = BTreeSet::new();
    out.retain(|c| seen.insert(c.clone()));
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // test code
mod tests {
    use super::*;

    #[test]
    fn cri_command_merge() {
        let cfg = ImageConfig {
            entrypoint: Some(vec!["/ep".into()]),
            cmd: Some(vec!["c1".into()]),
            ..ImageConfig::default()
        };
        let v = |s: &[&str]| s.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        assert_eq!(merge_command(&cfg, None, None), v(&["/ep", "c1"]));
        assert_eq!(merge_command(&cfg, None, Some(v(&["a"]))), v(&["/ep", "a"]));
        assert_eq!(merge_command(&cfg, Some(v(&["/x"])), None), v(&["/x"]));
        assert_eq!(merge_command(&cfg, Some(v(&["/x"])), Some(v(&["a"]))), v(&["/x", "a"]));
    }

    #[test]
    fn var_expansion() {
        let vars = BTreeMap::from([("A".to_owned(), "1".to_owned())]);
        assert_eq!(expand_vars("x$(A)y $(B) $$(A) $", &vars), "x1y $(B) $(A) $");
    }

    #[test]
    fn env_merge_replaces_in_place() {
        let merged = merge_env(vec!["A=1".into(), "B=2".into()], &["B=3".into(), "C=4".into()]);
        assert_eq!(merged, vec!["A=1", "B=3", "C=4"]);
    }
}
