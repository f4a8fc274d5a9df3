//! Who may call what.
//!
//! The webhook: a bearer token (constant-time compared) or a client certificate signed by the
//! configured CA, as a webhook kubeconfig can carry either. The read and admin API: the caller's
//! bearer token is checked with a TokenReview and the call with a SubjectAccessReview, so
//! cluster RBAC decides who may read audit logs:
//! - reading (search, stats, listing logsets and topics): `get` on `auditevents.clusteraudit.io`;
//! - changing logsets, topics, the route and the alert rules: `create`, `update` or `delete` on
//!   `topics.clusteraudit.io`;
//! - which nodes batches came from (the agent's health gate): `get` on `nodes.clusteraudit.io`.
//!
//! Reviews cost the kube-apiserver, and anybody can send a token: failed reviews are limited per
//! client address (and over all clients), decisions are kept briefly in a cache of bounded size,
//! and the TokenReview asks for the collector's own audience, so that the tokens readers hand the
//! collector need not be valid against the kube-apiserver.

use std::{
    collections::HashMap,
    hash::Hash,
    net::IpAddr,
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
    /// Which nodes batches came from (the agent's health gate).
    Nodes,
}

impl Access {
    fn attributes(self) -> (&'static str, &'static str) {
        match self {
            Access::Read => ("get", "auditevents"),
            Access::Create => ("create", "topics"),
            Access::Update => ("update", "topics"),
            Access::Delete => ("delete", "topics"),
            Access::Nodes => ("get", "nodes"),
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
    #[error("too many refused tokens from this address; retry later")]
    TooManyFailures,
}

pub struct Auth {
    insecure: bool,
    /// Any of these tokens is accepted: the current one, and during a rotation the previous and
    /// the next (files that exist only then).
    webhook_tokens: Vec<TokenFile>,
    kube: Option<kube::Client>,
    /// The audience TokenReviews ask for; none: the kube-apiserver's own.
    audience: Option<String>,
    /// Decisions for (token hash, access), kept briefly so that a page of searches costs one
    /// review.
    cache: Mutex<BoundedCache<CacheKey, Decision>>,
    failures: Mutex<FailureLimiter>,
}

/// (SHA-256 of the token, the access asked for).
type CacheKey = ([u8; 32], Access);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Decision {
    Allowed,
    /// The user the token belongs to may not.
    Forbidden(String),
    /// The kube-apiserver did not authenticate the token.
    Invalid,
}

const CACHE_FOR: Duration = Duration::from_secs(10);
/// Decisions kept at most: about 300 bytes each.
const CACHE_ENTRIES: usize = 10_000;

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
                    tracing::info!(path = %self.path.display(), "no webhook token in this file (yet): it lets no call in");
                }
            }
        }
        state.token.clone()
    }
}

