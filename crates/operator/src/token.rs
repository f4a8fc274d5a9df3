//! The webhook token Secret: reading what it holds, carrying out the rotation step
//! ([`crate::plan::token`]) and asking the collector whether it accepts a staged token.

use std::time::{Duration, SystemTime};

use k8s_openapi::{
    ByteString, api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

use super::{
    plan::{
        Event,
        token::{self, TokenFacts, TokenStep},
    },
    reconcile::{Context, ReconcileError, kube},
};
use clusteraudit_core::rollout::objects::{WEBHOOK_TOKEN_KEY, WEBHOOK_TOKEN_SECRET};

/// Set to a new value to rotate the webhook token.
pub const ROTATE_ANNOTATION: &str = "clusteraudit.io/rotate-webhook-token";
pub const PREVIOUS_KEY: &str = "previous";
pub const NEXT_KEY: &str = "next";
const STAGED_AT_ANNOTATION: &str = "clusteraudit.io/next-staged-at";
const ROTATED_FOR_ANNOTATION: &str = "clusteraudit.io/rotated-for";

/// The token revisions carry now, what was announced, and when to look again.
pub struct Settled {
    pub token: String,
    pub events: Vec<Event>,
    pub requeue_within: Option<Duration>,
}

/// Brings the token Secret one step on. `carries_current`: whether every node runs the revision
/// a given token makes (the caller knows the policy and the nodes).
pub async fn settle(
    context: &Context,
    requested: Option<&str>,
    carries_current: impl Fn(&str) -> bool,
    now: SystemTime,
) -> Result<Settled, ReconcileError> {
    let secrets: Api<Secret> = Api::namespaced(context.client.clone(), &context.namespace);
    let existing = secrets
        .get_opt(WEBHOOK_TOKEN_SECRET)
        .await
        .map_err(kube("reading the webhook token Secret"))?;
    let Some(secret) = existing.filter(|s| value(s, WEBHOOK_TOKEN_KEY).is_some()) else {
        let token = create(context, &secrets).await?;
        return Ok(Settled {
            token,
            events: Vec::new(),
            requeue_within: None,
        });
    };
    let current = value(&secret, WEBHOOK_TOKEN_KEY).expect("filtered above");
    let facts = facts(&secret);
    let rolled_out = carries_current(&current);
    let mut settled = Settled {
        token: current.clone(),
        events: Vec::new(),
        requeue_within: None,
    };
    let version = secret.resource_version();
    match token::step(
        &facts,
        requested,
        rolled_out,
        now,
        context.token_propagation,
    ) {
        TokenStep::Keep | TokenStep::Create | TokenStep::AwaitRetire => {}
        TokenStep::Stage => {
            patch(
                &secrets,
                version,
                json!({"data": {NEXT_KEY: encoded(&random_token())}}),
                json!({STAGED_AT_ANNOTATION: k8s_openapi::jiff::Timestamp::try_from(now).map(|t| t.to_string()).unwrap_or_default()}),
            )
            .await?;
            settled.events.push(Event {
                warning: false,
                reason: "WebhookTokenStaged",
                note: format!(
                    "a new webhook token is handed to the collector; it is used once the collector accepts it (after {}s)",
                    context.token_propagation.as_secs()
                ),
            });
            settled.requeue_within = Some(context.token_propagation);
        }
        TokenStep::AwaitPropagation(wait) => settled.requeue_within = Some(wait),
        TokenStep::Promote => {
            let next = value(&secret, NEXT_KEY).expect("a staged token");
            if accepted(context, &next).await {
                patch(
                    &secrets,
                    version,
                    json!({"data": {
                        WEBHOOK_TOKEN_KEY: encoded(&next),
                        PREVIOUS_KEY: encoded(&current),
                        NEXT_KEY: null,
                    }}),
                    json!({
                        STAGED_AT_ANNOTATION: null,
                        ROTATED_FOR_ANNOTATION: requested.unwrap_or_default(),
                    }),
                )
                .await?;
                settled.token = next;
                settled.events.push(Event {
                    warning: false,
                    reason: "WebhookTokenRotated",
                    note: "the kube-apiservers get the new webhook token with the next revision; the collector accepts the old one until every node runs it".into(),
                });
            } else {
                settled.events.push(Event {
                    warning: true,
                    reason: "WebhookTokenNotAccepted",
                    note: "the collector does not accept the staged webhook token yet; the rotation waits".into(),
                });
                settled.requeue_within = Some(Duration::from_secs(5));
            }
        }
        TokenStep::Retire => {
            patch(
                &secrets,
                version,
                json!({"data": {PREVIOUS_KEY: null}}),
                json!({}),
            )
            .await?;
            settled.events.push(Event {
                warning: false,
                reason: "WebhookTokenRetired",
                note:
                    "every node presents the new webhook token; the old one is no longer accepted"
                        .into(),
            });
        }
        TokenStep::Unstage => {
            patch(
                &secrets,
                version,
                json!({"data": {NEXT_KEY: null}}),
                json!({STAGED_AT_ANNOTATION: null}),
            )
            .await?;
        }
    }
    Ok(settled)
}

fn value(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| String::from_utf8_lossy(&b.0).trim().to_string())
        .filter(|t| !t.is_empty())
}

