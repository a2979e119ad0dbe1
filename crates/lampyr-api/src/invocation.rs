//! The vocabulary of one invocation: how it was triggered, how it started,
//! how it ended, and the error object a runtime reports.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

macro_rules! names {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant,)*
        }

        impl $name {
            /// Every value, in order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// The value's name, as the API and the records write it.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // `pad`, so that a width (a CLI table's column) applies.
                f.pad(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, String> {
                $name::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| {
                        format!(
                            "'{s}' is not one of {}",
                            $name::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", ")
                        )
                    })
            }
        }
    };
}

names! {
    /// What called a function.
    TriggerKind {
        /// Its URL, `/fn/NAME` (the HTTP trigger).
        Http = "http",
        /// The management API's invoke (`lampyr invoke`).
        Api = "api",
        /// An asynchronous event, from the event queue.
        Async = "async",
        /// A timer's firing (an asynchronous event of its own).
        Timer = "timer",
        /// A message from a NATS JetStream stream.
        Nats = "nats",
        /// An object-storage (S3-format) bucket notification.
        Storage = "storage",
        /// A row change from a PostgreSQL database (logical decoding).
        Postgres = "postgres",
    }
}

names! {
    /// How an invocation found its instance.
    StartKind {
        /// A new instance was started for it.
        Cold = "cold",
        /// A pre-started generic instance was taken from a pool.
        Pooled = "pooled",
        /// An instance already running served it.
        Warm = "warm",
    }
}

names! {
    /// How an invocation ended.
    Status {
        Ok = "ok",
        /// The handler threw, or its initialisation failed.
        Error = "error",
        Timeout = "timeout",
        OutOfMemory = "out_of_memory",
        /// The instance died, or could not be started.
        Crashed = "crashed",
        /// Refused at the function's limits (429).
        Throttled = "throttled",
    }
}

/// The error object a runtime reports for a handler that threw or a module
/// that failed to load, as Lambda's runtimes do. Read leniently: what is
/// missing is empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionError {
    #[serde(rename = "errorType", default)]
    pub error_type: String,
    #[serde(rename = "errorMessage", default)]
    pub error_message: String,
    #[serde(rename = "stackTrace", default, deserialize_with = "stack")]
    pub stack_trace: Vec<String>,
}

/// A stack trace: a list of lines, or a single string, or nothing usable.
fn stack<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    Ok(match v {
        serde_json::Value::Array(items) => items
            .into_iter()
            .map(|i| match i {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            })
            .collect(),
        serde_json::Value::String(s) => vec![s],
        _ => Vec::new(),
    })
}

impl FunctionError {
    /// The error object in `bytes` (JSON from a runtime); anything that is
    /// not one becomes an error of type `fallback_type` with the bytes as
    /// its message.
    pub fn parse(bytes: &[u8], fallback_type: &str) -> FunctionError {
        match serde_json::from_slice::<FunctionError>(bytes) {
            Ok(mut e) => {
                if e.error_type.is_empty() {
                    e.error_type = fallback_type.to_string();
                }
                e
            }
            Err(_) => FunctionError {
                error_type: fallback_type.to_string(),
                error_message: String::from_utf8_lossy(bytes).into_owned(),
                stack_trace: Vec::new(),
            },
        }
    }

    /// `type: message`.
    pub fn summary(&self) -> String {
        format!("{}: {}", self.error_type, self.error_message)
    }

    /// The error as people read it: the type and message, then the stack,
    /// a frame a line, without the runtime's own frames (the bootstrap
    /// loading the module, the import machinery), which say nothing about
    /// the function's code.
    pub fn describe(&self) -> String {
        let own = |f: &&String| {
            [
                "/var/runtime/",
                "(node:",
                "at node:",
                "<frozen importlib",
                "/importlib/__init__.py",
            ]
            .iter()
            .any(|p| f.contains(p))
        };
        let theirs: Vec<&String> = self.stack_trace.iter().filter(|f| !own(f)).collect();
        let shown: Vec<&String> = if theirs.is_empty() {
            self.stack_trace.iter().collect()
        } else {
            theirs
        };
        let mut out = self.summary();
        for frame in shown {
            for line in frame.lines().filter(|l| !l.trim().is_empty()) {
                out.push_str("\n    ");
                out.push_str(line.trim_end());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_as_the_records_write_them() {
        for s in Status::ALL {
            assert_eq!(s.as_str().parse::<Status>().unwrap(), *s);
            assert_eq!(serde_json::to_string(s).unwrap(), format!("\"{s}\""));
        }
        assert_eq!(
            "out_of_memory".parse::<Status>().unwrap(),
            Status::OutOfMemory
        );
        let e = "nope".parse::<Status>().unwrap_err();
        assert!(e.contains("ok, error, timeout"), "{e}");
        assert_eq!(
            serde_json::from_str::<TriggerKind>("\"http\"").unwrap(),
            TriggerKind::Http
        );
        assert_eq!(StartKind::Pooled.to_string(), "pooled");
        assert_eq!(
            format!("{:<6}|{:>7}|", StartKind::Warm, TriggerKind::Async),
            "warm  |  async|"
        );
    }

    #[test]
    fn error_objects_are_read_leniently() {
        let e = FunctionError::parse(
            br#"{"errorType":"TypeError","errorMessage":"x is undefined","stackTrace":["at f (/var/task/index.js:2:3)","at run (/var/runtime/bootstrap.js:9:1)"]}"#,
            "Error",
        );
        assert_eq!(e.summary(), "TypeError: x is undefined");
        assert_eq!(
            e.describe(),
            "TypeError: x is undefined\n    at f (/var/task/index.js:2:3)"
        );
        let e = FunctionError::parse(b"not json", "Runtime.InitError");
        assert_eq!(e.summary(), "Runtime.InitError: not json");
        let e = FunctionError::parse(br#"{"errorMessage":"m","stackTrace":"one"}"#, "Error");
        assert_eq!((e.error_type.as_str(), e.stack_trace.len()), ("Error", 1));
    }
}
