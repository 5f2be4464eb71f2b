//! `basalt.machine.v1.MachineService`: thin handlers over [`Node`].
//!
//! Every RPC is implemented here except APPLY_MODE_TRY (UNIMPLEMENTED, says so). The
//! upgrade RPCs live in [`crate::api::upgrade`], the streaming ones (Events, Logs, Dmesg)
//! in [`crate::api::streams`], the images' translations in [`crate::api::images`];
//! services are [`crate::services`], Reset is [`Node::reset`].

use crate::api::guard::AuditNote;
use crate::api::streams::{self, Stream};
use crate::events::EventKind;
use crate::node::{ApplyMode, Node, NodeError};
use crate::services::{ServiceError, ServiceState, ServiceStatus};
use basalt_bootloader::Slot;
use basalt_proto::machine::v1::{self as pb, machine_service_server::MachineService};
use std::sync::Arc;
use tonic::{Request, Response, Status};

type Reply<T> = Result<Response<T>, Status>;

/// The MachineService handlers.
#[derive(Debug)]
pub struct MachineApi {
    node: Arc<Node>,
}

impl MachineApi {
    /// Handlers over `node`.
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
}

fn status(e: NodeError) -> Status {
    match &e {
        NodeError::InvalidConfig(_) | NodeError::InvalidRequest(_) => {
            Status::invalid_argument(e.to_string())
        }
        NodeError::Unimplemented(_) => Status::unimplemented(e.to_string()),
        NodeError::NotFound(_) => Status::not_found(e.to_string()),
        NodeError::Superseded { .. } => Status::unavailable(e.to_string()),
        NodeError::Bootloader(basalt_bootloader::BootloaderError::Refused(_))
        | NodeError::BlankSlot { .. } => Status::failed_precondition(e.to_string()),
        _ => Status::internal(e.to_string()),
    }
}

fn service_status(e: ServiceError) -> Status {
    match &e {
        ServiceError::NotFound(_) => Status::not_found(e.to_string()),
        ServiceError::Invalid { .. } | ServiceError::Config(_) => {
            Status::failed_precondition(e.to_string())
        }
        ServiceError::Timeout { .. } => Status::deadline_exceeded(e.to_string()),
        _ => Status::internal(e.to_string()),
    }
}

fn service_info(s: &ServiceStatus) -> pb::ServiceInfo {
    let state = match s.state {
        ServiceState::Waiting => pb::ServiceState::Waiting,
        ServiceState::Starting => pb::ServiceState::Starting,
        ServiceState::Running => pb::ServiceState::Running,
        ServiceState::Stopping => pb::ServiceState::Stopping,
        ServiceState::Stopped => pb::ServiceState::Stopped,
        // Backoff: exited with an error, not restarted yet (the message says when).
        ServiceState::Backoff | ServiceState::Failed => pb::ServiceState::Failed,
    };
    pb::ServiceInfo {
        id: s.name.clone(),
        state: state as i32,
        healthy: s.healthy,
        pid: s.pid,
        restarts: s.restarts,
        since: Some(crate::timefmt::to_timestamp(s.since)),
        message: if s.state == ServiceState::Backoff {
            format!("backoff: {}", s.message)
        } else {
            s.message.clone()
        },
    }
}

fn describe(s: &ServiceStatus) -> String {
    format!("{}: {} ({})", s.name, s.state.name(), s.message)
}

fn slot(s: Option<Slot>) -> i32 {
    (match s {
        None => pb::Slot::Unspecified,
        Some(Slot::A) => pb::Slot::A,
        Some(Slot::B) => pb::Slot::B,
    }) as i32
}

fn mode_to_proto(m: ApplyMode) -> i32 {
    (match m {
        ApplyMode::Auto => pb::ApplyMode::Auto,
        ApplyMode::NoReboot => pb::ApplyMode::NoReboot,
        ApplyMode::Reboot => pb::ApplyMode::Reboot,
        ApplyMode::Staged => pb::ApplyMode::Staged,
        ApplyMode::Try { .. } => pb::ApplyMode::Try,
    }) as i32
}

/// Runs blocking observation code off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::observe::ObserveError> + Send + 'static,
) -> Reply<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("task: {e}")))?
        .map(Response::new)
        .map_err(|e| Status::internal(e.to_string()))
}

