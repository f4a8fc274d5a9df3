//! A real Alertmanager and a real Prometheus on loopback, and promtool: the versions
//! scripts/alerting.sh builds. Each server has its own configuration and data in a scratch
//! directory, removed when it is dropped.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_json::Value;
use tempfile::TempDir;

use super::{
    Result, TestkitError, binaries::alerting_dir, eventually, file_error, free_port,
    pki::CertifiedKey, process::ManagedProcess,
};

/// Both start in well under a second on an idle machine; builds beside them load the same cores.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// One route and one receiver that sends nowhere: alerts are only kept, for the API to show. The
/// group waits are short so that a test sees the groups form quickly.
const ALERTMANAGER_CONFIG: &str = "\
route:
  receiver: default
  group_wait: 1s
  group_interval: 1s
receivers:
  - name: default
";

/// An Alertmanager, stopped and its directory removed on drop.
pub struct Alertmanager {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    http: reqwest::Client,
    process: ManagedProcess,
    dir: TempDir,
}

impl Alertmanager {
    /// Starts one with a default route to a receiver that sends nowhere, on a free loopback port,
    /// with clustering off (no gossip port), and waits until it is ready.
    pub async fn start() -> Result<Alertmanager> {
        Self::start_with(None).await
    }

    /// [`Alertmanager::start`], serving https with `serving` (a certificate for 127.0.0.1) issued
    /// by the CA `ca_pem`: `url` is then `https://127.0.0.1:<port>`.
    pub async fn start_tls(ca_pem: &str, serving: &CertifiedKey) -> Result<Alertmanager> {
        Self::start_with(Some((ca_pem, serving))).await
    }

    async fn start_with(tls: Option<(&str, &CertifiedKey)>) -> Result<Alertmanager> {
        let bin = alerting_dir()?;
        let dir = scratch("clusteraudit-alertmanager-")?;
        let config = dir.path().join("alertmanager.yml");
        std::fs::write(&config, ALERTMANAGER_CONFIG)
            .map_err(file_error("writing Alertmanager's configuration", &config))?;
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data)
            .map_err(file_error("creating Alertmanager's data directory", &data))?;
        let port = free_port()?;
        let mut args = vec![
            format!("--config.file={}", config.display()),
            format!("--storage.path={}", data.display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
            // Empty: a single instance, which opens no cluster (gossip) port.
            "--cluster.listen-address=".to_string(),
            "--log.level=debug".to_string(),
        ];
        let mut http = reqwest::Client::builder();
        let url = match tls {
            None => format!("http://127.0.0.1:{port}"),
            Some((ca_pem, serving)) => {
                let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
                let web = dir.path().join("web.yml");
                for (path, text) in [(&cert, &serving.cert_pem), (&key, &serving.key_pem)] {
                    std::fs::write(path, text)
                        .map_err(file_error("writing Alertmanager's certificate", path))?;
                }
                let web_config = serde_json::json!({"tls_server_config": {
                    "cert_file": cert.display().to_string(),
                    "key_file": key.display().to_string(),
                }});
                std::fs::write(&web, web_config.to_string())
                    .map_err(file_error("writing Alertmanager's web configuration", &web))?;
                args.push(format!("--web.config.file={}", web.display()));
                clusteraudit_io::tls::install_crypto_provider();
                let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).map_err(|err| {
                    TestkitError::Client(format!("the CA for Alertmanager: {err}"))
                })?;
                http = http.add_root_certificate(ca);
                format!("https://127.0.0.1:{port}")
            }
        };
        let mut process = ManagedProcess::spawn(
            "alertmanager",
            &bin.join("alertmanager"),
            &args,
            &dir.path().join("alertmanager.log"),
        )?;
        let http = client(http)?;
        wait_ready(&mut process, &http, &url).await?;
        Ok(Alertmanager {
            url,
            http,
            process,
            dir,
        })
    }

    /// What `GET /api/v2/alerts` answers: the alerts it holds that have not ended (a resolved
    /// alert is no longer listed), each with `labels`, `annotations`, `startsAt`, `endsAt`,
    /// `generatorURL` and `status`.
    pub async fn alerts(&self) -> std::result::Result<Vec<Value>, String> {
        get_json(&self.http, &format!("{}/api/v2/alerts", self.url))
            .await
            .and_then(|answer| match answer {
                Value::Array(alerts) => Ok(alerts),
                other => Err(format!("not a list of alerts: {other}")),
            })
    }

    /// The alert whose `alertname` label is `name` and whose labels include all of `labels`.
    pub async fn alert(
        &self,
        name: &str,
        labels: &[(&str, &str)],
    ) -> std::result::Result<Option<Value>, String> {
        Ok(self.alerts().await?.into_iter().find(|alert| {
            alert["labels"]["alertname"] == name
                && labels
                    .iter()
                    .all(|(key, value)| alert["labels"][*key] == *value)
        }))
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }
}

