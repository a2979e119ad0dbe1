//! A real `nats-server -js` for a test: on a free loopback port, with a
//! store directory of its own, stopped when dropped. Its client side
//! (streams, publishing, reading a stream back) is blocking, on a runtime
//! of its own.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use async_nats::jetstream::{self, stream};

/// A message as a stream keeps it: subject, headers, payload.
pub type StoredMessage = (String, Vec<(String, String)>, Vec<u8>);

/// A running `nats-server` with JetStream.
pub struct NatsServer {
    pub port: u16,
    child: Child,
    _store: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    token: Option<String>,
    client: async_nats::Client,
}

/// A free loopback port (nothing listens on it when this returns).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn executable() -> PathBuf {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/usr/bin"])
    {
        let p = PathBuf::from(dir).join("nats-server");
        if p.is_file() {
            return p;
        }
    }
    panic!("nats-server is not installed: the NATS trigger's tests start a real one (scripts/test installs it; or `apt-get install nats-server`)");
}

impl NatsServer {
    pub fn start() -> NatsServer {
        NatsServer::start_on(free_port(), None)
    }

    /// One that requires `token` from its clients.
    pub fn start_with_token(token: &str) -> NatsServer {
        NatsServer::start_on(free_port(), Some(token))
    }

    /// One that requires `user` and `password` from its clients.
    pub fn start_with_user(user: &str, password: &str) -> NatsServer {
        NatsServer::launch(
            free_port(),
            &["--user", user, "--pass", password],
            async_nats::ConnectOptions::new().user_and_password(user.into(), password.into()),
        )
    }

    /// One that admits only the nkey user `public`; the test's own client
    /// signs in with its `seed`.
    pub fn start_with_nkey(public: &str, seed: &str) -> NatsServer {
        NatsServer::launch_with(
            free_port(),
            &[],
            &format!("authorization {{\n  users = [ {{ nkey: {public} }} ]\n}}\n"),
            async_nats::ConnectOptions::new().nkey(seed.to_string()),
        )
    }

    /// One in operator mode (JWTs: see [`Decentralized`]); the test's own
    /// client signs in with the user's creds.
    pub fn start_decentralized(d: &Decentralized) -> NatsServer {
        NatsServer::launch_with(
            free_port(),
            &[],
            &d.config,
            async_nats::ConnectOptions::new()
                .credentials(&d.creds)
                .expect("the test's creds read"),
        )
    }

    /// One on `port`.
    pub fn start_on(port: u16, token: Option<&str>) -> NatsServer {
        let mut s = match token {
            Some(t) => NatsServer::launch(
                port,
                &["--auth", t],
                async_nats::ConnectOptions::new().token(t.to_string()),
            ),
            None => NatsServer::launch(port, &[], async_nats::ConnectOptions::new()),
        };
        s.token = token.map(str::to_string);
        s
    }

    fn launch(port: u16, args: &[&str], opts: async_nats::ConnectOptions) -> NatsServer {
        NatsServer::launch_with(port, args, "", opts)
    }