#[tonic::async_trait]
impl MachineService for MachineApi {
    async fn version(&self, _request: Request<pb::VersionRequest>) -> Reply<pb::VersionResponse> {
        let mode = self.node.api.current();
        let machine_id = match &mode.kind {
            crate::api::ModeKind::Secure { machine_id, .. } => machine_id.clone(),
            crate::api::ModeKind::Maintenance { .. } => String::new(),
        };
        // The release and board of the booted slot where the node knows them (the upgrade
        // target: from the slot on a node, from --dev-version/--dev-board in dev mode).
        let (version, board) = match self.node.upgrade.get() {
            Some(engine) => (
                engine.target().booted_version.clone(),
                engine.target().board.clone(),
            ),
            None => (
                env!("CARGO_PKG_VERSION").to_string(),
                if self.node.dev { "dev" } else { "" }.to_string(),
            ),
        };
        Ok(Response::new(pb::VersionResponse {
            version,
            git_commit: option_env!("BASALT_GIT_COMMIT").unwrap_or("").to_string(),
            board,
            arch: std::env::consts::ARCH.to_string(),
            maintenance: machine_id.is_empty(),
            machine_id,
        }))
    }

    async fn apply_configuration(
        &self,
        request: Request<pb::ApplyConfigurationRequest>,
    ) -> Reply<pb::ApplyConfigurationResponse> {
        let r = request.get_ref();
        let mode = match pb::ApplyMode::try_from(r.mode) {
            Ok(pb::ApplyMode::Unspecified | pb::ApplyMode::Auto) => ApplyMode::Auto,
            Ok(pb::ApplyMode::NoReboot) => ApplyMode::NoReboot,
            Ok(pb::ApplyMode::Reboot) => ApplyMode::Reboot,
            Ok(pb::ApplyMode::Staged) => ApplyMode::Staged,
            Ok(pb::ApplyMode::Try) => ApplyMode::Try {
                timeout: match &r.try_timeout {
                    None => crate::node::DEFAULT_TRY_TIMEOUT,
                    Some(d) => std::time::Duration::try_from(*d).map_err(|_| {
                        Status::invalid_argument(format!("try_timeout {d:?} is negative"))
                    })?,
                },
            },
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "unknown apply mode {}",
                    r.mode
                )));
            }
        };
        // The configuration holds private keys: only its size and hash are audited.
        AuditNote::set(
            &request,
            format!(
                "config {} bytes sha256={} mode={mode:?} dry_run={}",
                r.data.len(),
                crate::api::tls::sha256_hex(&r.data),
                r.dry_run
            ),
        );
        let accepted_in = request
            .extensions()
            .get::<crate::api::tls::ConnInfo>()
            .map(|c| c.generation);
        let outcome = self
            .node
            .apply_config(&r.data, mode, r.dry_run, accepted_in)
            .await
            .map_err(status)?;
        if !r.dry_run {
            self.node
                .events
                .publish(EventKind::Config, "config", outcome.message.clone());
        }
        Ok(Response::new(pb::ApplyConfigurationResponse {
            mode: mode_to_proto(outcome.mode),
            warnings: outcome.warnings,
            diff: outcome.diff,
            message: outcome.message,
            version: outcome.version,
            reboot: outcome.reboot,
        }))
    }

    async fn get_configuration(
        &self,
        _request: Request<pb::GetConfigurationRequest>,
    ) -> Reply<pb::GetConfigurationResponse> {
        let (current, staged) = self.node.get_config().map_err(status)?;
        Ok(Response::new(pb::GetConfigurationResponse {
            data: current.data,
            version: current.version,
            applied_at: Some(crate::timefmt::to_timestamp(current.applied_at)),
            staged: staged.unwrap_or_default(),
        }))
    }

    async fn reboot(&self, request: Request<pb::RebootRequest>) -> Reply<pb::RebootResponse> {
        AuditNote::set(&request, format!("force={}", request.get_ref().force));
        let message = if self.node.host.is_simulated() {
            "rebooting (dev mode: recorded, not performed)"
        } else {
            "rebooting"
        };
        self.node.events.publish(EventKind::Power, "node", message);
        self.node.stop_services(request.get_ref().force).await;
        self.node.host.reboot().map_err(|e| status(e.into()))?;
        Ok(Response::new(pb::RebootResponse {
            message: message.into(),
        }))
    }

    async fn shutdown(&self, request: Request<pb::ShutdownRequest>) -> Reply<pb::ShutdownResponse> {
        AuditNote::set(&request, format!("force={}", request.get_ref().force));
        let message = if self.node.host.is_simulated() {
            "shutting down (dev mode: recorded, not performed)"
        } else {
            "shutting down"
        };
        self.node.events.publish(EventKind::Power, "node", message);
        self.node.stop_services(request.get_ref().force).await;
        self.node.host.shutdown().map_err(|e| status(e.into()))?;
        Ok(Response::new(pb::ShutdownResponse {
            message: message.into(),
        }))
    }

    async fn reset(&self, request: Request<pb::ResetRequest>) -> Reply<pb::ResetResponse> {
        let r = request.get_ref();
        AuditNote::set(
            &request,
            format!(
                "wipe_state={} wipe_data={} shutdown={}",
                r.wipe_state, r.wipe_data, r.shutdown
            ),
        );
        let message = self
            .node
            .reset(crate::node_services::ResetRequest {
                wipe_state: r.wipe_state,
                wipe_data: r.wipe_data,
                shutdown: r.shutdown,
            })
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ResetResponse { message }))
    }

    async fn boot_status(
        &self,
        _request: Request<pb::BootStatusRequest>,
    ) -> Reply<pb::BootStatusResponse> {
        let st = self.node.boot_status().map_err(status)?;
        Ok(Response::new(pb::BootStatusResponse {
            booted: slot(st.booted),
            next_boot: slot(st.next_boot()),
            order: st.order.iter().map(|s| slot(Some(*s))).collect(),
            slots: st
                .slots
                .iter()
                .map(|s| pb::SlotStatus {
                    slot: slot(Some(s.slot)),
                    bootable: s.bootable,
                    tries_left: s.tries_left,
                })
                .collect(),
            committed: st.committed,
            trial: slot(st.trial),
            last_failed: slot(st.last_failed),
            backend: self.node.boot_backend.clone(),
        }))
    }

    async fn rollback(&self, request: Request<pb::RollbackRequest>) -> Reply<pb::RollbackResponse> {
        let reboot = request.get_ref().reboot;
        AuditNote::set(&request, format!("reboot={reboot}"));
        let next = self.node.rollback(reboot).map_err(status)?;
        Ok(Response::new(pb::RollbackResponse {
            next_boot: slot(Some(next)),
            rebooting: reboot,
        }))
    }

    async fn service_list(
        &self,
        _request: Request<pb::ServiceListRequest>,
    ) -> Reply<pb::ServiceListResponse> {
        let services = self.node.services.list().iter().map(service_info).collect();
        Ok(Response::new(pb::ServiceListResponse { services }))
    }

    async fn service_start(
        &self,
        request: Request<pb::ServiceStartRequest>,
    ) -> Reply<pb::ServiceStartResponse> {
        let id = &request.get_ref().id;
        AuditNote::set(&request, format!("service={id}"));
        let s = self.node.services.start(id).await.map_err(service_status)?;
        Ok(Response::new(pb::ServiceStartResponse {
            message: describe(&s),
        }))
    }

    async fn service_stop(
        &self,
        request: Request<pb::ServiceStopRequest>,
    ) -> Reply<pb::ServiceStopResponse> {
        let id = &request.get_ref().id;
        AuditNote::set(&request, format!("service={id}"));
        let s = self.node.services.stop(id).await.map_err(service_status)?;
        Ok(Response::new(pb::ServiceStopResponse {
            message: describe(&s),
        }))
    }

    async fn service_restart(
        &self,
        request: Request<pb::ServiceRestartRequest>,
    ) -> Reply<pb::ServiceRestartResponse> {
        let id = &request.get_ref().id;
        AuditNote::set(&request, format!("service={id}"));
        let s = self
            .node
            .services
            .restart(id)
            .await
            .map_err(service_status)?;
        Ok(Response::new(pb::ServiceRestartResponse {
            message: describe(&s),
        }))
    }

    async fn image_list(
        &self,
        _request: Request<pb::ImageListRequest>,
    ) -> Reply<pb::ImageListResponse> {
        Ok(Response::new(crate::api::images::list(&self.node).await?))
    }

    async fn image_remove(
        &self,
        request: Request<pb::ImageRemoveRequest>,
    ) -> Reply<pb::ImageRemoveResponse> {
        Ok(Response::new(
            crate::api::images::remove(&self.node, &request).await?,
        ))
    }

    async fn image_prune(
        &self,
        request: Request<pb::ImagePruneRequest>,
    ) -> Reply<pb::ImagePruneResponse> {
        Ok(Response::new(
            crate::api::images::prune(&self.node, &request).await?,
        ))
    }

    async fn image_import(
        &self,
        request: Request<tonic::Streaming<pb::ImageImportChunk>>,
    ) -> Reply<pb::ImageImportResponse> {
        Ok(Response::new(
            crate::api::images::import(&self.node, request).await?,
        ))
    }

    async fn image_import_status(
        &self,
        request: Request<pb::ImageImportStatusRequest>,
    ) -> Reply<pb::ImageImportStatusResponse> {
        Ok(Response::new(crate::api::images::import_status(
            &self.node, &request,
        )?))
    }

    type LogsStream = Stream<pb::LogEntry>;

    async fn logs(&self, request: Request<pb::LogsRequest>) -> Reply<Self::LogsStream> {
        let r = request.get_ref();
        AuditNote::set(
            &request,
            format!(
                "service={} tail={} follow={}",
                r.service, r.tail_lines, r.follow
            ),
        );
        if r.service == "machined" {
            return Ok(Response::new(streams::logs(
                "machined",
                crate::machined_log(),
                r,
            )));
        }
        let ring = self
            .node
            .services
            .logs(&r.service)
            .map_err(service_status)?;
        Ok(Response::new(streams::logs(&r.service, &ring, r)))
    }

    type DmesgStream = Stream<pb::KernelLogEntry>;

    async fn dmesg(&self, request: Request<pb::DmesgRequest>) -> Reply<Self::DmesgStream> {
        let r = request.get_ref();
        AuditNote::set(&request, format!("tail={} follow={}", r.tail, r.follow));
        let rx = crate::kmsg::spawn_reader(
            std::path::Path::new(crate::kmsg::KMSG),
            r.tail as usize,
            r.follow,
        )
        .map_err(|e| {
            if e.is_permission() {
                Status::failed_precondition(format!(
                    "{e} (machined may not read the kernel log here: in dev mode run it as root or set kernel.dmesg_restrict=0)"
                ))
            } else {
                Status::unavailable(e.to_string())
            }
        })?;
        Ok(Response::new(streams::dmesg(rx)))
    }

    type EventsStream = Stream<pb::Event>;

    async fn events(&self, request: Request<pb::EventsRequest>) -> Reply<Self::EventsStream> {
        let r = request.get_ref();
        AuditNote::set(
            &request,
            format!(
                "tail={} after_id={} follow={}",
                r.tail, r.after_id, r.follow
            ),
        );
        Ok(Response::new(streams::events(&self.node.events, r)))
    }

    async fn stats(&self, _request: Request<pb::StatsRequest>) -> Reply<pb::StatsResponse> {
        let node = self.node.clone();
        blocking(move || node.observer.stats()).await
    }

    async fn processes(
        &self,
        _request: Request<pb::ProcessesRequest>,
    ) -> Reply<pb::ProcessesResponse> {
        let node = self.node.clone();
        blocking(move || node.observer.processes()).await
    }

    async fn mounts(&self, _request: Request<pb::MountsRequest>) -> Reply<pb::MountsResponse> {
        blocking(crate::observe::mounts).await
    }

    async fn disks(&self, _request: Request<pb::DisksRequest>) -> Reply<pb::DisksResponse> {
        blocking(|| crate::observe::disks_in(std::path::Path::new("/sys/block"))).await
    }

    // The upgrade RPCs live in `api/upgrade.rs`.

    async fn upgrade(
        &self,
        request: Request<tonic::Streaming<pb::UpgradeChunk>>,
    ) -> Reply<pb::UpgradeResponse> {
        crate::api::upgrade::upgrade(&self.node, request).await
    }

    type UpgradeFromUrlStream = crate::api::upgrade::ProgressStream;

    async fn upgrade_from_url(
        &self,
        request: Request<pb::UpgradeFromUrlRequest>,
    ) -> Reply<Self::UpgradeFromUrlStream> {
        crate::api::upgrade::upgrade_from_url(&self.node, request).await
    }

    async fn upgrade_status(
        &self,
        _request: Request<pb::UpgradeStatusRequest>,
    ) -> Reply<pb::UpgradeStatusResponse> {
        crate::api::upgrade::upgrade_status_rpc(&self.node)
    }

    async fn upgrade_plan(
        &self,
        request: Request<pb::UpgradePlanRequest>,
    ) -> Reply<pb::UpgradePlanResponse> {
        crate::api::upgrade::upgrade_plan(&self.node, request).await
    }
}