impl Auth {
    pub async fn from_args(args: &CollectorArgs) -> Result<Auth, CollectorError> {
        let webhook_tokens = args
            .webhook_token_file
            .iter()
            .cloned()
            .map(TokenFile::new)
            .collect();
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
            webhook_tokens,
            kube,
            audience: Some(args.token_audience.clone()).filter(|a| !a.is_empty()),
            cache: Mutex::new(BoundedCache::new(CACHE_ENTRIES, CACHE_FOR)),
            failures: Mutex::new(FailureLimiter::default()),
        })
    }

    /// Authentication off: the --insecure-dev mode and tests of the pipeline alone.
    pub fn disabled() -> Auth {
        Auth {
            insecure: true,
            webhook_tokens: Vec::new(),
            kube: None,
            audience: None,
            cache: Mutex::new(BoundedCache::new(CACHE_ENTRIES, CACHE_FOR)),
            failures: Mutex::new(FailureLimiter::default()),
        }
    }

    /// Whether a webhook call presents valid credentials.
    pub fn webhook_allowed(&self, headers: &HeaderMap, verified_client_certificate: bool) -> bool {
        if self.insecure || verified_client_certificate {
            return true;
        }
        let Some(given) = bearer(headers) else {
            return false;
        };
        // Every file is compared, so the time taken does not tell which token matched.
        self.webhook_tokens.iter().fold(false, |accepted, file| {
            let matches = file
                .current()
                .is_some_and(|expected| constant_time_eq(expected.as_bytes(), given.as_bytes()));
            accepted | matches
        })
    }

    /// Checks a read or admin call against the cluster's RBAC. `client` is the caller's address,
    /// by which failed reviews are limited.
    pub async fn authorize(
        &self,
        headers: &HeaderMap,
        client: Option<IpAddr>,
        access: Access,
    ) -> Result<(), AuthError> {
        if self.insecure {
            return Ok(());
        }
        let token = bearer(headers).ok_or(AuthError::Unauthenticated)?;
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let (verb, resource) = access.attributes();
        let answer = |decision: Decision| match decision {
            Decision::Allowed => Ok(()),
            Decision::Forbidden(user) => Err(AuthError::Forbidden {
                user,
                verb,
                resource,
            }),
            Decision::Invalid => Err(AuthError::InvalidToken),
        };
        let cached = lock(&self.cache)
            .get(&(key, access), Instant::now())
            .cloned();
        if let Some(decision) = cached {
            return answer(decision);
        }
        if !lock(&self.failures).allows(client, Instant::now()) {
            return Err(AuthError::TooManyFailures);
        }
        let client_api = self
            .kube
            .clone()
            .ok_or_else(|| AuthError::Unavailable("no Kubernetes client".into()))?;
        let review = Api::<TokenReview>::all(client_api.clone())
            .create(
                &PostParams::default(),
                &TokenReview {
                    spec: TokenReviewSpec {
                        token: token.to_string(),
                        audiences: self.audience.clone().map(|a| vec![a]),
                    },
                    ..Default::default()
                },
            )
            .await
            .map_err(|err| AuthError::Unavailable(err.to_string()))?;
        let status = review.status.unwrap_or_default();
        // The kube-apiserver answers for the audiences it checked; a token for another is no token.
        let audience_ok = self.audience.as_ref().is_none_or(|audience| {
            status
                .audiences
                .as_ref()
                .is_some_and(|given| given.contains(audience))
        });
        if status.authenticated != Some(true) || !audience_ok {
            lock(&self.failures).failed(client, Instant::now());
            lock(&self.cache).insert((key, access), Decision::Invalid, Instant::now());
            return Err(AuthError::InvalidToken);
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.clone().unwrap_or_default();
        let decision = Api::<SubjectAccessReview>::all(client_api)
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
        let decision = if decision.status.is_some_and(|s| s.allowed) {
            Decision::Allowed
        } else {
            Decision::Forbidden(username)
        };
        lock(&self.cache).insert((key, access), decision.clone(), Instant::now());
        answer(decision)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A map whose entries expire after `ttl` and which never holds more than `capacity`: when full,
/// expired entries go first, then the oldest.
pub struct BoundedCache<K, V> {
    entries: HashMap<K, (V, Instant)>,
    capacity: usize,
    ttl: Duration,
}

impl<K: Eq + Hash + Clone, V> BoundedCache<K, V> {
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        BoundedCache {
            entries: HashMap::new(),
            capacity: capacity.max(1),
            ttl,
        }
    }

    pub fn get(&self, key: &K, now: Instant) -> Option<&V> {
        self.entries
            .get(key)
            .filter(|(_, at)| now.saturating_duration_since(*at) < self.ttl)
            .map(|(value, _)| value)
    }

    pub fn insert(&mut self, key: K, value: V, now: Instant) {
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            let ttl = self.ttl;
            self.entries
                .retain(|_, (_, at)| now.saturating_duration_since(*at) < ttl);
            if self.entries.len() >= self.capacity
                && let Some(oldest) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, (_, at))| *at)
                    .map(|(k, _)| k.clone())
            {
                self.entries.remove(&oldest);
            }
        }
        self.entries.insert(key, (value, now));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A token bucket: `burst` at most, refilled at `per_second`.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn level(&self, now: Instant, burst: f64, per_second: f64) -> f64 {
        (self.tokens + now.saturating_duration_since(self.at).as_secs_f64() * per_second).min(burst)
    }
}

