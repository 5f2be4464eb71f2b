//! `basalt.audit.v1.AuditService`: reads the audit log back.

use crate::api::guard::AuditNote;
use crate::audit::{AuditLog, AuditQuery, AuditRecord};
use basalt_proto::audit::v1::{
    AuditEntry, Caller, QueryRequest, QueryResponse, audit_service_server::AuditService,
};
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// Default and maximum number of entries per query.
pub const DEFAULT_LIMIT: usize = 100;
/// The most entries one query returns.
pub const MAX_LIMIT: usize = 1000;

/// The AuditService handlers.
#[derive(Debug)]
pub struct AuditApi {
    audit: Arc<AuditLog>,
}

impl AuditApi {
    /// Handlers reading `audit`.
    pub fn new(audit: Arc<AuditLog>) -> Self {
        Self { audit }
    }
}

fn to_proto(r: AuditRecord) -> AuditEntry {
    AuditEntry {
        time: crate::timefmt::parse_rfc3339(&r.time)
            .ok()
            .map(crate::timefmt::to_timestamp),
        caller: Some(Caller {
            subject: r.peer.subject,
            fingerprint: r.peer.fingerprint,
            address: r.peer.address,
            token_id: r.token_id,
        }),
        rpc: r.rpc,
        allowed: r.allowed,
        reason: r.reason,
        summary: r.summary,
        result: r.result,
        code: r.code,
        duration_ms: r.duration_ms,
    }
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn query(
        &self,
        request: Request<QueryRequest>,
    ) -> Result<Response<QueryResponse>, Status> {
        let q = request.get_ref();
        let limit = match q.limit as usize {
            0 => DEFAULT_LIMIT,
            n => n.min(MAX_LIMIT),
        };
        let query = AuditQuery {
            since: q.since.as_ref().map(crate::timefmt::from_timestamp),
            rpc: Some(q.rpc.clone()).filter(|s| !s.is_empty()),
            result: Some(q.result.clone()).filter(|s| !s.is_empty()),
            limit,
        };
        AuditNote::set(
            &request,
            format!(
                "rpc={:?} result={:?} limit={limit} since={}",
                q.rpc,
                q.result,
                q.since.is_some()
            ),
        );
        let audit = self.audit.clone();
        let (records, truncated) = tokio::task::spawn_blocking(move || audit.query(&query))
            .await
            .map_err(|e| Status::internal(format!("audit query task: {e}")))?
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(QueryResponse {
            entries: records.into_iter().map(to_proto).collect(),
            truncated,
        }))
    }
}
