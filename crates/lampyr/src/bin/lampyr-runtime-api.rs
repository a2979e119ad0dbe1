//! `lampyr-runtime-api`: the runtime process of a custom runtime's
//! instance (`runtime = "provided"`). It serves the Lambda Runtime API to
//! the function's own `bootstrap` and speaks lampyr's instance protocol;
//! see the `lampyr-runtime-api` crate. The server finds it beside `lampyr`.

#![forbid(unsafe_code)]

fn main() {
    lampyr_runtime_api::main()
}
