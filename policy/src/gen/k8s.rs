//! Kubernetes YAML: multi-document files, workloads and their pod templates, the
//! ConfigMaps and Secrets they reference, and writing the pinned YAML back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize as _;

use super::{EXEC_ALLOW_ANNOTATION, INITDATA_ANNOTATION, RUNTIME_CLASS};

/// Errors reading Kubernetes YAML.
#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    /// A file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A document is not valid YAML.
    #[error("{path}{}: invalid YAML", position(*line, *column))]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line of the error, if known.
        line: Option<usize>,
        /// 1-based column of the error, if known.
        column: Option<usize>,
        /// The parser's error.
        #[source]
        source: serde_yaml::Error,
    },
    /// A document has an unexpected shape.
    #[error("{path} (document {document}): {field}: {problem}")]
    Shape {
        /// The file.
        path: PathBuf,
        /// 1-based index of the document in the file.
        document: usize,
        /// The field, e.g. `spec.template.spec.containers[0]`.
        field: String,
        /// What is wrong.
        problem: String,
    },
}

fn position(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(":{l}:{c}"),
        (Some(l), None) => format!(":{l}"),
        _ => String::new(),
    }
}

/// One YAML document of an input file.
#[derive(Debug, Clone)]
pub struct Document {
    /// The file it came from.
    pub path: PathBuf,
    /// 1-based index of the document in its file.
    pub index: usize,
    /// The document.
    pub value: serde_yaml::Value,
}

/// Read every document of every file (`---` separated); empty documents are skipped.
pub fn load_files(paths: &[PathBuf]) -> Result<Vec<Document>, K8sError> {
    let mut docs = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(path)
            .map_err(|source| K8sError::Read { path: path.clone(), source })?;
        docs.extend(parse_str(path, &text)?);
    }
    Ok(docs)
}

/// Parse the documents of one YAML text; `path` is only used in errors.
pub fn parse_str(path: &Path, text: &str) -> Result<Vec<Document>, K8sError> {
    let mut docs = Vec::new();
    for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(de).map_err(|source| {
            let loc = source.location();
            K8sError::Parse {
                path: path.to_owned(),
                line: loc.as_ref().map(serde_yaml::Location::line),
                column: loc.as_ref().map(serde_yaml::Location::column),
                source,
            }
        })?;
        if !value.is_null() {
            docs.push(Document { path: path.to_owned(), index: i + 1, value });
        }
    }
    Ok(docs)
}

/// Write documents back as one multi-document YAML text.
pub(crate) fn render(docs: &[Document]) -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for (i, doc) in docs.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&serde_yaml::to_string(&doc.value)?);
    }
    Ok(out)
}

/// A step of the path from a document to a pod template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(&'static str),
    Index(usize),
}

/// A pod-bearing workload found in a document.
#[derive(Debug, Clone)]
pub struct Workload {
    /// `Pod`, `Deployment`, ...
    pub kind: String,
    /// `metadata.name` (or `generateName` for a Pod that has only that).
    pub name: String,
    /// `metadata.namespace`, if set.
    pub namespace: Option<String>,
    /// Anchored regex over the names of the pods it creates.
    pub name_regex: String,
    /// The pod template (`metadata` + `spec`) as JSON.
    pub template: serde_json::Value,
    /// Where it came from, for errors.
    pub origin: String,
    path: Vec<Seg>,
    doc_index: usize,
    file: PathBuf,
}

impl Workload {
    /// `Kind/name`.
    pub fn label(&self) -> String {
        format!("{}/{} ({})", self.kind, self.name, self.origin)
    }

    /// The pod template's annotations.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.template.pointer("/metadata/annotations").and_then(|a| a.get(key))?.as_str()
    }

    /// Pin the images, add the initdata annotation and the runtime class in `doc`.
    pub(crate) fn apply(
        &self,
        doc: &mut Document,
        images: &BTreeMap<String, String>,
        initdata: &str,
    ) -> Option<()> {
        let t = navigate(&mut doc.value, &self.path)?.as_mapping_mut()?;
        let metadata = entry_mapping(t, "metadata")?;
        let annotations = entry_mapping(metadata, "annotations")?;
        annotations.insert(INITDATA_ANNOTATION.into(), initdata.into());
        let spec = entry_mapping(t, "spec")?;
        let runtime_class = spec.get("runtimeClassName").and_then(serde_yaml::Value::as_str);
        if runtime_class.is_none() {
            spec.insert("runtimeClassName".into(), RUNTIME_CLASS.into());
        }
        for list in ["initContainers", "containers"] {
            let Some(containers) = spec.get_mut(list).and_then(|c| c.as_sequence_mut()) else {
                continue;
            };
            for c in containers.iter_mut().filter_map(|c| c.as_mapping_mut()) {
                let name = c.get("name").and_then(serde_yaml::Value::as_str).map(str::to_owned);
                if let Some(pinned) = name.and_then(|n| images.get(&n)) {
                    c.insert("image".into(), pinned.as_str().into());
                }
            }
        }
        Some(())
    }

    /// A shape error at `field` of the pod template.
    pub(crate) fn shape(&self, field: &str, problem: impl Into<String>) -> K8sError {
        let prefix = self
            .path
            .iter()
            .map(|s| match s {
                Seg::Key(k) => format!(".{k}"),
                Seg::Index(i) => format!("[{i}]"),
            })
            .collect::<String>();
        let prefix = prefix.trim_start_matches('.');
        let field = if prefix.is_empty() { field.to_owned() } else { format!("{prefix}.{field}") };
        K8sError::Shape {
            path: self.file.clone(),
            document: self.doc_index,
            field,
            problem: problem.into(),
        }
    }
}

