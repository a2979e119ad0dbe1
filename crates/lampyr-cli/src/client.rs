//! A small blocking client for the management API.

use std::time::Duration;

use lampyr_api::ErrorBody;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach lampyr at {url} ({detail}): is `lampyr serve` running? Point --url or LAMPYR_URL at it")]
    Connect { url: String, detail: String },
    #[error("{message}")]
    Server {
        status: u16,
        code: String,
        message: String,
    },
    #[error("unexpected answer from the server: {0}")]
    Decode(String),
}

/// A server answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ClientError> {
        serde_json::from_slice(&self.body).map_err(|e| ClientError::Decode(e.to_string()))
    }
}

pub struct Client {
    agent: ureq::Agent,
    base: String,
    token: Option<String>,
}

impl Client {
    pub fn new(base: &str, token: Option<String>) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(20 * 60)))
            .build()
            .into();
        Client {
            agent,
            base: base.trim_end_matches('/').to_string(),
            token,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Whether requests go without a token.
    pub(crate) fn has_no_token(&self) -> bool {
        self.token.is_none()
    }

    /// Sends a request; any non-2xx answer becomes [`ClientError::Server`]
    /// carrying the server's error message.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Reply, ClientError> {
        let reply = self.call_raw(method, path, body)?;
        if !(200..300).contains(&reply.status) {
            return Err(server_error(&reply, self.token.is_none()));
        }
        Ok(reply)
    }

    /// Sends a request and returns whatever the server answered.
    pub fn call_raw(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Reply, ClientError> {
        self.call_with(method, path, body, &[])
    }

    /// [`Client::call_raw`] with extra request headers.
    pub fn call_with(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        headers: &[(&str, &str)],
    ) -> Result<Reply, ClientError> {
        let url = format!("{}{}", self.base, path);
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let result = match method {
            "GET" | "DELETE" => {
                let mut req = if method == "GET" {
                    self.agent.get(&url)
                } else {
                    self.agent.delete(&url)
                };
                if let Some(a) = &auth {
                    req = req.header("authorization", a);
                }
                for (k, v) in headers {
                    req = req.header(*k, *v);
                }
                req.call()
            }
            _ => {
                let mut req = if method == "PUT" {
                    self.agent.put(&url)
                } else {
                    self.agent.post(&url)
                };
                if let Some(a) = &auth {
                    req = req.header("authorization", a);
                }
                for (k, v) in headers {
                    req = req.header(*k, *v);
                }
                req.send(body.unwrap_or_default())
            }
        };
        let mut resp = result.map_err(|e| ClientError::Connect {
            url: self.base.clone(),
            detail: e.to_string(),
        })?;
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect();
        let body = resp
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_vec()
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    /// A GET whose body is read as it arrives (server-sent events).
    pub fn stream(&self, path: &str) -> Result<Box<dyn std::io::Read + Send>, ClientError> {
        let url = format!("{}{}", self.base, path);
        let mut req = self
            .agent
            .get(&url)
            .config()
            .timeout_global(None)
            .build()
            .header("accept", "text/event-stream");
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let resp = req.call().map_err(|e| ClientError::Connect {
            url: self.base.clone(),
            detail: e.to_string(),
        })?;
        let status = resp.status().as_u16();
        if !(200..300).contains(&status) {
            let mut resp = resp;
            let body = resp.body_mut().read_to_vec().unwrap_or_default();
            let reply = Reply {
                status,
                headers: Vec::new(),
                body,
            };
            return Err(server_error(&reply, self.token.is_none()));
        }
        Ok(Box::new(resp.into_body().into_reader()))
    }

    pub fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call("GET", path, None)?.json()
    }
}

pub(crate) fn server_error(reply: &Reply, no_token: bool) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(&reply.body) {
        Ok(b) => {
            let mut message = b.error.message;
            if reply.status == 401 && no_token {
                message.push_str(" (no token found: run the CLI on the server's host as the same user, pass --data-dir, or set LAMPYR_TOKEN)");
            }
            ClientError::Server {
                status: reply.status,
                code: b.error.code,
                message,
            }
        }
        Err(_) => ClientError::Server {
            status: reply.status,
            code: "http_error".into(),
            message: format!(
                "HTTP {}: {}",
                reply.status,
                String::from_utf8_lossy(&reply.body).trim()
            ),
        },
    }
}
