//! Serverless Devs' `s.yaml` (edition 3, component `fc3`): each resource's
//! `props` as a function, its `triggers` (`http`, `timer`), `vars` and
//! `${vars.x}`/`${env(X)}` references.
//!
//! An fc3 HTTP trigger calls an event handler with the request as its
//! event, as lampyr's HTTP trigger does (lampyr's event is Lambda's
//! payload format 2.0).

use std::path::Path;

use crate::draft::{lampyr_name, Draft};
use crate::yaml::{refuse, Node, Res};
use crate::{code_dir, fc_settings, fc_timer, http_auth, initializer, qualifier, HTTP_EVENT_NOTE};

const SUPPORTED: &[&str] = &[
    "functionName",
    "runtime",
    "code",
    "handler",
    "memorySize",
    "timeout",
    "environmentVariables",
    "instanceConcurrency",
    "internetAccess",
    "triggers",
    "instanceLifecycleConfig",
];
/// Accepted and ignored: where the function would run on the cloud, and
/// where its logs would go (lampyr keeps them: `lampyr logs`).
const IGNORED: &[&str] = &["region", "description", "logConfig", "tags"];

pub(crate) fn convert(root: &Node, base: &Path) -> Res<Vec<Draft>> {
    root.check_keys(&["edition", "resources", "vars"], &["name", "access"])?;
    if let Some(e) = root.get("edition")? {
        if !e.text()?.starts_with('3') {
            return refuse(&e.path, format!("\"{}\": lampyr reads Serverless Devs 3 templates (edition: 3.0.0, component fc3)", e.text()?));
        }
    }
    let mut drafts = Vec::new();
    for (id, r) in root
        .need("resources", "an s.yaml lists its functions under resources")?
        .entries()?
    {
        r.check_keys(&["component", "props"], &[])?;
        let c = r.need("component", "name the component: fc3")?;
        let comp = c.text()?;
        if comp != "fc3" && !comp.starts_with("fc3@") {
            return refuse(
                &c.path,
                format!("\"{comp}\": lampyr deploys fc3 functions only; remove this resource (or move an fc component's function to fc3)"),
            );
        }
        drafts.push(function(
            &id,
            &r.need("props", "an fc3 resource has props")?,
            base,
        )?);
    }
    Ok(drafts)
}

fn function(id: &str, p: &Node, base: &Path) -> Res<Draft> {
    let at = p.path.trim_end_matches(".props").to_string();
    let mut d = Draft::new(id, &at);
    p.check_keys(SUPPORTED, IGNORED)?;
    let name = match p.get("functionName")? {
        Some(n) => lampyr_name(&n.text()?, &n.path, "function")?,
        None => lampyr_name(id, &at, "function")?,
    };
    d.set("name", name, &format!("{}.functionName", p.path));
    let need = |k: &str, what: &str| -> Res<Node> { p.need(k, what) };
    let rt = need("runtime", "name the runtime, e.g. nodejs20 or python3.10")?;
    d.set("runtime", rt.text()?, &rt.path);
    let h = need("handler", "name the handler, e.g. index.handler")?;
    d.set("handler", h.text()?, &h.path);
    d.code_dir = Some(code_dir(
        base,
        &need("code", "name the code directory, relative to s.yaml")?,
    )?);
    fc_settings(
        &mut d,
        p,
        [
            "memorySize",
            "timeout",
            "instanceConcurrency",
            "environmentVariables",
        ],
    )?;
    if let Some(c) = p.get("instanceLifecycleConfig")? {
        c.check_keys(&["initializer"], &[])?;
        if let Some(i) = c.get("initializer")? {
            initializer(&mut d, &i, ["handler", "timeout"])?;
        }
    }
    if let Some(v) = p.get("internetAccess")? {
        if !v.bool()? {
            d.set("network", "none", &v.path);
        }
    }
    if let Some(l) = p.get("logConfig")? {
        d.note(format!(
            "{}: ignored; lampyr keeps the function's logs (`lampyr logs NAME`)",
            l.path
        ));
    }
    let triggers = p
        .get("triggers")?
        .map(|t| t.items())
        .transpose()?
        .unwrap_or_default();
    if triggers.is_empty() {
        d.note(format!("{at}: no triggers: the function is called with `lampyr invoke` (or the Invoke API) only"));
    }
    for t in triggers {
        trigger(&mut d, &t)?;
    }
    Ok(d)
}

fn trigger(d: &mut Draft, t: &Node) -> Res<()> {
    t.check_keys(
        &["triggerName", "triggerType", "triggerConfig", "qualifier"],
        &["description"],
    )?;
    let ty = t.need("triggerType", "http or timer")?;
    let name = t.need("triggerName", "every trigger has a name")?;
    let alias = qualifier(t.get("qualifier")?)?;
    let config = t.get("triggerConfig")?;
    match ty.text()?.as_str() {
        "http" => {
            if let Some(c) = &config {
                c.check_keys(&["authType", "methods"], &["disableURLInternet"])?;
                if let Some(a) = c.get("authType")? {
                    http_auth(d, &a)?;
                }
            }
            d.http(alias, &t.path);
            d.note(format!("{}: {HTTP_EVENT_NOTE}", t.path));
            Ok(())
        }
        "timer" => {
            let Some(c) = config else {
                return refuse(&format!("{}.triggerConfig", t.path), "is missing: a timer needs triggerConfig.cronExpression");
            };
            c.check_keys(&["cronExpression", "enable", "payload"], &[])?;
            let name = lampyr_name(&name.text()?, &name.path, "timer")?;
            let keys = ["cronExpression", "enable", "payload"];
            fc_timer(d, &c, keys, name, alias, &t.path)
        }
        other => refuse(
            &ty.path,
            format!("triggers of type {other} are not supported by lampyr: it imports http and timer triggers; for object storage and queues see lampyr's triggers (storage, nats) in the README, and remove this trigger"),
        ),
    }
}
