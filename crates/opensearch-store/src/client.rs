//! A thin REST client: the calls the store makes, with the cluster's answer kept whole when it
//! refuses, so errors say what OpenSearch said.

use std::{path::PathBuf, time::Duration};

use reqwest::{Method, StatusCode, header};

use super::{OpenSearchArgs, OpenSearchError};

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    authorization: Option<header::HeaderValue>,
}

/// An answer: the status and the body as JSON (Null when it was not JSON).
pub struct Answer {
    pub status: StatusCode,
    pub body: serde_json::Value,
}

impl Answer {
    pub fn is_success(&self) -> bool {
        self.status.is_success()
    }

    /// The error OpenSearch gave, as `type: reason`.
    pub fn reason(&self) -> String {
        let error = &self.body["error"];
        // A failed search names its cause under root_cause, the outer reason only says that
        // shards failed.
        let cause = if error["root_cause"][0].is_object() {
            &error["root_cause"][0]
        } else {
            &error["failed_shards"][0]["reason"]
        };
        match (error["type"].as_str(), error["reason"].as_str()) {
            (Some(kind), Some(reason)) if cause.is_object() => format!(
                "{kind}: {reason}: {}: {}",
                cause["type"].as_str().unwrap_or_default(),
                cause["reason"].as_str().unwrap_or_default()
            ),
            (Some(kind), Some(reason)) => format!("{kind}: {reason}"),
            _ if error.is_string() => error.as_str().unwrap_or_default().to_string(),
            _ => {
                let text = self.body.to_string();
                text.chars().take(500).collect()
            }
        }
    }
}

fn read_secret(path: &PathBuf, what: &'static str) -> Result<String, OpenSearchError> {
    let text = std::fs::read_to_string(path).map_err(|source| OpenSearchError::Read {
        what,
        path: path.clone(),
        source,
    })?;
    let text = text.trim().to_string();
    if text.is_empty() {
        return Err(OpenSearchError::Config(format!(
            "{what} {} is empty",
            path.display()
        )));
    }
    Ok(text)
}

impl Client {
    pub fn new(args: &OpenSearchArgs) -> Result<Client, OpenSearchError> {
        let Some(url) = &args.opensearch_url else {
            return Err(OpenSearchError::Config(
                "--store=opensearch needs --opensearch-url".into(),
            ));
        };
        let base = url.trim_end_matches('/').to_string();
        if !(base.starts_with("https://") || base.starts_with("http://")) {
            return Err(OpenSearchError::Config(format!(
                "--opensearch-url {url:?} must start with https:// or http://"
            )));
        }
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            // A bulk request under load can take a while; a frozen cluster must not hold a
            // shipper forever.
            .timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(16);
        if let Some(ca) = &args.opensearch_ca_file {
            let pem = std::fs::read(ca).map_err(|source| OpenSearchError::Read {
                what: "reading the OpenSearch CA",
                path: ca.clone(),
                source,
            })?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|err| OpenSearchError::Config(format!("{}: {err}", ca.display())))?;
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let authorization = match (
            &args.opensearch_username,
            &args.opensearch_password_file,
            &args.opensearch_api_key_file,
        ) {
            (Some(user), Some(password), None) => {
                use base64::Engine;
                let password = read_secret(password, "reading the OpenSearch password")?;
                let token =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                Some(format!("Basic {token}"))
            }
            (None, None, Some(key)) => Some(format!(
                "ApiKey {}",
                read_secret(key, "reading the OpenSearch API key")?
            )),
            (None, None, None) => None,
            _ => {
                return Err(OpenSearchError::Config(
                    "give either --opensearch-username with --opensearch-password-file, or --opensearch-api-key-file".into(),
                ));
            }
        };
        let authorization = authorization
            .map(|value| {
                let mut value = header::HeaderValue::from_str(&value).map_err(|_| {
                    OpenSearchError::Config("the OpenSearch credentials hold invalid bytes".into())
                })?;
                value.set_sensitive(true);
                Ok::<_, OpenSearchError>(value)
            })
            .transpose()?;
        let http = builder
            .build()
            .map_err(|err| OpenSearchError::Config(err.to_string()))?;
        Ok(Client {
            http,
            base,
            authorization,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends a request; a transport failure is an error, any HTTP answer is an [`Answer`].
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(Vec<u8>, &'static str)>,
    ) -> Result<Answer, OpenSearchError> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(authorization) = &self.authorization {
            request = request.header(header::AUTHORIZATION, authorization.clone());
        }
        if let Some((bytes, content_type)) = body {
            request = request
                .header(header::CONTENT_TYPE, content_type)
                .body(bytes);
        }
        let response = request
            .send()
            .await
            .map_err(|source| OpenSearchError::Unreachable {
                url: format!("{}{path}", self.base),
                source,
            })?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|source| OpenSearchError::Unreachable {
                url: format!("{}{path}", self.base),
                source,
            })?;
        let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        Ok(Answer { status, body })
    }

    pub async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Answer, OpenSearchError> {
        let body = body.map(|value| {
            (
                serde_json::to_vec(value).expect("JSON serializes"),
                "application/json",
            )
        });
        self.send(method, path, body).await
    }

    /// Like [`Client::expect`], but an error of type `tolerated` (an index that already exists,
    /// none to change) counts as done too.
    pub async fn expect_or(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        tolerated: &str,
    ) -> Result<(), OpenSearchError> {
        let answer = self.json(method.clone(), path, body).await?;
        if answer.is_success() || answer.body["error"]["type"] == tolerated {
            Ok(())
        } else {
            Err(OpenSearchError::Refused {
                request: format!("{method} {path}"),
                status: answer.status.as_u16(),
                reason: answer.reason(),
            })
        }
    }

    /// Like [`Client::json`], but an answer other than 2xx is an error.
    pub async fn expect(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, OpenSearchError> {
        let answer = self.json(method.clone(), path, body).await?;
        if answer.is_success() {
            Ok(answer.body)
        } else {
            Err(OpenSearchError::Refused {
                request: format!("{method} {path}"),
                status: answer.status.as_u16(),
                reason: answer.reason(),
            })
        }
    }
}