/// A Prometheus, stopped and its directory removed on drop. Built without the web UI's assets:
/// its API is all there is.
pub struct Prometheus {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    http: reqwest::Client,
    process: ManagedProcess,
    dir: TempDir,
}

impl Prometheus {
    /// Starts one with `config` as its prometheus.yml (see [`Prometheus::scrape_config`]), on a
    /// free loopback port, and waits until it is ready.
    pub async fn start(config: &str) -> Result<Prometheus> {
        Self::start_with_files(config, &[]).await
    }

    /// [`Prometheus::start`], with files written beside the configuration first (rule files it
    /// names, CA certificates, bearer tokens), by file name.
    pub async fn start_with_files(config: &str, files: &[(&str, &str)]) -> Result<Prometheus> {
        let bin = alerting_dir()?;
        let dir = scratch("clusteraudit-prometheus-")?;
        for (name, text) in files {
            let path = dir.path().join(name);
            std::fs::write(&path, text).map_err(file_error("writing a Prometheus file", &path))?;
        }
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).map_err(file_error(
            "writing Prometheus's configuration",
            &config_path,
        ))?;
        let data = dir.path().join("data");
        let port = free_port()?;
        let url = format!("http://127.0.0.1:{port}");
        let args = vec![
            format!("--config.file={}", config_path.display()),
            format!("--storage.tsdb.path={}", data.display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
            "--log.level=debug".to_string(),
        ];
        let mut process = ManagedProcess::spawn(
            "prometheus",
            &bin.join("prometheus"),
            &args,
            &dir.path().join("prometheus.log"),
        )?;
        let http = client(reqwest::Client::builder())?;
        wait_ready(&mut process, &http, &url).await?;
        Ok(Prometheus {
            url,
            http,
            process,
            dir,
        })
    }

    /// A prometheus.yml scraping `targets` (`host:port`) at `metrics_path` every `interval`
    /// under the job `job`, over plain HTTP.
    pub fn scrape_config(
        job: &str,
        targets: &[String],
        metrics_path: &str,
        interval: Duration,
    ) -> String {
        let targets: Vec<Value> = targets.iter().map(|t| Value::from(t.as_str())).collect();
        let interval = format!("{}ms", interval.as_millis().max(1));
        // JSON is YAML: no quoting rules to get wrong.
        serde_json::json!({
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "scrape_configs": [{
                "job_name": job,
                "metrics_path": metrics_path,
                "static_configs": [{"targets": targets}],
            }],
        })
        .to_string()
    }

    /// An instant query (`GET /api/v1/query`): the `data.result` of a successful answer (for a
    /// vector, one object per series with `metric` and `value`).
    pub async fn query(&self, promql: &str) -> std::result::Result<Vec<Value>, String> {
        let url = format!(
            "{}/api/v1/query?query={}",
            self.url,
            percent_encoding::utf8_percent_encode(promql, percent_encoding::NON_ALPHANUMERIC)
        );
        let answer = get_json(&self.http, &url).await?;
        if answer["status"] != "success" {
            return Err(format!("{promql}: {answer}"));
        }
        match &answer["data"]["result"] {
            Value::Array(result) => Ok(result.clone()),
            other => Ok(vec![other.clone()]),
        }
    }

