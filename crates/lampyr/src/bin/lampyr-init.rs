//! `lampyr-init`: the first process of every jailed instance, and nothing
//! else.
//!
//! `lampyr __sandbox-init` does the same work; this executable exists
//! because every sandboxed cold start executes it, and a binary without the
//! server, the CLI and their dependencies loads faster than `lampyr` itself.
//! The server uses it when it is installed beside `lampyr`.

#![forbid(unsafe_code)]

fn main() {
    lampyr_server::sandbox_init()
}
