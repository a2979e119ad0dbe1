//! Asynchronous invocation from the command line: `invoke --async`,
//! `invocations --events` and `dlq`.

use std::io::Write as _;

use lampyr_api::events::{EventInfo, EventList};

use crate::commands::{out, print_json, read_data, CommandError};
use crate::Client;

/// `lampyr invoke NAME --async`: queues the event; prints its request id.
pub fn invoke_async(
    client: &Client,
    name: &str,
    data: Option<&str>,
    idempotency_key: Option<&str>,
    json: bool,
) -> Result<(), CommandError> {
    let event = read_data(data)?;
    let mut headers = vec![("x-lampyr-invocation-type", "event")];
    if let Some(k) = idempotency_key {
        headers.push(("x-lampyr-idempotency-key", k));
    }
    let reply = client.call_with(
        "POST",
        &format!("/api/v1/functions/{name}/invoke"),
        Some(&event),
        &headers,
    )?;
    if !(200..300).contains(&reply.status) {
        return Err(crate::client::server_error(&reply, client.has_no_token()).into());
    }
    let body: serde_json::Value = reply.json()?;
    if json {
        print_json(&body);
    } else {
        let id = body["request_id"].as_str().unwrap_or_default();
        let what = if body["duplicate"] == true {
            "already queued (same idempotency key)"
        } else {
            "queued"
        };
        let _ = writeln!(out(), "{id}");
        eprintln!("{what}: follow it with `lampyr invocations {name} --events`");
    }
    Ok(())
}

fn print_events(events: &[EventInfo]) {
    let mut o = out();
    let _ = writeln!(
        o,
        "{:<24}  {:<36}  {:<6}  {:<13}  {:>8}  NEXT / ENDED",
        "ACCEPTED", "REQUEST ID", "FROM", "STATE", "ATTEMPTS"
    );
    for e in events {
        let state = serde_json::to_value(e.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let when = e
            .next_attempt_at
            .as_deref()
            .or(e.finished_at.as_deref())
            .unwrap_or("-");
        let _ = writeln!(
            o,
            "{:<24}  {:<36}  {:<6}  {:<13}  {:>8}  {when}",
            e.created_at, e.request_id, e.trigger, state, e.attempts
        );
        if let Some(last) = e.errors.last() {
            let _ = writeln!(o, "    last error: {}: {}", last.error_type, last.message);
        }
    }
}

/// `lampyr invocations NAME --events`: the function's asynchronous events
/// and their states.
pub fn events(
    client: &Client,
    name: &str,
    state: Option<&str>,
    limit: usize,
    json: bool,
) -> Result<(), CommandError> {
    let mut q = format!("/api/v1/functions/{name}/events?limit={limit}");
    if let Some(s) = state {
        q.push_str(&format!("&state={s}"));
    }
    let list: EventList = client.get_json(&q)?;
    if json {
        print_json(&list);
    } else {
        print_events(&list.events);
    }
    Ok(())
}

/// `lampyr dlq NAME`: the dead letters.
pub fn dlq_list(client: &Client, name: &str, json: bool) -> Result<(), CommandError> {
    let list: EventList = client.get_json(&format!("/api/v1/functions/{name}/dlq"))?;
    if json {
        print_json(&list);
    } else if list.events.is_empty() {
        let _ = writeln!(out(), "function '{name}' has no dead letters");
    } else {
        print_events(&list.events);
        eprintln!("run one again: lampyr dlq redrive {name} REQUEST_ID (or --all)");
    }
    Ok(())
}

/// `lampyr dlq show NAME ID`: one dead letter, its payload and errors.
pub fn dlq_show(client: &Client, name: &str, id: &str, json: bool) -> Result<(), CommandError> {
    let e: EventInfo = client.get_json(&format!("/api/v1/functions/{name}/dlq/{id}"))?;
    if json {
        print_json(&e);
        return Ok(());
    }
    let mut o = out();
    let _ = writeln!(o, "request id:  {}", e.request_id);
    let _ = writeln!(o, "accepted:    {}", e.created_at);
    if let Some(r) = e.dead_reason {
        let _ = writeln!(
            o,
            "dead:        {} ({} attempts, {} rescues) at {}",
            r.as_str(),
            e.attempts,
            e.rescues,
            e.finished_at.as_deref().unwrap_or("-")
        );
    }
    for err in &e.errors {
        let _ = writeln!(
            o,
            "attempt {}:   {} {}: {}",
            err.attempt, err.at, err.error_type, err.message
        );
    }
    if let Some(p) = &e.payload {
        let _ = writeln!(
            o,
            "payload:\n{}",
            serde_json::to_string_pretty(p).unwrap_or_default()
        );
    }
    Ok(())
}

/// `lampyr dlq redrive NAME [ID…|--all]`.
pub fn dlq_redrive(
    client: &Client,
    name: &str,
    ids: &[String],
    all: bool,
    json: bool,
) -> Result<(), CommandError> {
    if all != ids.is_empty() {
        return Err(CommandError::Input(
            "name the dead letters to redrive, or pass --all".into(),
        ));
    }
    let body = if all {
        serde_json::json!({ "all": true })
    } else {
        serde_json::json!({ "request_ids": ids })
    };
    let reply = client.call(
        "POST",
        &format!("/api/v1/functions/{name}/dlq/redrive"),
        Some(body.to_string().as_bytes()),
    )?;
    let v: serde_json::Value = reply.json()?;
    if json {
        print_json(&v);
    } else {
        let _ = writeln!(
            out(),
            "{} dead letter(s) of '{name}' queued again",
            v["redriven"]
        );
    }
    Ok(())
}

/// `lampyr dlq purge NAME`.
pub fn dlq_purge(client: &Client, name: &str, json: bool) -> Result<(), CommandError> {
    let reply = client.call("DELETE", &format!("/api/v1/functions/{name}/dlq"), None)?;
    let v: serde_json::Value = reply.json()?;
    if json {
        print_json(&v);
    } else {
        let _ = writeln!(out(), "{} dead letter(s) of '{name}' deleted", v["purged"]);
    }
    Ok(())
}
