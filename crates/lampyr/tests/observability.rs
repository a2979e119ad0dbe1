//! What every invocation did: records, statistics, framed logs that can be
//! followed, and Prometheus metrics.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::sync::Arc;
use std::time::Duration;

use common::{Fixture, Server};

const APP: &str = r#"
exports.handler = async (e) => {
  console.log('handling', e.rawPath);
  if (e.rawPath === '/fail') throw new TypeError('bad input');
  if (e.rawPath === '/slow') await new Promise((r) => setTimeout(r, 5000));
  return 'ok';
};
"#;

fn invocations(server: &Server, name: &str, query: &str) -> Vec<serde_json::Value> {
    let r = server.api(
        "GET",
        &format!("/functions/{name}/invocations?{query}"),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["invocations"].as_array().unwrap().clone()
}

#[test]
fn every_invocation_is_recorded_with_phases_billing_and_status() {
    let server = Server::start();
    server.deploy(Fixture::node("rec", "memory_mb = 256\ntimeout = \"300ms\"\n", APP).path());
    let first = server.get("rec");
    let warm = server.get("rec/again");
    let failed = server.get("rec/fail");
    let slow = server.get("rec/slow");
    assert_eq!(
        (first.status, warm.status, failed.status, slow.status),
        (200, 200, 500, 504)
    );
    server.wait_until("four records", Duration::from_secs(10), || {
        invocations(&server, "rec", "limit=10").len() == 4
    });
    let list = invocations(&server, "rec", "limit=10");
    let by_id = |r: &common::Resp| {
        let id = r.header("x-lampyr-request-id").unwrap();
        list.iter().find(|x| x["request_id"] == id).unwrap().clone()
    };
    let c = by_id(&first);
    assert!(c["start"] == "cold" || c["start"] == "pooled", "{c}");
    assert_eq!(
        (
            c["status"].as_str(),
            c["trigger"].as_str(),
            c["http_status"].as_u64()
        ),
        (Some("ok"), Some("http"), Some(200))
    );
    assert!(c["phases"]["init"].as_f64().unwrap() > 0.0, "{c}");
    assert!(c["phases"]["sandbox"].as_f64().is_some());
    let billed = c["billed_ms"].as_u64().unwrap();
    assert!(billed >= 1 && billed as f64 >= c["duration_ms"].as_f64().unwrap());
    let gbs = c["gb_seconds"].as_f64().unwrap();
    assert!(
        (gbs - 256.0 / 1024.0 * billed as f64 / 1000.0).abs() < 1e-12,
        "{c}"
    );
    assert!(
        c["max_memory_used_mb"].as_f64().unwrap() > 1.0,
        "peak memory from the cgroup: {c}"
    );
    assert_eq!(c["response_bytes"], 2);
    let w = by_id(&warm);
    assert_eq!(w["start"], "warm");
    assert!(w["phases"].get("init").is_none());
    let f = by_id(&failed);
    assert_eq!(
        (
            f["status"].as_str(),
            f["error_type"].as_str(),
            f["http_status"].as_u64()
        ),
        (Some("error"), Some("TypeError"), Some(500))
    );
    let t = by_id(&slow);
    assert_eq!(
        (t["status"].as_str(), t["http_status"].as_u64()),
        (Some("timeout"), Some(504))
    );
    // Newest first, filterable, and one by id.
    assert_eq!(
        list[0]["request_id"],
        slow.header("x-lampyr-request-id").unwrap()
    );
    assert_eq!(invocations(&server, "rec", "status=error").len(), 1);
    let one = server.api(
        "GET",
        &format!("/invocations/{}", f["request_id"].as_str().unwrap()),
        None,
    );
    assert_eq!(one.json()["error_type"], "TypeError");
    assert_eq!(server.api("GET", "/invocations/nope", None).status, 404);

    // The CLI shows the same.
    let out = server.cli(&["invocations", "rec", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["invocations"].as_array().unwrap().len(), 4);
    let out = server.cli(&["invocations", "rec"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("timeout"));
    let out = server.cli(&["stats", "rec", "--since", "1h", "--json"]);
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (
            s["count"].as_u64(),
            s["errors"].as_u64(),
            s["cold_starts"].as_u64()
        ),
        (Some(4), Some(2), Some(1)),
        "{s}"
    );
    assert!((s["error_rate"].as_f64().unwrap() - 0.5).abs() < 1e-9);
    assert_eq!(s["duration"]["count"], 4);
    assert!(s["phases"]["init"]["p99"].as_f64().unwrap() > 0.0);
    assert!(s["gb_seconds"].as_f64().unwrap() > 0.0);
    let out = server.cli(&["stats", "rec"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("p99") && text.contains("init"), "{text}");
}

#[test]
fn throttled_requests_are_recorded_and_counted() {
    let server = Arc::new(Server::start());
    server.deploy(Fixture::node("tight", "max_instances = 1\nmax_queue = 0\n", APP).path());
    let s = server.clone();
    let busy = std::thread::spawn(move || s.get("tight/slow"));
    server.wait_until("the instance to be busy", Duration::from_secs(20), || {
        server.info("tight")["instance_states"]["busy"] == 1
    });
    assert_eq!(server.get("tight").status, 429);
    server.wait_until("the throttled record", Duration::from_secs(10), || {
        invocations(&server, "tight", "status=throttled").len() == 1
    });
    let metrics = common::request("GET", &format!("{}/metrics", server.url), None, &[]);
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .text()
            .contains("lampyr_throttles_total{function=\"tight\"} 1"),
        "{}",
        metrics.text()
    );
    busy.join().unwrap();
}

#[test]
fn logs_are_framed_per_invocation_and_can_be_followed() {
    let server = Server::start();
    server.deploy(Fixture::node("framed", "", APP).path());
    let r = server.get("framed/one");
    let rid = r.header("x-lampyr-request-id").unwrap().to_string();
    server.wait_until("the REPORT line", Duration::from_secs(10), || {
        server
            .logs("framed", &format!("request_id={rid}"))
            .iter()
            .any(|l| l["message"].as_str().unwrap().starts_with("REPORT"))
    });
    let lines: Vec<String> = server
        .logs("framed", &format!("request_id={rid}"))
        .iter()
        .map(|l| l["message"].as_str().unwrap().to_string())
        .collect();
    assert!(
        lines[0].starts_with(&format!("START RequestId: {rid} Version: 1")),
        "{lines:#?}"
    );
    // START, the handler's output, END, REPORT: in that order.
    let at = |want: &dyn Fn(&str) -> bool| lines.iter().position(|l| want(l)).unwrap();
    let handling = at(&|l| l == "handling /one");
    let end = at(&|l| l == format!("END RequestId: {rid}"));
    assert!(0 < handling && handling < end, "{lines:#?}");
    assert_eq!(end + 2, lines.len(), "{lines:#?}");
    let report = lines.last().unwrap();
    assert!(report.starts_with("REPORT"), "{lines:#?}");
    for field in [
        "Duration: ",
        "Billed Duration: ",
        "Memory Size: 128 MB",
        "Max Memory Used: ",
        "Init Duration: ",
    ] {
        assert!(report.contains(field), "{report}");
    }
    // A warm invocation's REPORT has no init duration.
    let rid2 = server
        .get("framed/two")
        .header("x-lampyr-request-id")
        .unwrap()
        .to_string();
    server.wait_until("the second REPORT", Duration::from_secs(10), || {
        server
            .logs("framed", &format!("request_id={rid2}"))
            .iter()
            .any(|l| {
                let m = l["message"].as_str().unwrap();
                m.starts_with("REPORT") && !m.contains("Init Duration")
            })
    });
    // `since` filters by time.
    assert!(server.logs("framed", "since=1h").len() >= 8);
    // The framing lines are rebuilt from the invocation records: the log
    // file holds only what the function printed.
    let file = std::fs::read_to_string(server.data.join("logs/framed.log")).unwrap();
    assert!(file.contains("handling /one"), "{file}");
    assert!(!file.contains("RequestId:"), "{file}");

    // Follow: the stream shows a new invocation's lines as they happen.
    let url = format!(
        "{}/api/v1/functions/framed/logs?follow=1&tail=0",
        server.url
    );
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into();
    let resp = agent
        .get(&url)
        .header("authorization", &format!("Bearer {}", server.token()))
        .call()
        .unwrap();
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let reader = resp.into_body().into_reader();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader.take(1 << 20)).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let rid3 = server
        .get("framed/followed")
        .header("x-lampyr-request-id")
        .unwrap()
        .to_string();
    // Its lines arrive framed, in order, the REPORT last.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut seen: Vec<String> = Vec::new();
    while std::time::Instant::now() < deadline
        && !seen.last().is_some_and(|m| m.starts_with("REPORT"))
    {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            if let Some(data) = line.strip_prefix("data:") {
                let rec: serde_json::Value = serde_json::from_str(data.trim()).unwrap();
                if rec["request_id"] == rid3.as_str() {
                    seen.push(rec["message"].as_str().unwrap().to_string());
                }
            }
        }
    }
    let seen: Vec<&str> = seen
        .iter()
        .map(|m| m.split(['\t', ' ']).next().unwrap())
        .collect();
    assert_eq!(
        seen,
        ["START", "handling", "END", "REPORT"],
        "the followed stream delivered the new invocation's lines"
    );
}

