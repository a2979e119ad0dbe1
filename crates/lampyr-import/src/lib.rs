//! Import of cloud templates: the deployment files of functions written
//! for other platforms, turned into lampyr's manifest (`lampyr.toml`) so
//! that `lampyr deploy template.yaml` deploys them as they are.
//!
//! * AWS SAM's `template.yaml` (`Transform: AWS::Serverless-2016-10-31`,
//!   [`sam`]),
//! * Function Compute's `template.yml` for the `fun` tool (ROS,
//!   `Transform: Aliyun::Serverless-2018-04-03`, [`ros`]),
//! * Serverless Devs' `s.yaml` with the `fc3` component ([`devs`]).
//!
//! What a template says that lampyr has is mapped (runtime, handler, code
//! directory, memory, timeout, environment, concurrency, HTTP events and
//! schedules, ...); harmless metadata (descriptions, tags, regions) is
//! ignored; **every other field is refused by its path**, saying what to
//! do, so a project either deploys as it is or its owner learns exactly
//! what to change. References resolve as the clouds resolve them where
//! that is simple (`!Ref`/`!Sub` to a parameter's `Default`, `${vars.x}`),
//! and are refused by name otherwise. The manifest made is validated as a
//! deploy validates it, with errors reported at the template's field.
//!
//! This crate knows templates and manifests, nothing of the server: the
//! CLI packs each function's code directory with the manifest made here,
//! and the server sees an ordinary package.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lampyr_api::FunctionSpec;
use serde_yaml_ng::Value;

mod devs;
mod draft;
mod ros;
mod sam;
mod schedule;
mod yaml;

use draft::Draft;
use yaml::{refuse, Dialect, Node, Refusal, Res, Scope};

/// The kinds of template lampyr imports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// AWS SAM (`template.yaml`).
    Sam,
    /// Function Compute's `fun` template (`template.yml`, ROS).
    FunctionCompute,
    /// Serverless Devs (`s.yaml`, component `fc3`).
    ServerlessDevs,
}

impl Format {
    pub fn describe(self) -> &'static str {
        match self {
            Format::Sam => "AWS SAM template",
            Format::FunctionCompute => "Function Compute template",
            Format::ServerlessDevs => "Serverless Devs s.yaml",
        }
    }
}

/// One function of a template, as lampyr deploys it.
#[derive(Debug, Clone)]
pub struct ImportedFunction {
    /// The template's name for it (`HelloWorldFunction`).
    pub id: String,
    /// Where it is in the template (`Resources.HelloWorldFunction`).
    pub at: String,
    /// Its lampyr name.
    pub name: String,
    /// The directory its code is in (the template's `CodeUri`/`code`).
    pub code_dir: PathBuf,
    /// The `lampyr.toml` it deploys with.
    pub manifest: String,
    pub spec: FunctionSpec,
    /// An alias each deploy points at the new version (SAM's
    /// `AutoPublishAlias`).
    pub alias: Option<String>,
    /// What behaves differently on lampyr, for people to read.
    pub notes: Vec<String>,
}

/// A template's functions.
#[derive(Debug, Clone)]
pub struct Template {
    pub path: PathBuf,
    pub format: Format,
    pub functions: Vec<ImportedFunction>,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    NotTemplate { path: String, message: String },
    /// A field lampyr cannot deploy as written; `field` is its path.
    #[error("{file}: {field}: {message}")]
    Refused {
        file: String,
        field: String,
        message: String,
    },
    #[error("{file} has no function \"{name}\": its functions are {known}")]
    NoSuchFunction {
        file: String,
        name: String,
        known: String,
    },
}

/// Whether `path` names a template file rather than a function
/// directory or its `lampyr.toml`: a `.yaml`/`.yml` file.
pub fn is_template_path(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "yaml" || e == "yml")
}