    /// `GET /api/v1/targets`: the active targets, each with `health` (`up`, `down`, `unknown`) and
    /// `lastError`.
    pub async fn targets(&self) -> std::result::Result<Vec<Value>, String> {
        let answer = get_json(&self.http, &format!("{}/api/v1/targets", self.url)).await?;
        match &answer["data"]["activeTargets"] {
            Value::Array(targets) => Ok(targets.clone()),
            other => Err(format!("no active targets: {other}")),
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }
}

/// promtool, the rule checker and rule unit-test runner of the Prometheus that
/// scripts/alerting.sh builds.
pub struct Promtool {
    pub path: PathBuf,
}

/// What a promtool run printed, stdout then stderr.
#[derive(Debug)]
pub struct PromtoolRun {
    pub success: bool,
    pub output: String,
}

impl Promtool {
    pub fn locate() -> Result<Promtool> {
        Ok(Promtool {
            path: alerting_dir()?.join("promtool"),
        })
    }

    /// `promtool <args>`, in `dir` (rule files and unit tests name each other relative to it).
    pub fn run(&self, dir: &Path, args: &[&str]) -> Result<PromtoolRun> {
        let output = Command::new(&self.path)
            .args(args)
            .current_dir(dir)
            .output()
            .map_err(|source| TestkitError::Spawn {
                name: "promtool".into(),
                source,
            })?;
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        Ok(PromtoolRun {
            success: output.status.success(),
            output: text,
        })
    }

    /// `promtool check rules <files>`.
    pub fn check_rules(&self, files: &[&Path]) -> Result<PromtoolRun> {
        self.run_on_files(&["check", "rules"], files)
    }

    /// `promtool test rules <files>`: the unit tests, with their synthetic series, of the rule
    /// files they name.
    pub fn test_rules(&self, files: &[&Path]) -> Result<PromtoolRun> {
        self.run_on_files(&["test", "rules"], files)
    }

    fn run_on_files(&self, command: &[&str], files: &[&Path]) -> Result<PromtoolRun> {
        let dir = files
            .first()
            .and_then(|file| file.parent())
            .filter(|dir| !dir.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        let mut args: Vec<&str> = command.to_vec();
        args.extend(names.iter().map(String::as_str));
        self.run(&dir, &args)
    }
}

fn scratch(prefix: &str) -> Result<TempDir> {
    Ok(tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .map_err(file_error(
            "creating a scratch directory",
            &std::env::temp_dir(),
        ))?)
}

fn client(builder: reqwest::ClientBuilder) -> Result<reqwest::Client> {
    clusteraudit_io::tls::install_crypto_provider();
    builder
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|err| TestkitError::Client(err.to_string()))
}

async fn get_json(http: &reqwest::Client, url: &str) -> std::result::Result<Value, String> {
    let response = http.get(url).send().await.map_err(|e| e.to_string())?;
    let status = response.status();
    let text = response.text().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("{status}: {text}"));
    }
    serde_json::from_str(&text).map_err(|err| format!("{err}: {text}"))
}

/// Both servers answer `/-/ready` with 200 once they serve.
async fn wait_ready(process: &mut ManagedProcess, http: &reqwest::Client, url: &str) -> Result<()> {
    let name = process.name().to_string();
    let ready = eventually(&format!("{name}'s /-/ready"), START_DEADLINE, async || {
        if let Some(status) = process.exit_status() {
            return Ok(Err(TestkitError::ExitedEarly {
                name: name.clone(),
                status: status.to_string(),
                log_tail: process.log_tail(40),
            }));
        }
        match http.get(format!("{url}/-/ready")).send().await {
            Ok(response) if response.status().is_success() => Ok(Ok(())),
            Ok(response) => Err(response.status().to_string()),
            Err(err) => Err(err.to_string()),
        }
    })
    .await;
    match ready {
        Ok(result) => result,
        Err(timed_out) => Err(TestkitError::NotReady {
            name,
            waited: timed_out.waited,
            last_answer: timed_out.last,
            log_tail: process.log_tail(40),
        }),
    }
}
