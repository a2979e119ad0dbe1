//! AWS SAM's `template.yaml`: `AWS::Serverless::Function` resources, with
//! `Globals.Function` under each, their `Events` (`HttpApi`, `Api`,
//! `Schedule`, `ScheduleV2`) and `FunctionUrlConfig`.

use std::path::Path;

use crate::draft::{lampyr_name, Draft};
use crate::yaml::{refuse, Node, Res};
use crate::{code_dir, environment, schedule, timer_keys, HTTP_EVENT_NOTE};

/// What lampyr reads of a function's properties (and of `Globals.Function`).
const SUPPORTED: &[&str] = &[
    "Runtime",
    "Handler",
    "CodeUri",
    "MemorySize",
    "Timeout",
    "Environment",
    "Events",
    "FunctionName",
    "ReservedConcurrentExecutions",
    "ProvisionedConcurrencyConfig",
    "AutoPublishAlias",
    "EventInvokeConfig",
    "FunctionUrlConfig",
    "Architectures",
    "PackageType",
];
/// Accepted and ignored: metadata, and where logs go (lampyr keeps them:
/// `lampyr logs`).
const IGNORED: &[&str] = &["Description", "Tags", "PropagateTags", "LoggingConfig"];

pub(crate) fn convert(root: &Node, base: &Path) -> Res<Vec<Draft>> {
    root.check_keys(
        &[
            "AWSTemplateFormatVersion",
            "Transform",
            "Parameters",
            "Globals",
            "Resources",
        ],
        &["Description", "Metadata", "Outputs"],
    )?;
    let globals = match root.get("Globals")? {
        Some(g) => {
            g.check_keys(&["Function"], &[])?;
            g.get("Function")?
        }
        None => None,
    };
    if let Some(g) = &globals {
        g.check_keys(SUPPORTED, IGNORED)?;
    }
    let mut drafts = Vec::new();
    for (id, r) in root
        .need(
            "Resources",
            "a template lists its functions under Resources",
        )?
        .entries()?
    {
        r.check_keys(
            &["Type", "Properties"],
            &[
                "Metadata",
                "DependsOn",
                "DeletionPolicy",
                "UpdateReplacePolicy",
            ],
        )?;
        let ty = r.need("Type", "every resource has a Type")?;
        if ty.text()? != "AWS::Serverless::Function" {
            return refuse(
                &ty.path,
                format!("{}: lampyr deploys functions (AWS::Serverless::Function) only; remove this resource, or keep it in a template of its own", ty.text()?),
            );
        }
        drafts.push(function(&id, &r, globals.as_ref(), base)?);
    }
    Ok(drafts)
}

/// A function's properties: `Globals.Function`'s, then its own over them.
fn properties(r: &Node, globals: Option<&Node>) -> Res<Vec<(String, Node)>> {
    let own = match r.get("Properties")? {
        Some(p) => {
            p.check_keys(SUPPORTED, IGNORED)?;
            p.entries()?
        }
        None => Vec::new(),
    };
    let mut all: Vec<(String, Node)> = match globals {
        Some(g) => g
            .entries()?
            .into_iter()
            // Environment variables merge; the rest is replaced.
            .filter(|(k, _)| k == "Environment" || !own.iter().any(|(o, _)| o == k))
            .collect(),
        None => Vec::new(),
    };
    all.extend(own);
    Ok(all)
}

