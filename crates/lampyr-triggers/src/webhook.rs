//! Triggers whose source calls lampyr over HTTP (an object store's bucket
//! notifications, ...): the HTTP edge serves
//! `POST /sources/KIND/FUNCTION/TRIGGER` and hands each request to the
//! [`Webhook`] registered for `KIND`, so that the edge needs nothing of the
//! source and the source nothing of HTTP serving.

use futures_util::future::BoxFuture;

/// One request to a source's webhook.
#[derive(Debug, Clone)]
pub struct WebhookRequest {
    pub function: String,
    pub trigger: String,
    /// The `Authorization` header, as sent.
    pub authorization: Option<String>,
    /// The URL's query string, if any.
    pub query: Option<String>,
    pub body: Vec<u8>,
}

/// The answer: a status and a JSON body.
#[derive(Debug, Clone)]
pub struct WebhookReply {
    pub status: u16,
    pub body: Vec<u8>,
    /// Seconds after which the sender should try again (`Retry-After`).
    pub retry_after: Option<u64>,
}

/// A trigger that takes its events from webhook requests.
pub trait Webhook: Send + Sync + 'static {
    fn receive(&self, req: WebhookRequest) -> BoxFuture<'static, WebhookReply>;
}
