//! Who may call what.
//!
//! The webhook: a bearer token (constant-time compared) or a client certificate signed by the
//! configured CA, as a webhook kubeconfig can carry either. The read and admin API: the caller's
//! bearer token is checked with a TokenReview and the call with a SubjectAccessReview, so
//! cluster RBAC decides who may read audit logs:
//! - reading (search, stats, listing logsets and topics): `get` on `auditevents.clusteraudit.io`;
//! - changing logsets, topics and the route: `create`, `update` or `delete` on
//!   `topics.clusteraudit.io`.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use axum::http::HeaderMap;
use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec},
    authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
};
use kube::api::{Api, PostParams};
use sha2::{Digest, Sha256};

use super::{CollectorArgs, CollectorError};

pub const API_GROUP: &str = "clusteraudit.io";

/// What a call needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    Read,
    Create,
    Update,
    Delete,
}

impl Access {
    fn attributes(self) -> (&'static str, &'static str) {
        match self {
            Access::Read => ("get", "auditevents"),
            Access::Create => ("create", "topics"),
            Access::Update => ("update", "topics"),
            Access::Delete => ("delete", "topics"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("a bearer token is required")]
    Unauthenticated,
    #[error("the token was not accepted")]
    InvalidToken,
    #[error("{user} may not {verb} {resource}.{API_GROUP}")]
    Forbidden {
        user: String,
        verb: &'static str,
        resource: &'static str,
    },
    #[error("authorization is unavailable: {0}")]
    Unavailable(String),
}

pub struct Auth {
    insecure: bool,
    webhook_token: Option<TokenFile>,
    kube: Option<kube::Client>,
    /// Decisions for (token hash, access), kept briefly so that a page of searches costs one
    /// review.
    cache: Mutex<HashMap<CacheKey, CachedDecision>>,
}

/// (SHA-256 of the token, the access asked for).
type CacheKey = ([u8; 32], Access);
/// Allowed, or the user who was refused, and when that was decided.
type CachedDecision = (Result<(), String>, Instant);

const CACHE_FOR: Duration = Duration::from_secs(10);

/// The webhook token, from a file that may appear or change while the collector runs (a Secret
/// volume the kubelet fills in once the operator has created the Secret): looked at again at most
/// once a second.
pub struct TokenFile {
    path: std::path::PathBuf,
    state: Mutex<TokenFileState>,
}

struct TokenFileState {
    checked: Option<Instant>,
    modified: Option<std::time::SystemTime>,
    token: Option<String>,
}

impl TokenFile {
    pub fn new(path: std::path::PathBuf) -> TokenFile {
        TokenFile {
            path,
            state: Mutex::new(TokenFileState {
                checked: None,
                modified: None,
                token: None,
            }),
        }
    }

    /// The token now; none while the file is missing or empty.
    pub fn current(&self) -> Option<String> {
        let mut state = self.state.lock().expect("not poisoned");
        if state
            .checked
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(1))
        {
            let first = state.checked.is_none();
            state.checked = Some(Instant::now());
            let modified = std::fs::metadata(&self.path)
                .and_then(|m| m.modified())
                .ok();
            if modified != state.modified || first {
                let had = state.token.is_some();
                state.modified = modified;
                state.token = std::fs::read_to_string(&self.path)
                    .ok()
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty());
                if state.token.is_none() && (had || first) {
                    tracing::warn!(path = %self.path.display(), "no webhook token (yet): webhook calls with a token are refused");
                }
            }
        }
        state.token.clone()
    }
}

impl Auth {
    pub async fn from_args(args: &CollectorArgs) -> Result<Auth, CollectorError> {
        let webhook_token = args.webhook_token_file.clone().map(TokenFile::new);
        let kube = if args.insecure_dev {
            None
        } else {
            Some(
                clusteraudit_io::kubeclient::client(args.kubeconfig.as_deref())
                    .await
                    .map_err(CollectorError::Kube)?,
            )
        };
        Ok(Auth {
            insecure: args.insecure_dev,
            webhook_token,
            kube,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Authentication off: the --insecure-dev mode and tests of the pipeline alone.
    pub fn disabled() -> Auth {
        Auth {
            insecure: true,
            webhook_token: None,
            kube: None,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a webhook call presents valid credentials.
    pub fn webhook_allowed(&self, headers: &HeaderMap, verified_client_certificate: bool) -> bool {
        if self.insecure || verified_client_certificate {
            return true;
        }
        match (&self.webhook_token, bearer(headers)) {
            (Some(file), Some(given)) => file
                .current()
                .is_some_and(|expected| constant_time_eq(expected.as_bytes(), given.as_bytes())),
            _ => false,
        }
    }

    /// Checks a read or admin call against the cluster's RBAC.
    pub async fn authorize(&self, headers: &HeaderMap, access: Access) -> Result<(), AuthError> {
        if self.insecure {
            return Ok(());
        }
        let token = bearer(headers).ok_or(AuthError::Unauthenticated)?;
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some((decision, at)) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(key, access))
            && at.elapsed() < CACHE_FOR
        {
            return decision.clone().map_err(|user| {
                let (verb, resource) = access.attributes();
                AuthError::Forbidden {
                    user,
                    verb,
                    resource,
                }
            });
        }
        let client = self
            .kube
            .clone()
            .ok_or_else(|| AuthError::Unavailable("no Kubernetes client".into()))?;
        let review = Api::<TokenReview>::all(client.clone())
            .create(
                &PostParams::default(),
                &TokenReview {
                    spec: TokenReviewSpec {
                        token: token.to_string(),
                        ..Default::default()
                    },
                    ..Default::default()
                },
            )
            .await
            .map_err(|err| AuthError::Unavailable(err.to_string()))?;
        let status = review.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(AuthError::InvalidToken);
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.clone().unwrap_or_default();
        let (verb, resource) = access.attributes();
        let decision = Api::<SubjectAccessReview>::all(client)
            .create(
                &PostParams::default(),
                &SubjectAccessReview {
                    spec: SubjectAccessReviewSpec {
                        user: user.username.clone(),
                        groups: user.groups.clone(),
                        uid: user.uid.clone(),
                        extra: user.extra.clone(),
                        resource_attributes: Some(ResourceAttributes {
                            group: Some(API_GROUP.into()),
                            resource: Some(resource.into()),
                            verb: Some(verb.into()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                    ..Default::default()
                },
            )
            .await
            .map_err(|err| AuthError::Unavailable(err.to_string()))?;
        let allowed = decision.status.is_some_and(|s| s.allowed);
        let result = if allowed {
            Ok(())
        } else {
            Err(username.clone())
        };
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((key, access), (result.clone(), Instant::now()));
        result.map_err(|user| AuthError::Forbidden {
            user,
            verb,
            resource,
        })
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
