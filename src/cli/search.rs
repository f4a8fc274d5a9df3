//! `clusteraudit search` (and `kubectl audit search`): query the collector from a shell, with the
//! kubeconfig's token.

use std::{io::Write, path::PathBuf, time::Duration};

use clap::{Args, ValueEnum};
use serde_json::Value;

#[derive(Args, Debug)]
pub struct SearchArgs {
    /// The query, e.g. 'verb:delete and resource:deployments and namespace:shop'.
    #[arg(default_value = "")]
    pub query: String,
    /// How far back to look (e.g. 15m, 24h, 7d).
    #[arg(long, default_value = "24h")]
    pub since: String,
    /// Until when (RFC 3339 or a duration ago); default now.
    #[arg(long)]
    pub until: Option<String>,
    /// The collector's URL.
    #[arg(long, env = "CLUSTERAUDIT_SERVER")]
    pub server: String,
    /// The topic to search; default the one the webhook writes to.
    #[arg(long)]
    pub topic: Option<String>,
    /// At most this many events.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Bearer token; default the kubeconfig's.
    #[arg(long, env = "CLUSTERAUDIT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// CA bundle (PEM) for the collector's certificate.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Skip verifying the collector's certificate (never in production).
    #[arg(long)]
    pub insecure_skip_tls_verify: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum SearchCliError {
    #[error("no bearer token: pass --token, or use a kubeconfig whose user has a token")]
    NoToken,
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the collector at {server}: {message}")]
    Request { server: String, message: String },
    #[error("the collector refused the request ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error("writing the output: {0}")]
    Write(#[source] std::io::Error),
}

pub async fn run(args: SearchArgs) -> Result<(), SearchCliError> {
    clusteraudit_io::tls::install_crypto_provider();
    let token = match &args.token {
        Some(token) => token.clone(),
        None => kubeconfig_token().await.ok_or(SearchCliError::NoToken)?,
    };
    let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(60));
    if let Some(path) = &args.ca_file {
        let pem = std::fs::read(path).map_err(|source| SearchCliError::Read {
            path: path.clone(),
            source,
        })?;
        let certificate =
            reqwest::Certificate::from_pem(&pem).map_err(|err| SearchCliError::Request {
                server: args.server.clone(),
                message: err.to_string(),
            })?;
        builder = builder.add_root_certificate(certificate);
    }
    if args.insecure_skip_tls_verify {
        builder = builder.tls_danger_accept_invalid_certs(true);
    }
    let http = builder.build().map_err(|err| SearchCliError::Request {
        server: args.server.clone(),
        message: err.to_string(),
    })?;
    let server = args.server.trim_end_matches('/').to_string();
    let get = async |path: String| -> Result<Value, SearchCliError> {
        let response = http
            .get(format!("{server}{path}"))
            .bearer_auth(&token)
            .send()
            .await
            .map_err(|err| SearchCliError::Request {
                server: server.clone(),
                message: err.to_string(),
            })?;
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status != 200 {
            return Err(SearchCliError::Refused {
                status,
                message: body["error"]
                    .as_str()
                    .unwrap_or("no reason given")
                    .to_string(),
            });
        }
        Ok(body)
    };
    let topic = match &args.topic {
        Some(topic) => topic.clone(),
        None => get("/v1/route".into()).await?["topicId"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    };
    let mut path = format!(
        "/v1/topics/{topic}/events?limit={}&from={}&q={}",
        args.limit,
        encode(&args.since),
        encode(&args.query)
    );
    if let Some(until) = &args.until {
        path.push_str(&format!("&to={}", encode(until)));
    }
    let page = get(path).await?;
    let events = page["events"].as_array().cloned().unwrap_or_default();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match args.output {
        Output::Json => {
            for event in &events {
                writeln!(out, "{event}").map_err(SearchCliError::Write)?;
            }
        }
        Output::Table => {
            out.write_all(table(&events).as_bytes())
                .map_err(SearchCliError::Write)?;
        }
    }
    if page["cursor"].is_string() {
        eprintln!(
            "(more than {} events; narrow the query or raise --limit)",
            args.limit
        );
    }
    Ok(())
}

/// The token of the kubeconfig's current user, if it has one.
async fn kubeconfig_token() -> Option<String> {
    use secrecy::ExposeSecret;
    let config = kube::Config::infer().await.ok()?;
    if let Some(token) = &config.auth_info.token {
        return Some(token.expose_secret().to_string());
    }
    let file = config.auth_info.token_file.as_ref()?;
    std::fs::read_to_string(file)
        .ok()
        .map(|t| t.trim().to_string())
}

/// Percent-encodes a query parameter.
fn encode(text: &str) -> percent_encoding::PercentEncode<'_> {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC)
}

/// Events as a table: time, user, verb, resource, namespace/name, code, source IP.
pub fn table(events: &[Value]) -> String {
    let str_of = |v: &Value| v.as_str().unwrap_or("").to_string();
    let mut rows = vec![[
        "TIME".to_string(),
        "USER".into(),
        "VERB".into(),
        "RESOURCE".into(),
        "NAMESPACE/NAME".into(),
        "CODE".into(),
        "SOURCE IP".into(),
    ]];
    for event in events {
        let object = &event["objectRef"];
        let resource = match (object["resource"].as_str(), object["subresource"].as_str()) {
            (Some(r), Some(s)) if !s.is_empty() => format!("{r}/{s}"),
            (Some(r), _) => r.to_string(),
            (None, _) => str_of(&event["requestURI"]),
        };
        let target = match (object["namespace"].as_str(), object["name"].as_str()) {
            (Some(ns), Some(name)) => format!("{ns}/{name}"),
            (None, Some(name)) => name.to_string(),
            (Some(ns), None) => format!("{ns}/"),
            (None, None) => String::new(),
        };
        rows.push([
            str_of(&event["stageTimestamp"]),
            str_of(&event["user"]["username"]),
            str_of(&event["verb"]),
            resource,
            target,
            event["responseStatus"]["code"]
                .as_i64()
                .map(|c| c.to_string())
                .unwrap_or_default(),
            str_of(&event["sourceIPs"][0]),
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .max()
                .unwrap_or(0)
                .min(60)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| {
                let cell: String = cell.chars().take(*width).collect();
                format!("{cell:<width$}")
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}