/// Failed token reviews, limited per client (an IPv4 address, an IPv6 /64) and over all
/// clients, so that guessing tokens costs the kube-apiserver little whoever guesses.
pub struct FailureLimiter {
    clients: HashMap<IpAddr, Bucket>,
    all: Option<Bucket>,
    max_clients: usize,
}

/// Failures a client may have at once, and how fast it gets them back.
const CLIENT_BURST: f64 = 10.0;
const CLIENT_PER_SECOND: f64 = 0.2;
/// The same over every client together.
const ALL_BURST: f64 = 100.0;
const ALL_PER_SECOND: f64 = 5.0;

impl Default for FailureLimiter {
    fn default() -> Self {
        FailureLimiter {
            clients: HashMap::new(),
            all: None,
            max_clients: 10_000,
        }
    }
}

impl FailureLimiter {
    fn client_key(client: Option<IpAddr>) -> IpAddr {
        match client {
            Some(IpAddr::V6(v6)) if v6.to_ipv4_mapped().is_none() => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
            Some(IpAddr::V6(v6)) => IpAddr::V4(v6.to_ipv4_mapped().expect("mapped")),
            Some(v4) => v4,
            None => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        }
    }

    /// Whether a review for this client may be tried now.
    pub fn allows(&self, client: Option<IpAddr>, now: Instant) -> bool {
        let own = self
            .clients
            .get(&Self::client_key(client))
            .is_none_or(|b| b.level(now, CLIENT_BURST, CLIENT_PER_SECOND) >= 1.0);
        let all = self
            .all
            .is_none_or(|b| b.level(now, ALL_BURST, ALL_PER_SECOND) >= 1.0);
        own && all
    }

