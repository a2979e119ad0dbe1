//! The HTTP edge: one listener serving the HTTP trigger (`/fn/NAME`), the
//! management API and the dashboard, run as the HTTP trigger of the
//! trigger layer ([`HttpTrigger`]).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::Request;
use axum::response::Response;
use axum::Router;
use futures_util::future::BoxFuture;
use lampyr_api::{FunctionSpec, TriggerKind};
use lampyr_triggers::{Context, Trigger, TriggerError};
use parking_lot::Mutex;

use crate::{listen, router, trigger, AppState};

/// Serves `app` on `listener` until `shutdown` resolves, then shuts down
/// gracefully (see [`listen`]): live log streams end, requests in flight
/// get `limits.shutdown_timeout` to finish.
async fn serve(
    listener: tokio::net::TcpListener,
    app: AppState,
    limits: listen::ConnLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = router(app.clone());
    let stop = app.stopping.clone();
    listen::serve(
        listener,
        limits,
        |peer| Edge {
            app: app.clone(),
            router: router.clone(),
            peer,
        },
        shutdown,
        move |in_flight| {
            tracing::info!(in_flight, "shutting down, {in_flight} request(s) in flight");
            let _ = stop.send(true);
        },
    )
    .await
}

/// One connection's service. A trigger request goes straight to the
/// trigger, the request path's one routing decision made by a prefix test:
/// the router's matching, parameter extraction and boxed layers cost
/// allocations and CPU on every request. Everything else, and a trigger path
/// with percent-escapes (which the router decodes), goes through the
/// router, which has the same trigger routes.
#[derive(Clone)]
struct Edge {
    app: AppState,
    router: Router,
    peer: SocketAddr,
}

impl tower::Service<Request> for Edge {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = futures_util::future::BoxFuture<'static, Result<Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        if let Some((name, rest)) = trigger::direct_route(req.uri().path()) {
            let (name, rest) = (name.to_string(), rest.to_string());
            let (app, peer) = (self.app.clone(), self.peer);
            return Box::pin(async move { Ok(trigger::handle(app, name, rest, peer, req).await) });
        }
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(self.peer));
        Box::pin(tower::ServiceExt::oneshot(self.router.clone(), req))
    }
}

/// The HTTP trigger, with the rest of the HTTP edge on its listener. It
/// starts serving when the trigger layer starts it and, at shutdown, stops
/// accepting, ends live log streams and gives requests in flight
/// [`listen::ConnLimits::shutdown_timeout`] to finish.
pub struct HttpTrigger {
    app: AppState,
    limits: listen::ConnLimits,
    listener: Mutex<Option<tokio::net::TcpListener>>,
    stop: Arc<tokio::sync::Notify>,
    served: Mutex<Option<tokio::task::JoinHandle<std::io::Result<()>>>>,
    /// Set if serving ended on its own (the listener failed).
    failed: Arc<tokio::sync::Notify>,
}

impl HttpTrigger {
    pub fn new(
        app: AppState,
        listener: tokio::net::TcpListener,
        limits: listen::ConnLimits,
    ) -> HttpTrigger {
        HttpTrigger {
            app,
            limits,
            listener: Mutex::new(Some(listener)),
            stop: Arc::new(tokio::sync::Notify::new()),
            served: Mutex::new(None),
            failed: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// Resolves if the edge stops serving without being shut down (its
    /// listener failed): the server should stop then.
    pub fn failed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let failed = self.failed.clone();
        async move { failed.notified().await }
    }
}

impl Trigger for HttpTrigger {
    fn kind(&self) -> TriggerKind {
        TriggerKind::Http
    }

    fn start(&self, ctx: Context) -> Result<(), TriggerError> {
        let listener = self
            .listener
            .lock()
            .take()
            .ok_or_else(|| TriggerError::Start {
                kind: TriggerKind::Http,
                message: "started twice".into(),
            })?;
        tracing::debug!(functions = ctx.functions.len(), "HTTP trigger serving");
        let stop = self.stop.clone();
        let failed = self.failed.clone();
        let (app, limits) = (self.app.clone(), self.limits);
        *self.served.lock() = Some(tokio::spawn(async move {
            let served = serve(listener, app, limits, async move { stop.notified().await }).await;
            if let Err(e) = &served {
                tracing::error!("the HTTP listener failed: {e}");
            }
            failed.notify_one();
            served
        }));
        Ok(())
    }

    fn deployed(&self, spec: &Arc<FunctionSpec>) {
        if lampyr_triggers::uses(spec, TriggerKind::Http) {
            tracing::debug!(function = %spec.name, url = %self.app.url_of(&spec.name), "HTTP trigger");
        }
    }

    fn deleted(&self, _name: &str) {
        // Requests for a deleted function find it gone in the function
        // service: nothing is held here per function.
    }

    fn shutdown(&self) -> BoxFuture<'static, ()> {
        self.stop.notify_one();
        let served = self.served.lock().take();
        Box::pin(async move {
            if let Some(served) = served {
                let _ = served.await;
            }
        })
    }
}
