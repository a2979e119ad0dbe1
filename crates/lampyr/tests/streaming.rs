//! Response streaming: Node.js handlers wrapped in
//! `awslambda.streamifyResponse`, against a real server and real
//! instances, read by a plain HTTP/1.1 client over loopback that sees each
//! chunk as it arrives.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{request, Fixture, Server};
use serde_json::Value;

/// One function, two instances' worth of work on one instance: a `hold`
/// request streams its first line, then waits until a `release` request
/// (another invocation on the same instance) lets it finish. So the test
/// gives the signal only after it has read the first chunk: the chunk
/// arrived while the function was still running.
const HELD: &str = r#"
let release = null;
const released = new Promise((r) => { release = r; });
exports.handler = awslambda.streamifyResponse(async (event, responseStream, context) => {
  if (event.rawPath === "/release") {
    release();
    responseStream.setContentType("text/plain");
    responseStream.end("released");
    return;
  }
  const stream = awslambda.HttpResponseStream.from(responseStream, {
    statusCode: 201,
    headers: { "x-streamed": "yes", "content-type": "text/plain; charset=utf-8" },
    cookies: ["a=1", "b=2; Path=/"],
  });
  stream.write("first line\n");
  await released;
  stream.write("second line\n");
  stream.end();
});
"#;

/// Fails mid-stream, before streaming, or runs past its timeout.
const FAILING: &str = r#"
exports.handler = awslambda.streamifyResponse(async (event, responseStream) => {
  responseStream.setContentType("text/plain");
  if (event.rawPath === "/early") throw new TypeError("nothing streamed");
  responseStream.write("partial");
  await new Promise((r) => setTimeout(r, 10));
  if (event.rawPath === "/hang") await new Promise(() => {});
  class StreamBroke extends Error {}
  throw new StreamBroke("broke mid-stream");
});
"#;

/// Streams `event.queryStringParameters.mib` MiB, honouring back-pressure.
const LARGE: &str = r#"
const { once } = require("node:events");
exports.handler = awslambda.streamifyResponse(async (event, responseStream) => {
  const mib = Number((event.queryStringParameters || {}).mib || (event.mib || 1));
  const block = Buffer.alloc(64 * 1024, 120);
  for (let i = 0; i < mib * 16; i++) {
    if (!responseStream.write(block)) await once(responseStream, "drain");
  }
  responseStream.end();
});
"#;

/// A streamed response read as it arrives.
struct Streamed {
    reader: BufReader<TcpStream>,
    status: u16,
    headers: Vec<(String, String)>,
}

