//! A real OpenSearch on loopback: the version scripts/opensearch.sh installs (plain HTTP, no
//! security plugin), one node with its own configuration, data and logs in a scratch directory.
//!
//! OpenSearch refuses to run as root, so as root the kit runs it as nobody; the shared install is
//! only read, and everything the node writes is in its scratch directory, which nobody owns.

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::OnceLock,
    time::Duration,
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use tempfile::TempDir;

use super::{
    Result, TestkitError, eventually, file_error, free_port,
    process::{ManagedProcess, SpawnOptions},
};

/// Set to an OpenSearch install (its OPENSEARCH_HOME) to skip the install script.
pub const HOME_ENV: &str = "CLUSTERAUDIT_OPENSEARCH_HOME";

/// nobody and nogroup.
const UNPRIVILEGED: (u32, u32) = (65534, 65534);

/// Enough for tests, and small enough for a few nodes on a two-core, shared machine.
const HEAP: &str = "-Xms512m -Xmx512m";

/// About 7 s on an idle two-core machine; the JVM's start is CPU-bound, and tests beside it load
/// the same cores.
const START_DEADLINE: Duration = Duration::from_secs(180);

/// An OpenSearch node, stopped and its directory removed on drop.
pub struct OpenSearch {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    process: ManagedProcess,
    dir: TempDir,
}

impl OpenSearch {
    /// Starts a node and waits until its cluster health is yellow or green.
    pub async fn start() -> Result<OpenSearch> {
        clusteraudit_io::tls::install_crypto_provider();
        let home = home()?;
        let dir = tempfile::Builder::new()
            .prefix("clusteraudit-opensearch-")
            .tempdir()
            .map_err(file_error(
                "creating a directory for OpenSearch",
                &std::env::temp_dir(),
            ))?;
        let config = dir.path().join("config");
        let data = dir.path().join("data");
        let logs = dir.path().join("logs");
        let tmp = dir.path().join("tmp");
        copy_dir(&home.join("config"), &config)?;
        relocate_jvm_files(&config.join("jvm.options"), &data, &logs)?;
        for path in [&data, &logs, &tmp] {
            std::fs::create_dir_all(path)
                .map_err(file_error("creating a directory for OpenSearch", path))?;
        }
        let user = running_as_root().then_some(UNPRIVILEGED);
        if let Some(user) = user {
            chown_all(dir.path(), user)?;
        }

        let http_port = free_port()?;
        let url = format!("http://127.0.0.1:{http_port}");
        let args = vec![
            "-Ecluster.name=clusteraudit-test".to_string(),
            "-Enode.name=clusteraudit-test".to_string(),
            "-Ediscovery.type=single-node".to_string(),
            "-Enetwork.host=127.0.0.1".to_string(),
            format!("-Ehttp.port={http_port}"),
            format!("-Etransport.port={}", free_port()?),
            format!("-Epath.data={}", data.display()),
            format!("-Epath.logs={}", logs.display()),
            // The watermarks would make a developer's nearly full disk fail tests that are not
            // about disks (new shards left unassigned, indices made read-only).
            "-Ecluster.routing.allocation.disk.threshold_enabled=false".to_string(),
        ];
        let mut env = vec![
            ("OPENSEARCH_JAVA_OPTS".into(), HEAP.into()),
            ("OPENSEARCH_PATH_CONF".into(), config.clone().into()),
            ("OPENSEARCH_TMPDIR".into(), tmp.clone().into()),
        ];
        // The script links a supported Java there; a JAVA_HOME set for other tools may be a Java
        // OpenSearch 2 cannot run on, so it must not be the one chosen.
        if std::env::var_os("OPENSEARCH_JAVA_HOME").is_none() {
            env.push(("OPENSEARCH_JAVA_HOME".into(), home.join("jdk").into()));
        }
        let mut process = ManagedProcess::spawn_with(
            "opensearch",
            &home.join("bin/opensearch"),
            &args,
            &dir.path().join("stdout.log"),
            &SpawnOptions { env, user },
        )?;

        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|err| TestkitError::Client(err.to_string()))?;
        let health_url = format!("{url}/_cluster/health?wait_for_status=yellow&timeout=1s");
        let healthy = eventually(
            "OpenSearch's cluster health to be yellow or green",
            START_DEADLINE,
            async || {
                if let Some(status) = process.exit_status() {
                    return Ok(Err(TestkitError::ExitedEarly {
                        name: "opensearch".into(),
                        status: status.to_string(),
                        log_tail: process.log_tail(40),
                    }));
                }
                let response = http.get(&health_url).send().await;
                let answer = match response {
                    Ok(response) => response.text().await.map_err(|err| err.to_string())?,
                    Err(err) => return Err(err.to_string()),
                };
                let health: serde_json::Value =
                    serde_json::from_str(&answer).map_err(|_| answer.clone())?;
                match health["status"].as_str() {
                    Some("yellow" | "green") => Ok(Ok(())),
                    _ => Err(answer),
                }
            },
        )
        .await;
        match healthy {
            Ok(Ok(())) => {}
            Ok(Err(err)) => return Err(err),
            Err(timed_out) => {
                return Err(TestkitError::NotReady {
                    name: "opensearch".into(),
                    waited: timed_out.waited,
                    last_answer: timed_out.last,
                    log_tail: process.log_tail(40),
                });
            }
        }
        // bin/opensearch is a shell script that ends in `exec java`: by now the pid is the JVM's,
        // which freeze and thaw rely on.
        let comm =
            std::fs::read_to_string(format!("/proc/{}/comm", process.pid())).unwrap_or_default();
        if comm.trim() != "java" {
            return Err(unavailable(format!(
                "pid {} is {:?}, not the JVM",
                process.pid(),
                comm.trim()
            )));
        }
        Ok(OpenSearch { url, process, dir })
    }

    /// The JVM's pid.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Its scratch directory: `config`, `data`, `logs` (OpenSearch's own) and `stdout.log`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops the JVM (SIGSTOP), as a hung node: connections are still accepted, nothing answers.
    pub fn freeze(&self) {
        self.signal(Signal::SIGSTOP);
    }

    /// Lets a frozen JVM run again (SIGCONT).
    pub fn thaw(&self) {
        self.signal(Signal::SIGCONT);
    }

    fn signal(&self, signal: Signal) {
        if let Err(err) = kill(Pid::from_raw(self.process.pid() as i32), signal) {
            panic!(
                "sending {signal} to OpenSearch (pid {}): {err}; its log ends with:\n{}",
                self.process.pid(),
                self.log_tail(20)
            );
        }
    }

    /// The last `lines` lines of what the node printed (its server log, and the JVM's output).
    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }
}

