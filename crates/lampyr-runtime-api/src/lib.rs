//! `lampyr-runtime-api`: the Lambda Runtime API inside one instance, for
//! custom runtimes (`runtime = "provided"`).
//!
//! It runs as the instance's runtime process, where the Node.js and Python
//! bootstraps run for the built-in runtimes, and speaks the same instance
//! protocol on fd 3 (`docs/protocol.md`): HELLO once up; on LOAD it starts
//! the function's executable `bootstrap` (at the task root) with the Lambda
//! environment and serves it the Runtime API at `AWS_LAMBDA_RUNTIME_API`
//! (`127.0.0.1:9001`, the instance's own loopback in its private network
//! namespace); INVOKE frames become answers to `GET …/invocation/next`, and
//! what the bootstrap posts back becomes RESULT, ERROR or a stream
//! (STREAM_START / STREAM_CHUNK / STREAM_END). See `docs/custom-runtimes.md`.
//!
//! * [`host`]: the frames to and from lampyr, and the invocations between
//!   them (queued, handed out, answered).
//! * [`api`]: the Runtime API's HTTP endpoints (hyper, HTTP/1.1, chunked
//!   bodies and trailers for streamed responses).
//! * [`bootstrap`]: the function's process, its environment, and what its
//!   exit means.
//!
//! It is on every unpooled cold start of a custom runtime, so it stays
//! small: a current-thread tokio runtime, no configuration files, HELLO as
//! soon as its listener is bound (a few milliseconds from exec, see
//! `docs/custom-runtimes.md`).
#![forbid(unsafe_code)]

pub mod api;
pub mod bootstrap;
pub mod host;

use std::net::SocketAddr;
use std::sync::Arc;

/// Where the Runtime API listens unless `LAMPYR_RUNTIME_API_ADDR` says
/// otherwise: the instance's loopback, as on Lambda.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9001";

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("the protocol socket (fd 3): {0}")]
    Socket(std::io::Error),
    #[error("cannot listen for the Runtime API on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the async runtime: {0}")]
    Runtime(std::io::Error),
}

/// The program: `--probe` answers discovery (path, version, directory);
/// otherwise it serves one instance until lampyr closes its socket.
pub fn main() -> ! {
    let arg = std::env::args().nth(1);
    match arg.as_deref() {
        Some("--probe") => {
            let me = std::env::current_exe().unwrap_or_default();
            let dir = me.parent().map(|d| d.to_path_buf()).unwrap_or_default();
            println!(
                "{}\n{}\n{}",
                me.display(),
                env!("CARGO_PKG_VERSION"),
                dir.display()
            );
            std::process::exit(0)
        }
        Some("--version" | "-V") => {
            println!("lampyr-runtime-api {}", env!("CARGO_PKG_VERSION"));
            std::process::exit(0)
        }
        Some(_) => {
            eprintln!(
                "lampyr-runtime-api: the Lambda Runtime API for custom runtimes (runtime = \"provided\").\n\
                 lampyr starts it inside an instance, with its protocol socket on fd 3; it takes no arguments.\n\
                 `--probe` prints its path, version and directory; `--version` its version."
            );
            std::process::exit(2)
        }
        None => {}
    }
    let code = match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lampyr-runtime-api: {e}");
            1
        }
    };
    std::process::exit(code)
}

/// Serves one instance; returns the exit status.
pub fn run() -> Result<i32, ShimError> {
    let sock = lampyr_sandbox::take_protocol_socket().map_err(ShimError::Socket)?;
    sock.set_nonblocking(true).map_err(ShimError::Socket)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ShimError::Runtime)?;
    rt.block_on(async move {
        let sock = tokio::net::UnixStream::from_std(sock).map_err(ShimError::Socket)?;
        let addr = std::env::var("LAMPYR_RUNTIME_API_ADDR").unwrap_or_else(|_| DEFAULT_ADDR.into());
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|source| ShimError::Listen {
                addr: addr.clone(),
                source,
            })?;
        let local: SocketAddr = listener.local_addr().map_err(|source| ShimError::Listen {
            addr: addr.clone(),
            source,
        })?;
        let (reader, writer) = sock.into_split();
        let state = Arc::new(host::State::new(host::spawn_writer(writer)));
        state.hello();
        tokio::spawn(api::serve(listener, state.clone()));
        Ok(host::read_frames(reader, state, local).await)
    })
}