fn entry_mapping<'a>(
    map: &'a mut serde_yaml::Mapping,
    key: &str,
) -> Option<&'a mut serde_yaml::Mapping> {
    let slot = map
        .entry(key.into())
        .or_insert_with(|| serde_yaml::Value::Mapping(serde_yaml::Mapping::new()));
    if !slot.is_mapping() {
        *slot = serde_yaml::Value::Mapping(serde_yaml::Mapping::new());
    }
    slot.as_mapping_mut()
}

fn navigate<'a>(value: &'a mut serde_yaml::Value, path: &[Seg]) -> Option<&'a mut serde_yaml::Value> {
    let mut cur = value;
    for seg in path {
        cur = match seg {
            Seg::Key(k) => cur.get_mut(*k)?,
            Seg::Index(i) => cur.get_mut(*i)?,
        };
    }
    Some(cur)
}

/// The pod-bearing workloads of a document (a `List` may hold several).
pub fn workloads(doc: &Document) -> Result<Vec<Workload>, K8sError> {
    let json = to_json(doc)?;
    let mut out = Vec::new();
    collect(doc, &json, Vec::new(), &mut out)?;
    Ok(out)
}

fn to_json(doc: &Document) -> Result<serde_json::Value, K8sError> {
    serde_json::to_value(&doc.value).map_err(|e| K8sError::Shape {
        path: doc.path.clone(),
        document: doc.index,
        field: "(document)".to_owned(),
        problem: format!("cannot be read as JSON: {e}"),
    })
}

fn collect(
    doc: &Document,
    value: &serde_json::Value,
    path: Vec<Seg>,
    out: &mut Vec<Workload>,
) -> Result<(), K8sError> {
    let kind = value.get("kind").and_then(serde_json::Value::as_str).unwrap_or("");
    let template_path: &[&'static str] = match kind {
        "Pod" => &[],
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job"
        | "ReplicationController" => &["spec", "template"],
        "CronJob" => &["spec", "jobTemplate", "spec", "template"],
        "List" | "PodList" | "DeploymentList" => {
            let items = value.get("items").and_then(serde_json::Value::as_array);
            for (i, item) in items.into_iter().flatten().enumerate() {
                let mut p = path.clone();
                p.push(Seg::Key("items"));
                p.push(Seg::Index(i));
                collect(doc, item, p, out)?;
            }
            return Ok(());
        }
        _ => return Ok(()),
    };
    let shape = |field: &str, problem: &str| K8sError::Shape {
        path: doc.path.clone(),
        document: doc.index,
        field: field.to_owned(),
        problem: problem.to_owned(),
    };
    let meta = value.get("metadata");
    let name = meta.and_then(|m| m.get("name")).and_then(serde_json::Value::as_str);
    let generate_name = meta.and_then(|m| m.get("generateName")).and_then(serde_json::Value::as_str);
    let namespace = meta
        .and_then(|m| m.get("namespace"))
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned);
    let (name, name_regex) = match (kind, name, generate_name) {
        (_, Some(n), _) => {
            let e = regex_escape(n);
            let re = match kind {
                "Pod" => format!("^{e}$"),
                "Deployment" => format!("^{e}-[a-z0-9]{{1,10}}-[a-z0-9]{{5}}$"),
                "StatefulSet" => format!("^{e}-[0-9]+$"),
                "CronJob" => format!("^{e}-[0-9]+-[a-z0-9]{{5}}$"),
                _ => format!("^{e}-[a-z0-9]{{5}}$"),
            };
            (n.to_owned(), re)
        }
        ("Pod", None, Some(g)) => (g.to_owned(), format!("^{}[a-z0-9]{{5}}$", regex_escape(g))),
        _ => return Err(shape("metadata.name", "missing")),
    };
    let mut template = value;
    let mut full_path = path;
    for key in template_path {
        template = template
            .get(*key)
            .ok_or_else(|| shape(&template_path.join("."), "missing pod template"))?;
        full_path.push(Seg::Key(key));
    }
    if !template.get("spec").is_some_and(serde_json::Value::is_object) {
        let field = if template_path.is_empty() {
            "spec".to_owned()
        } else {
            format!("{}.spec", template_path.join("."))
        };
        return Err(shape(&field, "missing pod spec"));
    }
    out.push(Workload {
        kind: kind.to_owned(),
        name,
        namespace,
        name_regex,
        template: template.clone(),
        origin: format!("{} document {}", doc.path.display(), doc.index),
        path: full_path,
        doc_index: doc.index,
        file: doc.path.clone(),
    });
    Ok(())
}

