//! Registry credentials for pulls.
//!
//! containerd's transfer service does not read credentials from a file: it asks its client.
//! A pull from a registry with `auth` in the configuration names an auth stream in its
//! resolver; whenever the registry challenges (HTTP 401 with Basic or a token service),
//! containerd sends an `AuthRequest` naming the host on that stream and machined answers
//! with the user name and password of that registry — and with no credentials for any other
//! host, so a redirect never carries them elsewhere. Credentials live in memory only: they
//! are never written to containerd's configuration, a log or an event.

use super::streams::{ClientStream, is};
use basalt_config::schema::{Registry, Secret};
use containerd_client::to_any;
use containerd_client::types::transfer::{AuthRequest, AuthResponse, AuthType};
use prost::Message;

/// Docker Hub's name in references, and the host containerd contacts for it.
const DOCKER_HUB: (&str, &str) = ("docker.io", "registry-1.docker.io");

/// The credentials of one registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullCredentials {
    /// The registry's host as references name it.
    pub host: String,
    /// The user name.
    pub username: String,
    /// The password or token (its `Debug` is redacted).
    pub password: Secret,
}

impl PullCredentials {
    /// Whether containerd contacting `host` is talking to this registry.
    fn serves(&self, host: &str) -> bool {
        host == self.host || (self.host == DOCKER_HUB.0 && host == DOCKER_HUB.1)
    }
}

/// The registries of the configuration that have credentials.
pub fn from_registries(registries: &[Registry]) -> Vec<PullCredentials> {
    registries
        .iter()
        .filter_map(|r| {
            r.auth.as_ref().map(|a| PullCredentials {
                host: r.host.clone(),
                username: a.username.clone(),
                password: a.password.clone(),
            })
        })
        .collect()
}

/// The registry host of a normalized reference (`host[:port]/path:tag`).
fn reference_host(reference: &str) -> &str {
    reference.split('/').next().unwrap_or(reference)
}

/// The credentials a pull of `reference` (normalized) needs, if its registry has any.
pub fn for_reference<'a>(
    credentials: &'a [PullCredentials],
    reference: &str,
) -> Option<&'a PullCredentials> {
    let host = reference_host(reference);
    credentials.iter().find(|c| c.host == host)
}

/// The answer to containerd's request for credentials for `request.host`.
pub fn answer(credentials: &PullCredentials, request: &AuthRequest) -> AuthResponse {
    if credentials.serves(&request.host) {
        AuthResponse {
            auth_type: AuthType::Credentials as i32,
            username: credentials.username.clone(),
            secret: credentials.password.expose().to_string(),
            expire_at: None,
        }
    } else {
        AuthResponse {
            auth_type: AuthType::None as i32,
            ..AuthResponse::default()
        }
    }
}

/// Answers every credential request containerd sends on `stream` until it closes it.
pub async fn answer_requests(stream: ClientStream, credentials: PullCredentials) {
    let ClientStream { tx, mut rx, .. } = stream;
    while let Ok(Some(any)) = rx.message().await {
        if !is::<AuthRequest>(&any) {
            continue;
        }
        // containerd waits for an answer to every request: one it cannot be read gets "no
        // credentials".
        let response = match AuthRequest::decode(any.value.as_slice()) {
            Ok(request) => answer(&credentials, &request),
            Err(_) => AuthResponse {
                auth_type: AuthType::None as i32,
                ..AuthResponse::default()
            },
        };
        if tx.send(to_any(&response)).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use basalt_config::schema::RegistryAuth;

    fn registries() -> Vec<Registry> {
        vec![
            Registry {
                host: "lab.local:5000".into(),
                ca: "CA".into(),
                auth: None,
            },
            Registry {
                host: "docker.io".into(),
                ca: String::new(),
                auth: Some(RegistryAuth {
                    username: "edge".into(),
                    password: Secret::new("hub-token"),
                }),
            },
        ]
    }

    #[test]
    fn credentials_go_only_to_their_registry() {
        let creds = from_registries(&registries());
        assert_eq!(creds.len(), 1);
        assert!(for_reference(&creds, "lab.local:5000/app:1").is_none());
        let hub = for_reference(&creds, "docker.io/library/nginx:1.27").unwrap();
        let ask = |host: &str| AuthRequest {
            host: host.into(),
            reference: "docker.io/library/nginx:1.27".into(),
            wwwauthenticate: vec![],
        };
        let given = answer(hub, &ask("registry-1.docker.io"));
        assert_eq!(given.auth_type, AuthType::Credentials as i32);
        assert_eq!(
            (given.username.as_str(), given.secret.as_str()),
            ("edge", "hub-token")
        );
        let elsewhere = answer(hub, &ask("evil.example"));
        assert_eq!(elsewhere.auth_type, AuthType::None as i32);
        assert!(elsewhere.secret.is_empty() && elsewhere.username.is_empty());
        assert!(!format!("{hub:?}").contains("hub-token"), "Debug redacts");
    }
}
