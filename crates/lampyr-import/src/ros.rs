//! Function Compute's `template.yml` for the `fun` tool (ROS,
//! `Transform: Aliyun::Serverless-2018-04-03`): `Aliyun::Serverless::Service`
//! resources with their `Aliyun::Serverless::Function`s, and the functions'
//! `Timer` events.
//!
//! An `HTTP` event calls a Function Compute HTTP function
//! (`handler(req, resp, context)`, WSGI in Python): the function gets
//! `handler_type = "http"` and its URL. `Initializer` and
//! `InitializationTimeout` become the manifest's initializer hook.

use std::path::Path;

use crate::draft::{lampyr_name, Draft};
use crate::yaml::{refuse, Node, Res};
use crate::{code_dir, fc_settings, fc_timer, http_auth, initializer, qualifier};

const SUPPORTED: &[&str] = &[
    "Handler",
    "Runtime",
    "CodeUri",
    "MemorySize",
    "Timeout",
    "InstanceConcurrency",
    "EnvironmentVariables",
    "Initializer",
    "InitializationTimeout",
];

pub(crate) fn convert(root: &Node, base: &Path) -> Res<Vec<Draft>> {
    root.check_keys(
        &[
            "ROSTemplateFormatVersion",
            "Transform",
            "Parameters",
            "Resources",
        ],
        &["Description", "Metadata", "Outputs"],
    )?;
    let mut drafts = Vec::new();
    for (_, svc) in root
        .need("Resources", "a template lists its services under Resources")?
        .entries()?
    {
        let ty = svc.need("Type", "every resource has a Type")?;
        if ty.text()? != "Aliyun::Serverless::Service" {
            return refuse(
                &ty.path,
                format!("{}: lampyr deploys the functions of Aliyun::Serverless::Service resources only; remove this resource", ty.text()?),
            );
        }
        let mut internet = true;
        let mut log_note = None;
        if let Some(p) = svc.get("Properties")? {
            p.check_keys(&["InternetAccess"], &["Description", "LogConfig", "Tags"])?;
            if let Some(i) = p.get("InternetAccess")? {
                internet = i.bool()?;
            }
            if let Some(l) = p.get("LogConfig")? {
                log_note = Some(format!(
                    "{}: ignored; lampyr keeps the function's logs (`lampyr logs NAME`)",
                    l.path
                ));
            }
        }
        for (fid, f) in svc.entries()? {
            if fid == "Type" || fid == "Properties" {
                continue;
            }
            let mut d = function(&fid, &f, base)?;
            if !internet {
                d.set(
                    "network",
                    "none",
                    &format!("{}.Properties.InternetAccess", svc.path),
                );
            }
            if let Some(n) = &log_note {
                d.note(n.clone());
            }
            drafts.push(d);
        }
    }
    Ok(drafts)
}

fn function(id: &str, f: &Node, base: &Path) -> Res<Draft> {
    f.check_keys(
        &["Type", "Properties", "Events"],
        &["Metadata", "DependsOn"],
    )?;
    let ty = f.need("Type", "every function has a Type")?;
    if ty.text()? != "Aliyun::Serverless::Function" {
        return refuse(
            &ty.path,
            format!("{}: lampyr deploys Aliyun::Serverless::Function resources of a service; remove this one", ty.text()?),
        );
    }
    let mut d = Draft::new(id, &f.path);
    d.set("name", lampyr_name(id, &f.path, "function")?, &f.path);
    let p = f.need(
        "Properties",
        "a function has Properties: Handler, Runtime, CodeUri",
    )?;
    p.check_keys(SUPPORTED, &["Description"])?;
    d.set(
        "runtime",
        p.need("Runtime", "name the runtime, e.g. nodejs20 or python3.10")?
            .text()?,
        &format!("{}.Runtime", p.path),
    );
    d.set(
        "handler",
        p.need("Handler", "name the handler, e.g. index.handler")?
            .text()?,
        &format!("{}.Handler", p.path),
    );
    d.code_dir = Some(code_dir(
        base,
        &p.need(
            "CodeUri",
            "name the code directory, relative to the template",
        )?,
    )?);
    fc_settings(
        &mut d,
        &p,
        [
            "MemorySize",
            "Timeout",
            "InstanceConcurrency",
            "EnvironmentVariables",
        ],
    )?;
    initializer(&mut d, &p, ["Initializer", "InitializationTimeout"])?;
    let mut any = false;
    if let Some(events) = f.get("Events")? {
        for (eid, e) in events.entries()? {
            event(&mut d, &eid, &e)?;
            any = true;
        }
    }
    if !any {
        d.note(format!(
            "{}: no events: the function is called with `lampyr invoke` (or the Invoke API) only",
            f.path
        ));
    }
    Ok(d)
}

fn event(d: &mut Draft, id: &str, e: &Node) -> Res<()> {
    e.check_keys(&["Type", "Properties"], &[])?;
    let ty = e.need("Type", "every event has a Type")?;
    match ty.text()?.as_str() {
        "HTTP" | "Http" | "http" => {
            // An HTTP trigger calls an HTTP function: handler(req, resp,
            // context) in Node.js, a WSGI app in Python.
            d.set("handler_type", "http", &e.path);
            if let Some(p) = e.get("Properties")? {
                p.check_keys(&["AuthType", "Methods", "Qualifier"], &["Description"])?;
                if let Some(a) = p.get("AuthType")? {
                    http_auth(d, &a)?;
                }
                d.http(qualifier(p.get("Qualifier")?)?, &e.path);
            } else {
                d.http(None, &e.path);
            }
            d.note(format!(
                "{}: the HTTP function is served at /fn/NAME/..., for every path and method",
                e.path
            ));
            Ok(())
        }
        "Timer" => {
            let p = e.need("Properties", "a timer needs Properties.CronExpression")?;
            p.check_keys(&["CronExpression", "Enable", "Payload", "Qualifier"], &["Description"])?;
            let alias = qualifier(p.get("Qualifier")?)?;
            let name = lampyr_name(id, &e.path, "timer")?;
            let keys = ["CronExpression", "Enable", "Payload"];
            fc_timer(d, &p, keys, name, alias, &e.path)
        }
        other => refuse(
            &ty.path,
            format!("events of type {other} are not supported by lampyr: it imports Timer events; for object storage and queues see lampyr's triggers (storage, nats) in the README, and remove this event"),
        ),
    }
}