/// Escape the regex metacharacters of `s`.
pub(crate) fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if r"\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The ConfigMaps and Secrets of the input, by (namespace, name).
#[derive(Debug, Default)]
pub(crate) struct References {
    config_maps: BTreeMap<(Option<String>, String), BTreeMap<String, String>>,
    secrets: BTreeMap<(Option<String>, String), BTreeMap<String, String>>,
    /// Secret keys whose values are not UTF-8 (cannot go into env).
    binary: Vec<String>,
}

impl References {
    /// Collect the ConfigMaps and Secrets of `docs` (also inside `List`s).
    pub(crate) fn collect(docs: &[Document]) -> Self {
        let mut refs = Self::default();
        for doc in docs {
            if let Ok(json) = serde_json::to_value(&doc.value) {
                refs.add(&json);
            }
        }
        refs
    }

    fn add(&mut self, v: &serde_json::Value) {
        let kind = v.get("kind").and_then(serde_json::Value::as_str).unwrap_or("");
        let meta = v.get("metadata");
        let name = meta.and_then(|m| m.get("name")).and_then(serde_json::Value::as_str);
        let ns = meta
            .and_then(|m| m.get("namespace"))
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned);
        let strings = |field: &str| -> BTreeMap<String, String> {
            v.get(field)
                .and_then(serde_json::Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(k, val)| (k.clone(), scalar_string(val)))
                        .collect::<BTreeMap<_, _>>()
                })
                .unwrap_or_default()
        };
        match (kind, name) {
            ("List", _) => {
                for item in v.get("items").and_then(serde_json::Value::as_array).into_iter().flatten() {
                    self.add(item);
                }
            }
            ("ConfigMap", Some(n)) => {
                self.config_maps.insert((ns, n.to_owned()), strings("data"));
            }
            ("Secret", Some(n)) => {
                let mut data = BTreeMap::new();
                for (k, b64) in strings("data") {
                    let decoded = base64::engine::general_purpose::STANDARD
                        .decode(b64.trim())
                        .ok()
                        .and_then(|b| String::from_utf8(b).ok());
                    match decoded {
                        Some(s) => {
                            data.insert(k, s);
                        }
                        None => self.binary.push(format!("{n}/{k}")),
                    }
                }
                data.extend(strings("stringData"));
                self.secrets.insert((ns, n.to_owned()), data);
            }
            _ => {}
        }
    }

    fn lookup<'a>(
        map: &'a BTreeMap<(Option<String>, String), BTreeMap<String, String>>,
        namespace: &str,
        default_ns: &str,
        name: &str,
    ) -> Option<&'a BTreeMap<String, String>> {
        map.iter()
            .find(|((ns, n), _)| n == name && ns.as_deref().unwrap_or(default_ns) == namespace)
            .map(|(_, v)| v)
    }

    /// The data of ConfigMap `name` in `namespace`.
    pub(crate) fn config_map(
        &self,
        namespace: &str,
        default_ns: &str,
        name: &str,
    ) -> Option<&BTreeMap<String, String>> {
        Self::lookup(&self.config_maps, namespace, default_ns, name)
    }

    /// The (decoded) data of Secret `name` in `namespace`.
    pub(crate) fn secret(
        &self,
        namespace: &str,
        default_ns: &str,
        name: &str,
    ) -> Option<&BTreeMap<String, String>> {
        Self::lookup(&self.secrets, namespace, default_ns, name)
    }

    /// Whether `secret/key` exists but is not UTF-8.
    pub(crate) fn is_binary(&self, secret: &str, key: &str) -> bool {
        self.binary.iter().any(|b| b == &format!("{secret}/{key}"))
    }
}

/// A YAML scalar as the string Kubernetes would see (`true`, `8080`, ...).
pub(crate) fn scalar_string(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The exec allow-list annotation of a pod template, for container `name`.
pub(crate) fn exec_allow(
    workload: &Workload,
    container: &str,
) -> Result<Vec<Vec<String>>, K8sError> {
    let Some(text) = workload.annotation(EXEC_ALLOW_ANNOTATION) else { return Ok(Vec::new()) };
    let field = format!("metadata.annotations[{EXEC_ALLOW_ANNOTATION}]");
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| workload.shape(&field, format!("not JSON: {e}")))?;
    let list = match &value {
        serde_json::Value::Array(_) => value.clone(),
        serde_json::Value::Object(map) => {
            map.get(container).cloned().unwrap_or(serde_json::Value::Array(Vec::new()))
        }
        _ => return Err(workload.shape(&field, "expected a JSON list of argv arrays, or an object from container name to such a list")),
    };
    serde_json::from_value::<Vec<Vec<String>>>(list).map_err(|e| {
        workload.shape(&field, format!("expected a list of argv arrays (lists of strings): {e}"))
    })
}
