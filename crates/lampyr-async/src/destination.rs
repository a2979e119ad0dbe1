//! Destination records: what `on_success` and `on_failure` functions
//! receive, in Lambda's shape.

use lampyr_api::TriggerKind;
use lampyr_scheduler::NewEvent;

use crate::queue::Accept;

/// How an event ended, for its destination.
pub(crate) enum Condition {
    Success,
    RetriesExhausted,
    EventAgeExceeded,
}

impl Condition {
    fn as_str(&self) -> &'static str {
        match self {
            Condition::Success => "Success",
            Condition::RetriesExhausted => "RetriesExhausted",
            Condition::EventAgeExceeded => "EventAgeExceeded",
        }
    }
}

/// What the event's last attempt answered.
pub(crate) struct Response<'a> {
    pub(crate) version: u64,
    /// The result, or the error object (with `function_error`).
    pub(crate) payload: Option<&'a [u8]>,
    pub(crate) function_error: bool,
}

/// The record for `destination` about event `request_id` of `function`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn record(
    destination: &str,
    function: &str,
    request_id: &str,
    condition: Condition,
    attempts: u32,
    request: &[u8],
    response: Option<Response<'_>>,
) -> Accept {
    let json = |b: &[u8]| -> serde_json::Value {
        serde_json::from_slice(b)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(b).into_owned()))
    };
    let mut body = serde_json::json!({
        "version": "1.0",
        "timestamp": lampyr_store::rfc3339(std::time::SystemTime::now()),
        "requestContext": {
            "requestId": request_id,
            "functionArn": format!("lampyr:function:{function}"),
            "condition": condition.as_str(),
            "approximateInvokeCount": attempts,
        },
        "requestPayload": json(request),
    });
    if let Some(r) = response {
        let mut ctx = serde_json::json!({
            "statusCode": 200,
            "executedVersion": r.version.to_string(),
        });
        if r.function_error {
            ctx["functionError"] = "Unhandled".into();
        }
        body["responseContext"] = ctx;
        if let Some(p) = r.payload {
            body["responsePayload"] = json(p);
        }
    }
    Accept {
        event: NewEvent {
            function: destination.to_string(),
            request_id: lampyr_scheduler::new_request_id(),
            trigger: TriggerKind::Async,
            payload: serde_json::to_vec(&body).expect("a record serialises"),
            // Queued in the transaction that ends the source event: a
            // source event is never ended twice, so neither is this sent
            // twice.
            idempotency_key: None,
        },
        tick: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_have_lambdas_shape() {
        let a = record(
            "audit",
            "orders",
            "r-1",
            Condition::RetriesExhausted,
            3,
            br#"{"order":7}"#,
            Some(Response {
                version: 4,
                payload: Some(br#"{"errorType":"Error","errorMessage":"no stock"}"#),
                function_error: true,
            }),
        );
        assert_eq!(a.event.function, "audit");
        let v: serde_json::Value = serde_json::from_slice(&a.event.payload).unwrap();
        assert_eq!(v["requestContext"]["condition"], "RetriesExhausted");
        assert_eq!(v["requestContext"]["approximateInvokeCount"], 3);
        assert_eq!(v["requestPayload"]["order"], 7);
        assert_eq!(v["responseContext"]["functionError"], "Unhandled");
        assert_eq!(v["responseContext"]["executedVersion"], "4");
        assert_eq!(v["responsePayload"]["errorMessage"], "no stock");
    }
}