#[test]
fn prometheus_metrics_cover_invocations_phases_and_instances() {
    let server = Server::start();
    server.deploy(Fixture::node("metered", "", APP).path());
    server.get("metered");
    server.get("metered");
    server.get("metered/fail");
    let metrics = || common::request("GET", &format!("{}/metrics", server.url), None, &[]).text();
    server.wait_until("the invocation counters", Duration::from_secs(10), || {
        metrics().contains(
            "lampyr_invocations_total{function=\"metered\",start=\"warm\",status=\"error\"} 1",
        )
    });
    let m = metrics();
    for needle in [
        "# TYPE lampyr_invocations_total counter",
        "lampyr_invocations_total{function=\"metered\",start=\"warm\",status=\"ok\"} 1",
        "# TYPE lampyr_invocation_duration_seconds histogram",
        "lampyr_invocation_duration_seconds_count{function=\"metered\"} 3",
        "lampyr_cold_start_phase_seconds_count{function=\"metered\",phase=\"init\"} 1",
        "lampyr_instances{function=\"metered\",state=\"idle\"} 1",
        "lampyr_queue_depth{function=\"metered\"} 0",
        "lampyr_pooled_instances{runtime=\"nodejs\"}",
        "lampyr_reserved_instances{function=\"metered\"} 0",
        "# TYPE lampyr_billed_gb_seconds_total counter",
    ] {
        assert!(m.contains(needle), "missing {needle:?} in:\n{m}");
    }
}

#[test]
fn old_records_are_pruned_by_count() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("lampyr-server.toml");
    std::fs::write(&cfg, "[records]\nmax_count = 3\n").unwrap();
    let server = Server::start_in(
        &tmp.path().join("data"),
        &["--config", cfg.to_str().unwrap()],
    );
    server.deploy(Fixture::node("pruned", "", APP).path());
    for _ in 0..8 {
        assert_eq!(server.get("pruned").status, 200);
    }
    server.wait_until("pruning down to 3 records", Duration::from_secs(20), || {
        invocations(&server, "pruned", "limit=100").len() == 3
    });
}

#[test]
fn the_server_logs_json_and_deploys_show_progress() {
    let server = Server::start();
    let f = Fixture::node("progress", "", APP);
    let out = server.cli(&["deploy", f.path().to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    for step in [
        "[1/3] packaging",
        "[2/3] uploading",
        "[3/3] built version 1",
    ] {
        assert!(err.contains(step), "{err}");
    }
    let out = server.cli(&["deploy", f.path().to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["changed"], false);
    assert!(
        String::from_utf8_lossy(&out.stderr).is_empty(),
        "no progress lines with --json"
    );
}