/// Reads the template at `path`; code directories are relative to it.
pub fn read(path: &Path) -> Result<Template, ImportError> {
    let text = std::fs::read_to_string(path).map_err(|source| ImportError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let base = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    convert(&text, path, &base)
}

/// Imports template `text` (read from `path`, named so in errors) whose
/// code directories are relative to `base`.
pub fn convert(text: &str, path: &Path, base: &Path) -> Result<Template, ImportError> {
    let file = path.display().to_string();
    let not = |message: String| ImportError::NotTemplate {
        path: file.clone(),
        message,
    };
    let v: Value =
        serde_yaml_ng::from_str(text).map_err(|e| not(format!("not valid YAML: {e}")))?;
    let Value::Mapping(top) = &v else {
        return Err(not(KNOWN.into()));
    };
    let has = |k: &str| top.contains_key(k);
    let transform = top
        .get("Transform")
        .map(|t| serde_yaml_ng::to_string(t).unwrap_or_default())
        .unwrap_or_default();
    let format = if has("ROSTemplateFormatVersion") || transform.contains("Aliyun::Serverless") {
        Format::FunctionCompute
    } else if transform.contains("AWS::Serverless") {
        Format::Sam
    } else if has("AWSTemplateFormatVersion") {
        return Err(not(format!("a CloudFormation template without the SAM transform: lampyr reads AWS::Serverless::Function resources (Transform: AWS::Serverless-2016-10-31); {KNOWN}")));
    } else if has("edition") || has("resources") {
        Format::ServerlessDevs
    } else {
        return Err(not(KNOWN.into()));
    };
    let refused = |r: Refusal| ImportError::Refused {
        file: file.clone(),
        field: r.path,
        message: r.message,
    };
    let root = Node::root(v.clone(), scope(&v, format));
    let drafts = match format {
        Format::Sam => sam::convert(&root, base),
        Format::FunctionCompute => ros::convert(&root, base),
        Format::ServerlessDevs => devs::convert(&root, base),
    }
    .map_err(refused)?;
    let mut functions: Vec<ImportedFunction> = Vec::new();
    for d in drafts {
        let f = d.finish().map_err(refused)?;
        if let Some(other) = functions.iter().find(|o| o.name == f.name) {
            return Err(refused(Refusal {
                path: f.at.clone(),
                message: format!(
                    "is named \"{}\" in lampyr, as {} is: lampyr function names are unique, so rename one",
                    f.name, other.at
                ),
            }));
        }
        functions.push(f);
    }
    if functions.is_empty() {
        return Err(not(format!("a {} with no functions", format.describe())));
    }
    Ok(Template {
        path: path.to_path_buf(),
        format,
        functions,
    })
}

const KNOWN: &str = "lampyr imports AWS SAM templates (Transform: AWS::Serverless-2016-10-31), Function Compute's template.yml (ROSTemplateFormatVersion, Transform: Aliyun::Serverless-2018-04-03) and Serverless Devs' s.yaml (edition: 3.0.0, component: fc3)";

/// What references in a template of `format` resolve against.
fn scope(v: &Value, format: Format) -> Scope {
    let names = |m: Option<&Value>| -> Vec<String> {
        m.and_then(Value::as_mapping)
            .map(|m| {
                m.keys()
                    .filter_map(|k| k.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let params: BTreeMap<String, Option<Value>> = v
        .get("Parameters")
        .and_then(Value::as_mapping)
        .map(|m| {
            m.iter()
                .filter_map(|(k, p)| Some((k.as_str()?.to_string(), p.get("Default").cloned())))
                .collect()
        })
        .unwrap_or_default();
    let mut resources = names(v.get("Resources"));
    if format == Format::FunctionCompute {
        // A ROS service's functions are resources too.
        for r in v
            .get("Resources")
            .and_then(Value::as_mapping)
            .into_iter()
            .flat_map(|m| m.values())
        {
            resources.extend(names(Some(r)));
        }
    }
    Scope {
        dialect: match format {
            Format::Sam => Dialect::Intrinsics { pseudo: "AWS::" },
            Format::FunctionCompute => Dialect::Intrinsics { pseudo: "ALIYUN::" },
            Format::ServerlessDevs => Dialect::Devs,
        },
        params,
        resources,
        vars: v.get("vars").cloned().unwrap_or(Value::Null),
    }
}

impl Template {
    /// Every function, or the one `name` picks (its lampyr name or the
    /// template's).
    pub fn select(self, name: Option<&str>) -> Result<Vec<ImportedFunction>, ImportError> {
        let Some(name) = name else {
            return Ok(self.functions);
        };
        let known = self
            .functions
            .iter()
            .map(|f| {
                if f.id == f.name {
                    f.name.clone()
                } else {
                    format!("{} ({})", f.name, f.id)
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        let picked: Vec<ImportedFunction> = self
            .functions
            .into_iter()
            .filter(|f| f.name == name || f.id == name)
            .collect();
        if picked.is_empty() {
            return Err(ImportError::NoSuchFunction {
                file: self.path.display().to_string(),
                name: name.to_string(),
                known,
            });
        }
        Ok(picked)
    }
}

/// The code directory a template names (`CodeUri`, `code`), relative to
/// the template.
fn code_dir(base: &Path, node: &Node) -> Res<PathBuf> {
    let uri = match node.text() {
        Ok(t) => t,
        Err(_) => {
            return refuse(
                &node.path,
                "names code in a bucket: lampyr deploys code from a directory; download it, and write the directory's path (relative to the template) here",
            )
        }
    };
    if uri.contains("://") {
        return refuse(
            &node.path,
            format!("\"{uri}\" is code in a bucket: lampyr deploys code from a directory; download it, and write the directory's path (relative to the template) here"),
        );
    }
    // `./hello-world/` as `hello-world`, for the messages.
    let mut dir: PathBuf = base
        .join(&uri)
        .components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect();
    if dir.as_os_str().is_empty() {
        dir = PathBuf::from(".");
    }
    if !dir.is_dir() {
        let what = if dir.is_file() {
            "is a file: lampyr deploys a directory; unpack it and name the directory here"
        } else {
            "does not exist: name the function's code directory, relative to the template"
        };
        return refuse(&node.path, format!("{} {what}", dir.display()));
    }
    Ok(dir)
}

/// Each entry of an environment map as a variable.
fn environment(d: &mut Draft, vars: &Node) -> Res<()> {
    for (k, v) in vars.entries()? {
        let value = v.text()?;
        d.env(k, value, &v.path);
    }
    Ok(())
}

/// The settings Function Compute's two kinds of template share, by their
/// names in this one (`MemorySize` or `memorySize`, ...): memory, timeout
/// (seconds), concurrency and environment.
fn fc_settings(d: &mut Draft, p: &Node, [memory, timeout, concurrency, env]: [&str; 4]) -> Res<()> {
    if let Some(v) = p.get(memory)? {
        d.set("memory_mb", v.int()?, &v.path);
    }
    if let Some(v) = p.get(timeout)? {
        d.set("timeout", format!("{}s", v.int()?), &v.path);
    }
    if let Some(v) = p.get(concurrency)? {
        d.set("concurrency", v.int()?, &v.path);
    }
    if let Some(v) = p.get(env)? {
        environment(d, &v)?;
    }
    Ok(())
}

/// A Function Compute initializer (`FILE.EXPORT`) and its timeout in
/// seconds, by their names in this kind of template.
fn initializer(d: &mut Draft, c: &Node, [handler, timeout]: [&str; 2]) -> Res<()> {
    if let Some(h) = c.get(handler)? {
        d.set("initializer", h.text()?, &h.path);
    }
    if let Some(t) = c.get(timeout)? {
        d.set("initialization_timeout", format!("{}s", t.int()?), &t.path);
    }
    Ok(())
}

/// A Function Compute HTTP trigger's `AuthType`/`authType`.
fn http_auth(d: &mut Draft, a: &Node) -> Res<()> {
    match a.text()?.to_ascii_lowercase().as_str() {
        "anonymous" => Ok(()),
        "function" => {
            d.set("auth", "token", &a.path);
            d.note(format!("{}: authType function becomes auth = \"token\": callers send `Authorization: Bearer TOKEN` with the function's trigger token (`lampyr info NAME`)", a.path));
            Ok(())
        }
        other => refuse(
            &a.path,
            format!("\"{other}\" is not supported by lampyr: use anonymous or function"),
        ),
    }
}

/// A Function Compute timer's settings (`c`), by their names in this kind
/// of template (`CronExpression` or `cronExpression`, ...), as timer
/// `name` calling `alias`.
fn fc_timer(
    d: &mut Draft,
    c: &Node,
    [cron, enable, payload]: [&str; 3],
    name: String,
    alias: Option<String>,
    origin: &str,
) -> Res<()> {
    let expr = c.need(cron, "write e.g. '@every 5m' or '0 0/5 * * * *'")?;
    let sched = schedule::fc(&expr.text()?, &expr.path)?;
    let enabled = c
        .get(enable)?
        .map(|v| v.bool())
        .transpose()?
        .unwrap_or(true);
    let payload = c.get(payload)?.map(|v| v.text()).transpose()?;
    d.timer(timer_keys(name, sched, enabled, payload, alias), origin);
    Ok(())
}

/// A trigger's alias from a Function Compute qualifier (`LATEST`: none).
fn qualifier(node: Option<Node>) -> Res<Option<String>> {
    let Some(q) = node else { return Ok(None) };
    let q = q.text()?;
    Ok((q != "LATEST" && q != "$LATEST").then_some(q))
}

/// The parts of a template's timer as a lampyr timer's keys.
fn timer_keys(
    name: String,
    sched: schedule::Schedule,
    enabled: bool,
    payload: Option<String>,
    alias: Option<String>,
) -> Vec<(&'static str, toml::Value)> {
    let mut keys: Vec<(&'static str, toml::Value)> =
        vec![("name", name.into()), ("cron", sched.cron.into())];
    if let Some(tz) = sched.timezone {
        keys.push(("timezone", tz.into()));
    }
    if let Some(p) = payload {
        keys.push(("payload", p.into()));
    }
    if !enabled {
        keys.push(("enabled", false.into()));
    }
    if let Some(a) = alias {
        keys.push(("alias", a.into()));
    }
    keys
}

/// The note on an HTTP event: lampyr's events are payload 2.0.
const HTTP_EVENT_NOTE: &str = "lampyr's URL is /fn/NAME/..., for every path and method, and the handler's event is Lambda's payload format 2.0 (event.rawPath, event.requestContext.http.method, event.queryStringParameters)";

#[cfg(test)]
mod tests;