    /// `config`, when not empty, is the server's configuration file.
    fn launch_with(
        port: u16,
        args: &[&str],
        config: &str,
        opts: async_nats::ConnectOptions,
    ) -> NatsServer {
        let store = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(executable());
        if !config.is_empty() {
            let file = store.path().join("nats.conf");
            std::fs::write(&file, config).unwrap();
            cmd.arg("-c").arg(file);
        }
        cmd.args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(store.path())
            .arg("-l")
            .arg(store.path().join("server.log"));
        cmd.args(args);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        let start = std::time::Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(st)) = child.try_wait() {
                panic!(
                    "nats-server exited ({st}) before listening on {port}: {}",
                    std::fs::read_to_string(store.path().join("server.log")).unwrap_or_default()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "nats-server did not listen on 127.0.0.1:{port} within 20 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let url = format!("nats://127.0.0.1:{port}");
        let client = rt
            .block_on(opts.connect(url))
            .expect("the test connects to its nats-server");
        NatsServer {
            port,
            child,
            _store: store,
            rt,
            token: None,
            client,
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn js(&self) -> jetstream::Context {
        let _rt = self.rt.enter();
        jetstream::new(self.client.clone())
    }

    /// Creates stream `name` over `subjects`.
    pub fn stream(&self, name: &str, subjects: &[&str]) {
        let js = self.js();
        self.rt
            .block_on(js.create_stream(stream::Config {
                name: name.to_string(),
                subjects: subjects.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            }))
            .expect("create the stream");
    }

    /// Publishes and waits for the stream's ack; its sequence.
    pub fn publish(&self, subject: &str, headers: &[(&str, &str)], payload: &[u8]) -> u64 {
        let js = self.js();
        let mut h = async_nats::HeaderMap::new();
        for (k, v) in headers {
            h.insert(*k, *v);
        }
        let payload = bytes::Bytes::copy_from_slice(payload);
        let subject = subject.to_string();
        self.rt
            .block_on(async move { js.publish_with_headers(subject, h, payload).await?.await })
            .expect("publish")
            .sequence
    }

    /// Publishes on core NATS (no stream, no ack) and waits until the
    /// server has it.
    pub fn publish_core(&self, subject: &str, payload: &[u8]) {
        let payload = bytes::Bytes::copy_from_slice(payload);
        let client = self.client.clone();
        let subject = subject.to_string();
        self.rt.block_on(async move {
            client
                .publish(subject, payload)
                .await
                .expect("publish on core NATS");
            client.flush().await.expect("flush the publish");
        });
    }

    /// The messages of `stream`, in order.
    pub fn messages(&self, stream: &str) -> Vec<StoredMessage> {
        let js = self.js();
        self.rt.block_on(async move {
            let mut s = js.get_stream(stream).await.expect("the stream");
            let info = s.info().await.expect("stream info").clone();
            let mut out = Vec::new();
            for seq in info.state.first_sequence..=info.state.last_sequence {
                if info.state.messages == 0 {
                    break;
                }
                let Ok(m) = s.get_raw_message(seq).await else {
                    continue;
                };
                let headers = m
                    .headers
                    .iter()
                    .flat_map(|(k, vs)| vs.iter().map(move |v| (k.to_string(), v.to_string())))
                    .collect();
                out.push((m.subject.to_string(), headers, m.payload.to_vec()));
            }
            out
        })
    }

    /// A consumer's counts: messages pending, delivered and not acked yet,
    /// and deliveries it has made (redeliveries included).
    pub fn consumer(&self, stream: &str, name: &str) -> (u64, usize, u64) {
        let js = self.js();
        let name = name.to_string();
        self.rt.block_on(async move {
            let s = js.get_stream(stream).await.expect("the stream");
            let mut c: jetstream::consumer::PullConsumer =
                s.get_consumer(&name).await.expect("the consumer");
            let i = c.info().await.expect("consumer info");
            (
                i.num_pending,
                i.num_ack_pending,
                i.delivered.consumer_sequence,
            )
        })
    }

    /// Whether stream `stream` has consumer `name`.
    pub fn has_consumer(&self, stream: &str, name: &str) -> bool {
        use async_nats::jetstream::context::ConsumerInfoErrorKind;
        let js = self.js();
        let name = name.to_string();
        self.rt.block_on(async move {
            let s = js.get_stream(stream).await.expect("the stream");
            match s.consumer_info(&name).await {
                Ok(_) => true,
                Err(e) => match e.kind() {
                    ConsumerInfoErrorKind::NotFound => false,
                    ConsumerInfoErrorKind::JetStream(j)
                        if j.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND =>
                    {
                        false
                    }
                    _ => panic!("consumer {name}: {e}"),
                },
            }
        })
    }

    /// Deletes a consumer: its acks are forgotten, so a consumer created
    /// again under its name gets the stream's messages again.
    pub fn delete_consumer(&self, stream: &str, name: &str) {
        let js = self.js();
        let name = name.to_string();
        self.rt.block_on(async move {
            let s = js.get_stream(stream).await.expect("the stream");
            s.delete_consumer(&name).await.expect("delete the consumer");
        });
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What `nsc` would make for a decentralised (JWT) server, made here with
/// nkeys: an operator, an account with JetStream that it signs, a user of
/// the account, and the system account JetStream needs. `config` is the
/// server's (the operator's JWT and the accounts', preloaded); `creds` the
/// user's `.creds` file.
pub struct Decentralized {
    pub config: String,
    pub creds: String,
}

impl Decentralized {
    pub fn new() -> Decentralized {
        let operator = nkeys::KeyPair::new_operator();
        let account = nkeys::KeyPair::new_account();
        let user = nkeys::KeyPair::new_user();
        let operator_jwt = jwt(
            &operator,
            &operator.public_key(),
            serde_json::json!({"type": "operator", "version": 2}),
        );
        let unlimited = serde_json::json!({
            "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
            "wildcards": true, "conn": -1, "leaf": -1,
            "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1,
        });
        let account_jwt = jwt(
            &operator,
            &account.public_key(),
            serde_json::json!({"type": "account", "version": 2, "limits": unlimited}),
        );
        let user_jwt = jwt(
            &account,
            &user.public_key(),
            serde_json::json!({"type": "user", "version": 2, "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1}),
        );
        // JetStream needs a system account.
        let system = nkeys::KeyPair::new_account();
        let system_jwt = jwt(
            &operator,
            &system.public_key(),
            serde_json::json!({"type": "account", "version": 2}),
        );
        Decentralized {
            config: format!(
                "operator: {operator_jwt}\nsystem_account: {sys}\nresolver: MEMORY\nresolver_preload: {{\n  {}: {account_jwt}\n  {sys}: {system_jwt}\n}}\n",
                account.public_key(),
                sys = system.public_key()
            ),
            creds: creds(&user_jwt, &user.seed().unwrap()),
        }
    }
}

/// A user's `.creds` file: its JWT and its seed.
pub fn creds(jwt: &str, seed: &str) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n************************* IMPORTANT *************************\nNKEY Seed printed below can be used to sign and prove identity.\n\n-----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
    )
}

/// A NATS JWT for `subject`, signed by `issuer`, with `nats` as its claims.
fn jwt(issuer: &nkeys::KeyPair, subject: &str, nats: serde_json::Value) -> String {
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let claims = serde_json::json!({
        "jti": format!("{}{}", now.as_nanos(), subject),
        "iat": now.as_secs(),
        "iss": issuer.public_key(),
        "name": subject,
        "sub": subject,
        "nats": nats,
    });
    let head = format!(
        "{}.{}",
        b64(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#),
        b64(claims.to_string().as_bytes())
    );
    let sig = issuer.sign(head.as_bytes()).unwrap();
    format!("{head}.{}", b64(&sig))
}