fn facts(secret: &Secret) -> TokenFacts {
    let annotations = secret.annotations();
    TokenFacts {
        token: value(secret, WEBHOOK_TOKEN_KEY).is_some(),
        previous: value(secret, PREVIOUS_KEY).is_some(),
        next: value(secret, NEXT_KEY).is_some(),
        staged_at: annotations
            .get(STAGED_AT_ANNOTATION)
            .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
            .map(SystemTime::from),
        rotated_for: annotations.get(ROTATED_FOR_ANNOTATION).cloned(),
    }
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS has randomness");
    hex::encode(bytes)
}

fn encoded(token: &str) -> Value {
    serde_json::to_value(ByteString(token.as_bytes().to_vec())).expect("bytes serialize")
}

/// A merge patch that applies only to the version read, so that a step is never taken twice or
/// on top of somebody else's change.
async fn patch(
    secrets: &Api<Secret>,
    version: Option<String>,
    data: Value,
    annotations: Value,
) -> Result<(), ReconcileError> {
    let mut body = data;
    body["metadata"] = json!({"resourceVersion": version, "annotations": annotations});
    secrets
        .patch(
            WEBHOOK_TOKEN_SECRET,
            &PatchParams::default(),
            &Patch::Merge(body),
        )
        .await
        .map_err(kube("rotating the webhook token"))?;
    Ok(())
}

/// Whether the collector takes a webhook call with `token`: an empty batch, which stores nothing.
async fn accepted(context: &Context, token: &str) -> bool {
    let Ok(url) = super::reconcile::webhook_url(context).await else {
        return false;
    };
    let empty = json!({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": []});
    match context
        .collector
        .http
        .post(&url)
        .bearer_auth(token)
        .json(&empty)
        .timeout(Duration::from_secs(10))
        .send()
        .await
    {
        Ok(response) => response.status().is_success(),
        Err(err) => {
            tracing::warn!(%err, "asking the collector whether it accepts the staged webhook token");
            false
        }
    }
}

/// The first token: a random one, unless somebody (the user, or another writer in a race) has
/// put one there.
async fn create(context: &Context, secrets: &Api<Secret>) -> Result<String, ReconcileError> {
    let token = random_token();
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(WEBHOOK_TOKEN_SECRET.into()),
            namespace: Some(context.namespace.clone()),
            ..Default::default()
        },
        data: Some(
            [(
                WEBHOOK_TOKEN_KEY.to_string(),
                ByteString(token.clone().into_bytes()),
            )]
            .into(),
        ),
        ..Default::default()
    };
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(token),
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let theirs = secrets
                .get(WEBHOOK_TOKEN_SECRET)
                .await
                .map_err(kube("reading the webhook token Secret"))?;
            match value(&theirs, WEBHOOK_TOKEN_KEY) {
                Some(token) => Ok(token),
                None => {
                    patch(
                        secrets,
                        theirs.resource_version(),
                        json!({"data": {WEBHOOK_TOKEN_KEY: encoded(&token)}}),
                        json!({}),
                    )
                    .await?;
                    Ok(token)
                }
            }
        }
        Err(err) => Err(kube("creating the webhook token Secret")(err)),
    }
}