    /// A review for this client failed.
    pub fn failed(&mut self, client: Option<IpAddr>, now: Instant) {
        let all = self.all.unwrap_or(Bucket {
            tokens: ALL_BURST,
            at: now,
        });
        self.all = Some(Bucket {
            tokens: all.level(now, ALL_BURST, ALL_PER_SECOND) - 1.0,
            at: now,
        });
        let key = Self::client_key(client);
        if self.clients.len() >= self.max_clients && !self.clients.contains_key(&key) {
            // Clients back to a full bucket are as good as unknown.
            self.clients
                .retain(|_, b| b.level(now, CLIENT_BURST, CLIENT_PER_SECOND) < CLIENT_BURST);
            if self.clients.len() >= self.max_clients {
                // Still full: this client is held by the limit over all clients alone.
                return;
            }
        }
        let bucket = self.clients.entry(key).or_insert(Bucket {
            tokens: CLIENT_BURST,
            at: now,
        });
        *bucket = Bucket {
            tokens: bucket.level(now, CLIENT_BURST, CLIENT_PER_SECOND) - 1.0,
            at: now,
        };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn during_a_rotation_any_of_the_token_files_lets_a_webhook_call_in() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "new-token\n").unwrap();
        std::fs::write(dir.path().join("previous"), "old-token").unwrap();
        let mut auth = Auth::disabled();
        auth.insecure = false;
        auth.webhook_tokens = ["token", "previous", "next"]
            .into_iter()
            .map(|name| TokenFile::new(dir.path().join(name)))
            .collect();
        let call = |token: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(
                axum::http::header::AUTHORIZATION,
                format!("Bearer {token}").parse().unwrap(),
            );
            auth.webhook_allowed(&headers, false)
        };
        assert!(call("new-token"));
        assert!(call("old-token"));
        assert!(!call("next-token"), "a missing file accepts nothing");
        assert!(!call(""));
        assert!(!auth.webhook_allowed(&HeaderMap::new(), false));
    }

    #[test]
    fn the_cache_forgets_after_its_ttl_and_never_holds_more_than_its_capacity() {
        let t0 = Instant::now();
        let mut cache = BoundedCache::new(3, Duration::from_secs(10));
        cache.insert("a", 1, t0);
        assert_eq!(cache.get(&"a", t0 + Duration::from_secs(9)), Some(&1));
        assert_eq!(cache.get(&"a", t0 + Duration::from_secs(10)), None);
        cache.insert("b", 2, t0 + Duration::from_secs(1));
        cache.insert("c", 3, t0 + Duration::from_secs(2));
        // Full, nothing expired: the oldest goes.
        cache.insert("d", 4, t0 + Duration::from_secs(3));
        assert_eq!(cache.len(), 3);
        let now = t0 + Duration::from_secs(3);
        assert_eq!(cache.get(&"a", now), None);
        assert_eq!(
            (cache.get(&"b", now), cache.get(&"d", now)),
            (Some(&2), Some(&4))
        );
        // Full with expired entries: they all go, the live ones stay.
        let later = t0 + Duration::from_secs(12);
        cache.insert("e", 5, later);
        assert_eq!(cache.len(), 2, "b and c expired");
        assert_eq!(
            (cache.get(&"d", later), cache.get(&"e", later)),
            (Some(&4), Some(&5))
        );
        // Replacing a key does not evict another.
        let mut cache = BoundedCache::new(2, Duration::from_secs(10));
        cache.insert("x", 1, t0);
        cache.insert("y", 1, t0);
        cache.insert("x", 2, t0);
        assert_eq!(
            (cache.get(&"x", t0), cache.get(&"y", t0)),
            (Some(&2), Some(&1))
        );
        // A hostile flood of distinct keys keeps it at its capacity.
        let mut cache = BoundedCache::new(100, Duration::from_secs(10));
        for i in 0..10_000u32 {
            cache.insert(i, (), t0 + Duration::from_millis(i.into()));
        }
        assert_eq!(cache.len(), 100);
    }

    #[test]
    fn failed_reviews_are_limited_per_client_and_come_back_with_time() {
        let t0 = Instant::now();
        let mut limiter = FailureLimiter::default();
        let mallory = ip("10.0.0.66");
        for _ in 0..10 {
            assert!(limiter.allows(mallory, t0));
            limiter.failed(mallory, t0);
        }
        assert!(!limiter.allows(mallory, t0), "the burst is spent");
        // Another client is not held by mallory's failures.
        assert!(limiter.allows(ip("10.0.0.7"), t0));
        // One more try every five seconds.
        assert!(!limiter.allows(mallory, t0 + Duration::from_secs(4)));
        assert!(limiter.allows(mallory, t0 + Duration::from_secs(5)));
        limiter.failed(mallory, t0 + Duration::from_secs(5));
        assert!(!limiter.allows(mallory, t0 + Duration::from_secs(6)));
        assert!(limiter.allows(mallory, t0 + Duration::from_secs(60)));
    }

    #[test]
    fn ipv6_clients_are_limited_by_their_64_prefix() {
        let t0 = Instant::now();
        let mut limiter = FailureLimiter::default();
        for i in 0..10 {
            limiter.failed(ip(&format!("2001:db8:1:2::{i:x}")), t0);
        }
        assert!(!limiter.allows(ip("2001:db8:1:2:ffff::1"), t0));
        assert!(limiter.allows(ip("2001:db8:1:3::1"), t0));
        // An IPv4 client seen over an IPv6 socket is the IPv4 client.
        for _ in 0..10 {
            limiter.failed(ip("::ffff:192.0.2.1"), t0);
        }
        assert!(!limiter.allows(ip("192.0.2.1"), t0));
    }

    #[test]
    fn failures_over_all_clients_are_limited_too_and_the_client_map_is_bounded() {
        let t0 = Instant::now();
        let mut limiter = FailureLimiter {
            max_clients: 50,
            ..Default::default()
        };
        // A hundred addresses fail once each: the limit over all clients is spent.
        for i in 0..100u32 {
            limiter.failed(
                Some(IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i))),
                t0,
            );
        }
        assert!(limiter.clients.len() <= 50);
        assert!(!limiter.allows(ip("10.9.9.9"), t0));
        assert!(limiter.allows(ip("10.9.9.9"), t0 + Duration::from_secs(1)));
    }
}
