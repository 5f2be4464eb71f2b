//! The one gate in front of every service: authentication, authorization and auditing, as
//! a tower layer around tonic's router.
//!
//! For each call the [`Guard`] reads the connection's identity ([`ConnInfo`], put into the
//! request by tonic from [`PeerStream`](crate::api::tls::PeerStream)), the optional
//! `authorization: Bearer` token, and the current API mode, and asks
//! [`authz`](crate::api::authz) for a decision. A refused call never reaches a handler: it
//! gets its status here and is audited at once. An allowed call is audited when it ends:
//! its status is read from the response headers (trailers-only responses) or trailers, so
//! streaming calls are recorded with their full duration; a stream the client drops, or a
//! call whose connection goes away before the handler answered, is recorded as CANCELLED. Handlers add a secret-free summary through [`AuditNote`].
//!
//! Limits: an audit write that fails is reported on stderr and does not fail the call (the
//! call has already happened by then).

use crate::api::authz::{self, Decision};
use crate::api::tls::ConnInfo;
use crate::api::token::token_hash_id;
use crate::api::{ApiControl, ModeKind};
use crate::audit::{AuditLog, AuditPeer, AuditRecord, code_name};
use crate::time_floor::TimeFloor;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tonic::body::Body;
use tonic::codegen::Bytes;
use tonic::{Code, Status};

/// A secret-free summary of a call, set by its handler and written to the audit log.
#[derive(Debug, Clone, Default)]
pub struct AuditNote(Arc<Mutex<String>>);

impl AuditNote {
    /// Sets the summary of the request's call (no-op outside the guard, e.g. in tests).
    pub fn set<T>(request: &tonic::Request<T>, summary: impl Into<String>) {
        if let Some(note) = request.extensions().get::<AuditNote>() {
            *note.0.lock().unwrap_or_else(|e| e.into_inner()) = summary.into();
        }
    }

    /// The note of the request's call, to update after the request was consumed (streaming
    /// handlers); `None` outside the guard.
    pub fn of<T>(request: &tonic::Request<T>) -> Option<AuditNote> {
        request.extensions().get::<AuditNote>().cloned()
    }

    /// Replaces the summary.
    pub fn replace(&self, summary: impl Into<String>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = summary.into();
    }

    fn get(&self) -> String {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The tower layer installing a [`Guard`] in front of the router.
#[derive(Clone)]
pub struct GuardLayer {
    control: Arc<ApiControl>,
    audit: Arc<AuditLog>,
    floor: Arc<TimeFloor>,
}

impl GuardLayer {
    /// A layer deciding with `control`'s current mode, refusing bearer tokens while the
    /// clock is before `floor`, and recording into `audit`.
    pub fn new(control: Arc<ApiControl>, audit: Arc<AuditLog>, floor: Arc<TimeFloor>) -> Self {
        Self {
            control,
            audit,
            floor,
        }
    }
}

impl<S> tower::Layer<S> for GuardLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Guard<S> {
        Guard {
            inner,
            control: self.control.clone(),
            audit: self.audit.clone(),
            floor: self.floor.clone(),
        }
    }
}

/// The service checking and auditing every call before `S` (tonic's router) sees it.
#[derive(Clone)]
pub struct Guard<S> {
    inner: S,
    control: Arc<ApiControl>,
    audit: Arc<AuditLog>,
    floor: Arc<TimeFloor>,
}

/// The audit entry of a call in progress, written once by [`Pending::finish`].
struct Pending {
    audit: Arc<AuditLog>,
    record: AuditRecord,
    started: Instant,
    note: AuditNote,
}

impl Pending {
    fn finish(mut self, code: Code) {
        self.record.code = code as i32;
        self.record.result = code_name(code).to_string();
        self.record.duration_ms = self.started.elapsed().as_millis() as u64;
        self.record.summary = self.note.get();
        if let Err(e) = self.audit.append(&self.record) {
            eprintln!("machined: audit: {e}");
        }
    }
}

/// Records a call as CANCELLED when its future is dropped before the handler answered
/// (the connection went away during a unary or client-streaming call).
struct UntilAnswered(Option<Pending>);

impl Drop for UntilAnswered {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            p.finish(Code::Cancelled);
        }
    }
}

fn bearer(headers: &http::HeaderMap) -> Result<Option<String>, String> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| "authorization metadata is not ASCII".to_string())?;
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() => {
            Ok(Some(token.trim().to_string()))
        }
        _ => Err("authorization metadata is not `Bearer <token>`".to_string()),
    }
}