fn function(id: &str, r: &Node, globals: Option<&Node>, base: &Path) -> Res<Draft> {
    let mut d = Draft::new(id, &r.path);
    let props = properties(r, globals)?;
    let mut name = None;
    let mut http_events = false;
    for (k, v) in &props {
        match k.as_str() {
            "Runtime" => d.set("runtime", v.text()?, &v.path),
            "Handler" => d.set("handler", v.text()?, &v.path),
            "CodeUri" => d.code_dir = Some(code_dir(base, v)?),
            "MemorySize" => d.set("memory_mb", v.int()?, &v.path),
            "Timeout" => d.set("timeout", format!("{}s", v.int()?), &v.path),
            "Environment" => {
                v.check_keys(&["Variables"], &[])?;
                if let Some(vars) = v.get("Variables")? {
                    environment(&mut d, &vars)?;
                }
            }
            "FunctionName" => name = Some((v.text()?, v.path.clone())),
            "ReservedConcurrentExecutions" => {
                d.set("max_instances", v.int()?, &v.path);
                d.note(format!("{}: each lampyr instance takes one request at a time, as Lambda's do, so this is max_instances", v.path));
            }
            "ProvisionedConcurrencyConfig" => {
                v.check_keys(&["ProvisionedConcurrentExecutions"], &[])?;
                if let Some(n) = v.get("ProvisionedConcurrentExecutions")? {
                    d.set("min_instances", n.int()?, &n.path);
                }
            }
            "AutoPublishAlias" => {
                let a = v.text()?;
                lampyr_api::versions::validate_alias(&a).map_or_else(|m| refuse(&v.path, m), Ok)?;
                d.note(format!("{}: each deploy points alias \"{a}\" at the new version (as `lampyr deploy --alias {a}` does); the function's events call its newest version", v.path));
                d.alias = Some(a);
            }
            "EventInvokeConfig" => {
                v.check_keys(&["MaximumRetryAttempts", "MaximumEventAgeInSeconds"], &[])?;
                if let Some(n) = v.get("MaximumRetryAttempts")? {
                    d.set("retries", n.int()?, &n.path);
                }
                if let Some(n) = v.get("MaximumEventAgeInSeconds")? {
                    d.set("max_event_age", format!("{}s", n.int()?), &n.path);
                }
            }
            "FunctionUrlConfig" => {
                v.check_keys(&["AuthType"], &[])?;
                if let Some(a) = v.get("AuthType")? {
                    match a.text()?.as_str() {
                        "NONE" => {}
                        "AWS_IAM" => {
                            d.set("auth", "token", &a.path);
                            d.note(format!("{}: AWS_IAM becomes auth = \"token\": callers send `Authorization: Bearer TOKEN` with the function's trigger token (`lampyr info NAME`)", a.path));
                        }
                        other => {
                            return refuse(&a.path, format!("\"{other}\" is not NONE or AWS_IAM"))
                        }
                    }
                }
                d.http(None, &v.path);
                http_events = true;
            }
            "Architectures" => architectures(v)?,
            "PackageType" if v.text()? != "Zip" => {
                return refuse(
                    &v.path,
                    "lampyr runs code from a directory (PackageType: Zip), not container images",
                );
            }
            "LoggingConfig" => d.note(format!(
                "{}: ignored; lampyr keeps the function's logs (`lampyr logs NAME`)",
                v.path
            )),
            _ => {}
        }
    }
    if let Some(events) = props
        .iter()
        .rev()
        .find(|(k, _)| k == "Events")
        .map(|(_, v)| v)
    {
        for (eid, e) in events.entries()? {
            http_events |= event(&mut d, &eid, &e)?;
        }
    }
    if http_events {
        d.note(format!("{}: {HTTP_EVENT_NOTE}", d.at));
    }
    let (n, at) = name.unwrap_or_else(|| (id.to_string(), r.path.clone()));
    let lampyr = lampyr_name(&n, &at, "function")?;
    d.set("name", lampyr, &at);
    if !d.has("runtime") {
        return refuse(&format!("{}.Properties.Runtime", r.path), "is missing: name the runtime, e.g. nodejs20.x or python3.12 (here or in Globals.Function)");
    }
    if !d.has("handler") {
        return refuse(
            &format!("{}.Properties.Handler", r.path),
            "is missing: name the handler, e.g. app.lambdaHandler",
        );
    }
    if d.code_dir.is_none() {
        return refuse(
            &format!("{}.Properties.CodeUri", r.path),
            "is missing: name the function's code directory, relative to the template",
        );
    }
    Ok(d)
}