impl Drop for OpenSearch {
    fn drop(&mut self) {
        // A frozen JVM would hold SIGTERM pending until the kill.
        let _ = kill(Pid::from_raw(self.process.pid() as i32), Signal::SIGCONT);
        self.process.stop(Duration::from_secs(30));
    }
}

/// The OpenSearch install, installing it the first time (the script reuses it afterwards).
pub fn home() -> Result<PathBuf> {
    static LOCATED: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    let located = LOCATED.get_or_init(|| super::binaries::provided_dir(HOME_ENV, "opensearch.sh"));
    let home = located.clone().map_err(unavailable)?;
    if !home.join("bin/opensearch").is_file() {
        return Err(unavailable(format!(
            "{} has no bin/opensearch",
            home.display()
        )));
    }
    Ok(home)
}

fn unavailable(reason: String) -> TestkitError {
    TestkitError::Spawn {
        name: "opensearch".into(),
        source: std::io::Error::other(reason),
    }
}

fn running_as_root() -> bool {
    // /proc/self belongs to the effective user.
    std::fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0)
}

/// jvm.options names its heap dump, crash and GC log files relative to the install, where the node
/// cannot write (and a GC log it cannot open stops the JVM from starting).
fn relocate_jvm_files(jvm_options: &Path, data: &Path, logs: &Path) -> Result<()> {
    let text = std::fs::read_to_string(jvm_options)
        .map_err(file_error("reading OpenSearch's jvm.options", jvm_options))?;
    let (data, logs) = (data.display(), logs.display());
    let text = text
        .replace("HeapDumpPath=data", &format!("HeapDumpPath={data}"))
        .replace("=logs/", &format!("={logs}/"))
        .replace(":logs/", &format!(":{logs}/"));
    std::fs::write(jvm_options, text)
        .map_err(file_error("writing OpenSearch's jvm.options", jvm_options))?;
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(file_error("creating OpenSearch's configuration", to))?;
    let entries =
        std::fs::read_dir(from).map_err(file_error("listing OpenSearch's configuration", from))?;
    for entry in entries {
        let entry = entry.map_err(file_error("listing OpenSearch's configuration", from))?;
        let (source, target) = (entry.path(), to.join(entry.file_name()));
        if source.is_dir() {
            copy_dir(&source, &target)?;
        } else {
            std::fs::copy(&source, &target)
                .map_err(file_error("copying OpenSearch's configuration", &target))?;
        }
    }
    Ok(())
}

fn chown_all(path: &Path, (uid, gid): (u32, u32)) -> Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(file_error(
        "handing OpenSearch's directory to its user",
        path,
    ))?;
    if path.is_dir() {
        let entries =
            std::fs::read_dir(path).map_err(file_error("listing OpenSearch's directory", path))?;
        for entry in entries {
            let entry = entry.map_err(file_error("listing OpenSearch's directory", path))?;
            chown_all(&entry.path(), (uid, gid))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_jvm_writes_its_files_into_the_nodes_directories() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jvm.options");
        std::fs::write(
            &path,
            "-XX:HeapDumpPath=data\n\
             -XX:ErrorFile=logs/hs_err_pid%p.log\n\
             8:-Xloggc:logs/gc.log\n\
             9-:-Xlog:gc*,gc+age=trace,safepoint:file=logs/gc.log:utctime,pid,tags:filecount=32\n",
        )
        .unwrap();
        relocate_jvm_files(&path, Path::new("/n/data"), Path::new("/n/logs")).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "-XX:HeapDumpPath=/n/data\n\
             -XX:ErrorFile=/n/logs/hs_err_pid%p.log\n\
             8:-Xloggc:/n/logs/gc.log\n\
             9-:-Xlog:gc*,gc+age=trace,safepoint:file=/n/logs/gc.log:utctime,pid,tags:filecount=32\n"
        );
    }
}