impl Streamed {
    /// Sends `GET path` and reads the response's head.
    fn get(server: &Server, path: &str) -> Streamed {
        let stream = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut w = stream.try_clone().unwrap();
        write!(
            w,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let status = line.split(' ').nth(1).unwrap().parse().unwrap();
        let mut headers = Vec::new();
        loop {
            line.clear();
            reader.read_line(&mut line).unwrap();
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').unwrap();
            headers.push((k.to_ascii_lowercase(), v.trim().to_string()));
        }
        Streamed {
            reader,
            status,
            headers,
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The next chunk of a chunked body: `Ok(None)` at its proper end,
    /// `Err` if the connection ended without it (the body was cut).
    fn chunk(&mut self) -> Result<Option<Vec<u8>>, String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => return Err("the connection closed before the last chunk".into()),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
        let size = usize::from_str_radix(line.trim_end(), 16)
            .map_err(|_| format!("not a chunk size: {line:?}"))?;
        let mut data = vec![0; size + 2];
        self.reader
            .read_exact(&mut data)
            .map_err(|e| format!("a chunk was cut: {e}"))?;
        data.truncate(size);
        Ok((size > 0).then_some(data))
    }

    /// The rest of the body, or where it was cut (with what came before).
    fn rest(&mut self) -> Result<Vec<u8>, (String, Vec<u8>)> {
        let mut body = Vec::new();
        loop {
            match self.chunk() {
                Ok(Some(c)) => body.extend(c),
                Ok(None) => return Ok(body),
                Err(e) => return Err((e, body)),
            }
        }
    }
}

/// The record of `id`, once written.
fn record(server: &Server, id: &str) -> Value {
    let mut last = Value::Null;
    server.wait_until(
        &format!("the record of {id}"),
        Duration::from_secs(10),
        || {
            let r = server.api("GET", &format!("/invocations/{id}"), None);
            if r.status == 200 {
                last = r.json();
            }
            r.status == 200
        },
    );
    last
}

/// A plain Invoke through Lambda's Invoke API (with the server's token).
fn lambda_invoke(server: &Server, function: &str, payload: &str) -> common::Resp {
    request(
        "POST",
        &format!("{}/2015-03-31/functions/{function}/invocations", server.url),
        Some(payload.as_bytes()),
        &[("authorization", &format!("Bearer {}", server.token()))],
    )
}

#[test]
fn chunks_reach_the_client_while_the_function_runs() {
    let server = Server::start();
    server.deploy(
        Fixture::node(
            "held",
            "concurrency = 2\nmax_instances = 1\ntimeout = \"30s\"\n",
            HELD,
        )
        .path(),
    );
    let mut held = Streamed::get(&server, "/fn/held/hold");
    // The prelude: status, headers and cookies.
    assert_eq!(held.status, 201);
    assert_eq!(held.header("x-streamed"), Some("yes"));
    assert_eq!(
        held.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(held.all("set-cookie"), ["a=1", "b=2; Path=/"]);
    assert_eq!(held.header("transfer-encoding"), Some("chunked"));
    assert!(held
        .header("server-timing")
        .is_some_and(|t| t.contains("exec;dur=")));
    let id = held.header("x-lampyr-request-id").unwrap().to_string();
    // The first line, while the function waits for the release.
    assert_eq!(held.chunk().unwrap().unwrap(), b"first line\n");
    let released = request("GET", &format!("{}/fn/held/release", server.url), None, &[]);
    assert_eq!(released.status, 200, "{}", released.text());
    assert_eq!(released.text(), "released");
    assert_eq!(released.header("content-type"), Some("text/plain"));
    assert_eq!(held.rest().unwrap(), b"second line\n");
    // The record: a success, the bytes streamed (the prelude too), the
    // duration to the stream's end.
    let r = record(&server, &id);
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(r["http_status"], 201);
    assert_eq!(r["response_bytes"], 23);
    let prelude = r#"{"statusCode":201,"headers":{"x-streamed":"yes","content-type":"text/plain; charset=utf-8"},"cookies":["a=1","b=2; Path=/"]}"#;
    assert_eq!(r["stream_bytes"], (prelude.len() + 8 + 23) as u64);
    assert!(r["duration_ms"].as_f64().unwrap() >= r["phases"]["exec"].as_f64().unwrap());
    // The release streamed its answer too ("released", no prelude).
    let rel = record(&server, released.header("x-lampyr-request-id").unwrap());
    assert_eq!(rel["stream_bytes"], 8);

    // The Lambda Invoke API answers with the whole body.
    let r = lambda_invoke(&server, "held", r#"{"rawPath":"/release"}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "released");
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(r.header("x-amz-function-error"), None);

    // InvokeWithResponseStream through boto3: its chunks, then the end.
    let (id, secret) = common::aws::new_key(&server);
    let events = boto3_stream(&server, (&id, &secret), "held", r#"{"rawPath":"/release"}"#);
    let body: String = events.iter().filter_map(|e| e["chunk"].as_str()).collect();
    assert_eq!(body, "released", "{events:?}");
    let end = &events.last().unwrap()["complete"];
    assert!(
        end.is_object() && end.get("ErrorCode").is_none(),
        "{events:?}"
    );
}

#[test]
fn failures_cut_the_stream_and_are_recorded() {
    let server = Server::start();
    server.deploy(Fixture::node("failing", "timeout = \"1s\"\n", FAILING).path());

    // Thrown after a chunk went out: the body is cut, the record says so.
    let mut s = Streamed::get(&server, "/fn/failing/mid");
    assert_eq!(s.status, 200);
    assert_eq!(s.header("content-type"), Some("text/plain"));
    let id = s.header("x-lampyr-request-id").unwrap().to_string();
    let (why, body) = s.rest().unwrap_err();
    assert_eq!(body, b"partial", "{why}");
    let r = record(&server, &id);
    assert_eq!(r["status"], "error", "{r}");
    assert_eq!(r["error_type"], "StreamBroke");
    assert_eq!(r["stream_bytes"], 7);
    let logs = server.logs("failing", &format!("request_id={id}"));
    assert!(
        logs.iter().any(|l| l["message"]
            .as_str()
            .is_some_and(|m| m.contains("broke mid-stream"))),
        "{logs:?}"
    );

    // Thrown before a byte: the ordinary error response.
    let early = request(
        "GET",
        &format!("{}/fn/failing/early", server.url),
        None,
        &[],
    );
    assert_eq!(early.status, 500, "{}", early.text());
    assert_eq!(early.json()["errorType"], "TypeError");
    assert_eq!(early.header("x-lampyr-function-error"), Some("Unhandled"));

    // Past its timeout after a chunk: cut, recorded as a timeout.
    let mut s = Streamed::get(&server, "/fn/failing/hang");
    assert_eq!(s.status, 200);
    let id = s.header("x-lampyr-request-id").unwrap().to_string();
    let (_, body) = s.rest().unwrap_err();
    assert_eq!(body, b"partial");
    let r = record(&server, &id);
    assert_eq!(r["status"], "timeout", "{r}");
    assert_eq!(r["error_type"], "Runtime.Timeout");

    // The Invoke API: a function error, as Lambda gives one.
    let r = lambda_invoke(&server, "failing", r#"{"rawPath":"/mid"}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-amz-function-error"), Some("Unhandled"));
    assert_eq!(r.json()["errorMessage"], "broke mid-stream");

    // InvokeWithResponseStream through boto3: the chunk, then the error.
    let (id, secret) = common::aws::new_key(&server);
    let events = boto3_stream(&server, (&id, &secret), "failing", r#"{"rawPath":"/mid"}"#);
    assert_eq!(events[0]["chunk"], "partial", "{events:?}");
    let end = &events.last().unwrap()["complete"];
    assert_eq!(end["ErrorCode"], "StreamBroke", "{events:?}");
    assert!(end["ErrorDetails"]
        .as_str()
        .is_some_and(|d| d.contains("broke mid-stream")));
}

/// The events boto3's `invoke_with_response_stream` read.
fn boto3_stream(server: &Server, key: (&str, &str), function: &str, payload: &str) -> Vec<Value> {
    let r = common::aws::boto3_fixture(
        "stream_client.py",
        &[server.url.as_str(), key.0, key.1, function, payload],
    );
    assert_eq!(r["status"], 200, "{r}");
    r["events"].as_array().unwrap().clone()
}

#[test]
fn a_large_body_streams_to_a_slow_reader_in_bounded_memory() {
    let server = Server::start();
    server.deploy(Fixture::node("large", "timeout = \"120s\"\n", LARGE).path());
    // Warm: the instance and its first response are not what is measured.
    let warm = request("GET", &format!("{}/fn/large?mib=1", server.url), None, &[]);
    assert_eq!(warm.body.len(), 1 << 20);
    let before = server.peak_rss_kib();
    const MIB: usize = 256;
    let mut s = Streamed::get(&server, &format!("/fn/large?mib={MIB}"));
    assert_eq!(s.status, 200);
    assert_eq!(s.header("content-type"), Some("application/octet-stream"));
    let id = s.header("x-lampyr-request-id").unwrap().to_string();
    // A slow reader: a pause after every MiB it reads.
    let mut got = 0usize;
    let mut next_pause = 1 << 20;
    while let Some(c) = s.chunk().unwrap() {
        assert!(c.iter().all(|b| *b == b'x'));
        got += c.len();
        if got >= next_pause {
            next_pause += 1 << 20;
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    assert_eq!(got, MIB << 20);
    // The server's peak memory grew by far less than the body: it was
    // never held whole.
    let grew_kib = server.peak_rss_kib().saturating_sub(before);
    assert!(
        grew_kib < ((MIB as u64) << 10) / 8,
        "the server's peak RSS grew by {grew_kib} KiB for a {MIB} MiB body"
    );
    let r = record(&server, &id);
    assert_eq!(r["status"], "ok");
    assert_eq!(r["stream_bytes"], (MIB << 20) as u64);
    assert_eq!(r["response_bytes"], (MIB << 20) as u64);

    // The Invoke API collects a streamed body up to the response limit
    // (6 MB), and refuses one past it as Lambda does.
    let invoke = |mib: u32| lambda_invoke(&server, "large", &format!(r#"{{"mib":{mib}}}"#));
    let r = invoke(2);
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 2 << 20);
    assert_eq!(r.header("x-amz-function-error"), None);
    let r = invoke(8);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-amz-function-error"), Some("Unhandled"));
    assert_eq!(r.json()["errorType"], "Function.ResponseSizeTooLarge");
}
