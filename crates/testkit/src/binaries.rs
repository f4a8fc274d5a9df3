//! Where the control-plane binaries are: built from the Go module proxy by
//! `scripts/control-plane.sh` into a cache outside the repository.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use super::{Result, TestkitError};

/// Set to a directory holding `etcd`, `kube-apiserver`, `kubectl` (and `helm`) to skip the build
/// script.
pub const BIN_DIR_ENV: &str = "CLUSTERAUDIT_CONTROL_PLANE_BIN";

#[derive(Clone, Debug)]
pub struct Binaries {
    pub dir: PathBuf,
}

/// The directory `env` names, or else the one `scripts/<script>` prints once it has built or
/// fetched what it provides (the script reuses its cache on later runs).
pub(crate) fn provided_dir(env: &str, script: &str) -> std::result::Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os(env) {
        return Ok(PathBuf::from(dir));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../scripts")
        .join(script);
    let output = Command::new("bash")
        .arg(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|err| format!("running {}: {err}", script.display()))?;
    if !output.status.success() {
        return Err(format!("{} failed ({})", script.display(), output.status));
    }
    Ok(PathBuf::from(
        String::from_utf8_lossy(&output.stdout).trim().to_string(),
    ))
}

impl Binaries {
    /// The binaries, building them the first time (the script reuses its cache afterwards).
    pub fn locate() -> Result<Binaries> {
        static LOCATED: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
        let located = LOCATED.get_or_init(|| provided_dir(BIN_DIR_ENV, "control-plane.sh"));
        let dir = located.clone().map_err(TestkitError::BinariesUnavailable)?;
        let binaries = Binaries { dir };
        for name in ["etcd", "kube-apiserver", "kubectl"] {
            if !binaries.path(name).is_file() {
                return Err(TestkitError::BinariesUnavailable(format!(
                    "{} is missing",
                    binaries.path(name).display()
                )));
            }
        }
        Ok(binaries)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn etcd(&self) -> PathBuf {
        self.path("etcd")
    }

    pub fn kube_apiserver(&self) -> PathBuf {
        self.path("kube-apiserver")
    }

    pub fn kubectl(&self) -> PathBuf {
        self.path("kubectl")
    }

    pub fn helm(&self) -> PathBuf {
        self.path("helm")
    }
}

/// Set to a directory holding `alertmanager`, `prometheus` and `promtool` to skip
/// `scripts/alerting.sh`.
pub const ALERTING_BIN_DIR_ENV: &str = "CLUSTERAUDIT_ALERTING_BIN";

/// The alerting binaries' directory (Alertmanager, Prometheus, promtool), building them the first
/// time with `scripts/alerting.sh` (which reuses its cache afterwards).
pub fn alerting_dir() -> Result<PathBuf> {
    static LOCATED: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    let located = LOCATED.get_or_init(|| provided_dir(ALERTING_BIN_DIR_ENV, "alerting.sh"));
    // Said in the message itself, which `expect` shows through Debug.
    let unavailable = |reason: String| {
        TestkitError::AlertingUnavailable(format!(
            "{reason} (scripts/alerting.sh builds Alertmanager, Prometheus and promtool; or set {ALERTING_BIN_DIR_ENV} to a directory holding them)"
        ))
    };
    let dir = located.clone().map_err(unavailable)?;
    for name in ["alertmanager", "prometheus", "promtool"] {
        if !dir.join(name).is_file() {
            return Err(unavailable(format!(
                "{} is missing",
                dir.join(name).display()
            )));
        }
    }
    Ok(dir)
}