/// `Architectures` must be this host's: lampyr runs code on its own CPU.
fn architectures(v: &Node) -> Res<()> {
    let host = match std::env::consts::ARCH {
        "aarch64" => "arm64",
        other => other,
    };
    for a in v.items()? {
        if a.text()? != host {
            return refuse(
                &a.path,
                format!("\"{}\": this lampyr runs functions on {host}; write {host}, or remove Architectures", a.text()?),
            );
        }
    }
    Ok(())
}

/// One of `Events`; true if it is an HTTP event.
fn event(d: &mut Draft, id: &str, e: &Node) -> Res<bool> {
    e.check_keys(&["Type", "Properties"], &[])?;
    let ty = e.need("Type", "every event has a Type")?;
    let props = e.get("Properties")?;
    let props_or_empty = |keys: &[&str], ignored: &[&str]| -> Res<()> {
        match &props {
            Some(p) => p.check_keys(keys, ignored),
            None => Ok(()),
        }
    };
    let get = |k: &str| -> Res<Option<Node>> {
        match &props {
            Some(p) => p.get(k),
            None => Ok(None),
        }
    };
    match ty.text()?.as_str() {
        "HttpApi" => {
            props_or_empty(&["Path", "Method", "PayloadFormatVersion"], &["TimeoutInMillis"])?;
            if let Some(v) = get("PayloadFormatVersion")? {
                if v.text()? != "2.0" {
                    return refuse(&v.path, format!("\"{}\": lampyr's HTTP events are payload format 2.0; write \"2.0\" and read the event as 2.0", v.text()?));
                }
            }
            d.http(None, &e.path);
            Ok(true)
        }
        "Api" => {
            props_or_empty(&["Path", "Method"], &[])?;
            d.http(None, &e.path);
            d.note(format!("{}: an Api (REST API) event is payload format 1.0 on AWS; on lampyr the handler gets format 2.0: a handler that reads event.httpMethod or event.path reads event.requestContext.http.method or event.rawPath instead", e.path));
            Ok(true)
        }
        "Schedule" | "ScheduleV2" => {
            let v2 = ty.text()? == "ScheduleV2";
            let expr_key = if v2 { "ScheduleExpression" } else { "Schedule" };
            let mut keys = vec![expr_key, "Input", "Enabled", "State", "Name"];
            if v2 {
                keys.push("ScheduleExpressionTimezone");
            }
            props_or_empty(&keys, &["Description"])?;
            let Some(p) = &props else {
                return refuse(&format!("{}.Properties", e.path), format!("is missing: a schedule needs Properties.{expr_key}"));
            };
            let expr = p.need(expr_key, "write e.g. rate(5 minutes) or cron(0 12 * * ? *)")?;
            let mut sched = schedule::aws(&expr.text()?, &expr.path)?;
            if let Some(tz) = get("ScheduleExpressionTimezone")? {
                sched.timezone = Some(tz.text()?);
            }
            let mut enabled = true;
            if let Some(v) = get("Enabled")? {
                enabled = v.bool()?;
            }
            if let Some(v) = get("State")? {
                enabled = match v.text()?.as_str() {
                    "ENABLED" => true,
                    "DISABLED" => false,
                    other => return refuse(&v.path, format!("\"{other}\" is not ENABLED or DISABLED")),
                };
            }
            let name = match get("Name")? {
                Some(n) => lampyr_name(&n.text()?, &n.path, "timer")?,
                None => lampyr_name(id, &e.path, "timer")?,
            };
            let payload = get("Input")?.map(|i| i.text()).transpose()?;
            d.timer(timer_keys(name, sched, enabled, payload, None), &e.path);
            d.note(format!("{}: a lampyr timer's event is {{\"triggerTime\", \"triggerName\", \"payload\"}} with the Input as payload, not EventBridge's Scheduled Event", e.path));
            Ok(false)
        }
        other => refuse(
            &ty.path,
            format!("events of type {other} are not supported by lampyr: it imports HttpApi, Api, Schedule and ScheduleV2 events; for other sources see lampyr's triggers (storage, nats, postgres) in the README, and remove this event"),
        ),
    }
}