impl<S> Guard<S> {
    /// Decides a call; returns the decision and the id of the token presented, if any.
    fn authorize(
        &self,
        rpc: &str,
        conn: Option<&ConnInfo>,
        headers: &http::HeaderMap,
    ) -> (Decision, String) {
        let mode = self.control.current();
        let token = bearer(headers);
        let token_id = match &token {
            Ok(Some(t)) => token_hash_id(t),
            _ => String::new(),
        };
        let Some(conn) = conn else {
            let d = Decision::deny(Code::Internal, "connection has no TLS identity".into());
            return (d, token_id);
        };
        if conn.generation != mode.generation {
            let d = Decision::deny(
                Code::Unavailable,
                "the API listener was restarted with new TLS settings since this connection \
                 was opened: reconnect"
                    .into(),
            );
            return (d, token_id);
        }
        match &mode.kind {
            ModeKind::Maintenance { .. } => (authz::decide_maintenance(rpc), token_id),
            ModeKind::Secure { verifier, .. } => {
                let Some(identity) = &conn.identity else {
                    let why = conn
                        .identity_error
                        .clone()
                        .unwrap_or_else(|| "no client certificate".into());
                    return (Decision::deny(Code::Unauthenticated, why), token_id);
                };
                match token {
                    Err(why) => (Decision::deny(Code::Unauthenticated, why), token_id),
                    Ok(None) => (
                        authz::decide_roles(rpc, &identity.subject, &identity.roles),
                        token_id,
                    ),
                    Ok(Some(t)) => {
                        let now = SystemTime::now()
                            .duration_since(UNIX_EPOCH)
                            .map(|d| d.as_secs())
                            .unwrap_or(0);
                        let floor = self.floor.get();
                        if now < floor {
                            let why = format!(
                                "bearer token refused: the node's clock ({now}) is before its time floor ({floor}), so expiry cannot be checked; use a client certificate until the clock is synced"
                            );
                            return (Decision::deny(Code::Unauthenticated, why), token_id);
                        }
                        match verifier.verify(&t, now) {
                            Ok(v) => (
                                authz::decide_certificate_and_token(
                                    rpc,
                                    (&identity.subject, &identity.roles),
                                    (&v.id, &v.scopes),
                                ),
                                v.id,
                            ),
                            Err(e) => (
                                Decision::deny(
                                    Code::Unauthenticated,
                                    format!("bearer token rejected: {e}"),
                                ),
                                token_id,
                            ),
                        }
                    }
                }
            }
        }
    }
}

type GuardFuture<E> =
    Pin<Box<dyn std::future::Future<Output = Result<http::Response<Body>, E>> + Send>>;

impl<S> tower::Service<http::Request<Body>> for Guard<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = GuardFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        let started = Instant::now();
        let rpc = req.uri().path().to_string();
        let conn = req.extensions().get::<ConnInfo>().cloned();
        let (decision, token_id) = self.authorize(&rpc, conn.as_ref(), req.headers());
        // Handlers never see the token.
        req.headers_mut().remove(http::header::AUTHORIZATION);
        let note = AuditNote::default();
        req.extensions_mut().insert(note.clone());
        let identity = conn.as_ref().and_then(|c| c.identity.clone());
        let pending = Pending {
            audit: self.audit.clone(),
            record: AuditRecord {
                time: crate::timefmt::rfc3339(SystemTime::now()),
                peer: AuditPeer {
                    subject: identity
                        .as_ref()
                        .map(|i| i.subject.clone())
                        .unwrap_or_default(),
                    fingerprint: identity
                        .as_ref()
                        .map(|i| i.fingerprint.clone())
                        .unwrap_or_default(),
                    address: conn
                        .as_ref()
                        .and_then(|c| c.remote)
                        .map(|a| a.to_string())
                        .unwrap_or_default(),
                },
                token_id,
                rpc,
                allowed: decision.allowed,
                reason: decision.reason.clone(),
                summary: String::new(),
                result: String::new(),
                code: 0,
                duration_ms: 0,
            },
            started,
            note,
        };
        if !decision.allowed {
            pending.finish(decision.code);
            let status = Status::new(decision.code, decision.reason);
            return Box::pin(async move { Ok(status.into_http()) });
        }
        // The router is ready (poll_ready); call that instance and keep a fresh clone.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let mut answered = UntilAnswered(Some(pending));
            let response = inner.call(req).await?;
            let Some(pending) = answered.0.take() else {
                unreachable!("the pending record is taken once")
            };
            if let Some(status) = Status::from_header_map(response.headers()) {
                // Trailers-only response: the call is over.
                pending.finish(status.code());
                return Ok(response);
            }
            let (parts, body) = response.into_parts();
            let body = AuditedBody {
                inner: body,
                pending: Some(pending),
            };
            Ok(http::Response::from_parts(parts, Body::new(body)))
        })
    }
}

/// A response body that writes the call's audit entry when the trailers go out.
struct AuditedBody {
    inner: Body,
    pending: Option<Pending>,
}

impl AuditedBody {
    fn finish(&mut self, code: Code) {
        if let Some(p) = self.pending.take() {
            p.finish(code);
        }
    }
}

impl http_body::Body for AuditedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(trailers) = f.trailers_ref() {
                    let code = Status::from_header_map(trailers)
                        .map(|s| s.code())
                        .unwrap_or(Code::Unknown);
                    this.finish(code);
                }
            }
            Some(Err(status)) => this.finish(status.code()),
            None => this.finish(Code::Unknown),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for AuditedBody {
    fn drop(&mut self) {
        // The client went away before the call ended (e.g. a followed stream was closed).
        self.finish(Code::Cancelled);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_header_forms() {
        let mut h = http::HeaderMap::new();
        assert_eq!(bearer(&h), Ok(None));
        h.insert("authorization", "Bearer abc.def.ghi".parse().unwrap());
        assert_eq!(bearer(&h), Ok(Some("abc.def.ghi".into())));
        h.insert("authorization", "Basic dXNlcjpwdw==".parse().unwrap());
        assert!(bearer(&h).is_err());
    }
}
