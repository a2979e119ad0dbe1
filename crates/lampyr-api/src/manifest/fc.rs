//! Alibaba Cloud Function Compute's handler conventions in the manifest:
//! `handler_type` (an event handler, or FC's HTTP handler: `(req, resp,
//! context)` in Node.js, a WSGI application in Python), `initializer` (a
//! hook run once per instance before its first invocation) and
//! `initialization_timeout` (how long that hook may take).
//!
//! The runtimes' bootstraps implement the conventions; this module only
//! reads and checks the keys.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ManifestError, TriggerSpec};

/// How the function's handler is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HandlerType {
    /// `handler(event, context)`: Lambda's contract (and FC's event
    /// handlers).
    #[default]
    Event,
    /// Function Compute's HTTP handler: Node.js `handler(req, resp,
    /// context)`, Python WSGI `handler(environ, start_response)`. Only HTTP
    /// requests can call it.
    Http,
}

impl HandlerType {
    pub const NAMES: &'static [&'static str] = &["event", "http"];

    pub fn as_str(self) -> &'static str {
        match self {
            HandlerType::Event => "event",
            HandlerType::Http => "http",
        }
    }

    pub fn is_event(&self) -> bool {
        *self == HandlerType::Event
    }

    /// The manifest's `handler_type`, if it has one.
    pub(crate) fn parse(value: Option<&str>) -> Result<HandlerType, ManifestError> {
        match value {
            None | Some("event") => Ok(HandlerType::Event),
            Some("http") => Ok(HandlerType::Http),
            Some(other) => Err(ManifestError::invalid(
                "handler_type",
                format!("unknown value \"{other}\": use \"event\" (handler(event, context), the default) or \"http\" (Function Compute's HTTP handler: (req, resp, context) in Node.js, a WSGI application in Python)"),
            )),
        }
    }

    /// Refuses triggers that cannot call an HTTP handler: they bring
    /// events, not HTTP requests.
    pub(crate) fn check_triggers(self, triggers: &[TriggerSpec]) -> Result<(), ManifestError> {
        if self != HandlerType::Http {
            return Ok(());
        }
        match triggers
            .iter()
            .enumerate()
            .find(|(_, t)| !matches!(t, TriggerSpec::Http(_)))
        {
            None => Ok(()),
            Some((i, t)) => Err(ManifestError::invalid(
                &format!("triggers[{i}].type"),
                format!("a {} trigger sends events, which an HTTP handler (handler_type = \"http\") cannot take, as on Function Compute: call this function through its URL only, or give the events a function of handler_type = \"event\"", t.kind()),
            )),
        }
    }
}

/// How long an initializer may run unless the manifest says otherwise
/// (Function Compute's default).
pub const DEFAULT_INITIALIZATION_TIMEOUT: Duration = Duration::from_secs(3);
/// The longest `initialization_timeout` (Function Compute's limit).
pub const MAX_INITIALIZATION_TIMEOUT: Duration = Duration::from_secs(300);

pub(crate) fn default_initialization_timeout_ms() -> u64 {
    DEFAULT_INITIALIZATION_TIMEOUT.as_millis() as u64
}

pub(crate) fn is_default_initialization_timeout_ms(ms: &u64) -> bool {
    *ms == default_initialization_timeout_ms()
}

/// The manifest's `initializer` and `initialization_timeout`, checked: the
/// initializer is named as the handler is (`FILE.EXPORT`), and a timeout
/// needs an initializer to limit.
pub(crate) fn initializer(
    initializer: Option<String>,
    timeout: Option<&str>,
) -> Result<(Option<String>, Duration), ManifestError> {
    if let Some(i) = &initializer {
        super::validate_entry("initializer", i, "init")?;
    } else if timeout.is_some() {
        return Err(ManifestError::invalid(
            "initialization_timeout",
            "limits the initializer, and there is none: add initializer = \"FILE.EXPORT\" (e.g. \"index.init\"), or remove initialization_timeout",
        ));
    }
    let timeout = super::duration_in(
        "initialization_timeout",
        timeout,
        DEFAULT_INITIALIZATION_TIMEOUT,
        Duration::from_millis(1),
        MAX_INITIALIZATION_TIMEOUT,
    )?;
    Ok((initializer, timeout))
}

#[cfg(test)]
mod tests {
    use crate::manifest::tests::{err, MIN};
    use crate::FunctionSpec;

    #[test]
    fn handler_types_and_initializers_are_read_and_checked() {
        let s = FunctionSpec::from_toml(MIN).unwrap();
        assert!(s.handler_type.is_event());
        assert_eq!(s.initializer, None);
        assert_eq!(s.initialization_timeout_ms, 3000);
        let s = FunctionSpec::from_toml(&format!(
            "{MIN}handler_type = \"http\"\ninitializer = \"lib/setup.init\"\ninitialization_timeout = \"20s\"\n"
        ))
        .unwrap();
        assert_eq!(s.handler_type, super::HandlerType::Http);
        assert_eq!(s.initializer.as_deref(), Some("lib/setup.init"));
        assert_eq!(s.initialization_timeout_ms, 20_000);
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<FunctionSpec>(&j).unwrap(), s);
        // Defaults are not written: stored specs stay as they were.
        let j = serde_json::to_string(&FunctionSpec::from_toml(MIN).unwrap()).unwrap();
        assert!(
            !j.contains("handler_type") && !j.contains("initiali"),
            "{j}"
        );
        for (extra, want) in [
            ("handler_type = \"wsgi\"\n", "`handler_type`: unknown value \"wsgi\""),
            ("initializer = \"init\"\n", "`initializer`: \"init\" has no '.'"),
            ("initializer = \"../x.init\"\n", "`initializer`"),
            ("initializer = \"index.1\"\n", "`initializer`"),
            ("initialization_timeout = \"5s\"\n", "`initialization_timeout`: limits the initializer, and there is none"),
            ("initializer = \"index.init\"\ninitialization_timeout = \"10m\"\n", "`initialization_timeout`: 10m is out of range"),
            ("initializer = \"index.init\"\ninitialization_timeout = 5\n", "\"5s\""),
            (
                "handler_type = \"http\"\n[[triggers]]\ntype = \"http\"\n[[triggers]]\ntype = \"timer\"\ncron = \"@every 1m\"\n",
                "`triggers[1].type`: a timer trigger sends events",
            ),
        ] {
            let e = err(extra);
            assert!(e.contains(want), "{extra:?} gave {e}");
        }
    }
}
