//! A stand-in for the kubelet's static-pod handling, for tests and local demos.
//!
//! It watches one node's manifest directory and runs each pod's first container as a local process
//! (command + args; hostPath volumes are the host's own paths), as the kubelet would:
//! - every non-hidden file in the directory is a pod; a file that does not decode is no pod at all,
//!   so a pod whose manifest turns unreadable is stopped;
//! - a pod is identified by the hash of its decoded object, so a change that does not change the
//!   object (whitespace, key order) does not restart it, and any other change restarts it once;
//! - a container that exits, or fails its liveness probe, is restarted with exponential back-off
//!   (10 s doubling to 5 min by default); readiness follows the readiness probe;
//! - a flag pointing at an absolute path outside every volume mount makes the container fail, as
//!   the file would not exist inside a real container.
//!
//! Every decision is recorded as a [`KubeletEvent`] so that tests can count restarts and see
//! failures; nothing is hidden.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime},
};

use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use sha2::{Digest, Sha256};

use super::{Result, TestkitError, eventually, file_error, process::ManagedProcess};

#[derive(Clone, Debug)]
pub struct KubeletOptions {
    pub node_name: String,
    pub manifest_dir: PathBuf,
    /// Container logs go here, one file per start.
    pub log_dir: PathBuf,
    /// Where bare command names (`kube-apiserver`) are looked up, in order.
    pub bin_dirs: Vec<PathBuf>,
    /// How often the manifest directory is read.
    pub poll_interval: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Grace between SIGTERM and SIGKILL when a container is stopped.
    pub termination_grace: Duration,
}

impl KubeletOptions {
    /// The kubelet's own timings.
    pub fn new(
        node_name: &str,
        manifest_dir: &Path,
        log_dir: &Path,
        bin_dirs: Vec<PathBuf>,
    ) -> Self {
        Self {
            node_name: node_name.into(),
            manifest_dir: manifest_dir.into(),
            log_dir: log_dir.into(),
            bin_dirs,
            poll_interval: Duration::from_millis(200),
            backoff_initial: Duration::from_secs(10),
            backoff_max: Duration::from_secs(300),
            termination_grace: Duration::from_secs(30),
        }
    }
}

/// What the kubelet did, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum KubeletEvent {
    ManifestInvalid {
        time: SystemTime,
        file: String,
        reason: String,
    },
    ContainerStarted {
        time: SystemTime,
        pod: String,
        pid: u32,
        argv: Vec<String>,
        pod_hash: String,
    },
    ContainerFailedToStart {
        time: SystemTime,
        pod: String,
        reason: String,
    },
    ContainerExited {
        time: SystemTime,
        pod: String,
        pid: u32,
        status: String,
    },
    ContainerStopped {
        time: SystemTime,
        pod: String,
        pid: u32,
        reason: String,
    },
    Ready {
        time: SystemTime,
        pod: String,
        pid: u32,
    },
    NotReady {
        time: SystemTime,
        pod: String,
        pid: u32,
    },
    BackOff {
        time: SystemTime,
        pod: String,
        delay: Duration,
    },
}

impl KubeletEvent {
    pub fn pod(&self) -> Option<&str> {
        match self {
            KubeletEvent::ManifestInvalid { .. } => None,
            KubeletEvent::ContainerStarted { pod, .. }
            | KubeletEvent::ContainerFailedToStart { pod, .. }
            | KubeletEvent::ContainerExited { pod, .. }
            | KubeletEvent::ContainerStopped { pod, .. }
            | KubeletEvent::Ready { pod, .. }
            | KubeletEvent::NotReady { pod, .. }
            | KubeletEvent::BackOff { pod, .. } => Some(pod),
        }
    }
}

/// A pod's current state as the kubelet sees it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodStatus {
    pub pod_hash: String,
    pub pid: Option<u32>,
    pub ready: bool,
    /// Container starts after the first one, for this pod hash.
    pub restarts: u32,
    pub last_failure: Option<String>,
}

#[derive(Default)]
struct Shared {
    events: Vec<KubeletEvent>,
    pods: BTreeMap<String, PodStatus>,
    /// Completed reads of the manifest directory, so that a test can wait until a change has
    /// certainly been seen.
    syncs: u64,
}

pub struct Kubelet {
    options: KubeletOptions,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Kubelet {
    pub fn start(options: KubeletOptions) -> Result<Kubelet> {
        for dir in [&options.manifest_dir, &options.log_dir] {
            std::fs::create_dir_all(dir)
                .map_err(file_error("creating a kubelet directory", dir))?;
        }
        clusteraudit_io::tls::install_crypto_provider();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (options, shared, stop) = (options.clone(), shared.clone(), stop.clone());
            std::thread::Builder::new()
                .name(format!("kubelet-{}", options.node_name))
                .spawn(move || Supervisor::new(options, shared, stop).run())
                .map_err(|source| TestkitError::Spawn {
                    name: "the kubelet thread".into(),
                    source,
                })?
        };
        Ok(Kubelet {
            options,
            shared,
            stop,
            thread: Some(thread),
        })
    }

    pub fn options(&self) -> &KubeletOptions {
        &self.options
    }

    pub fn events(&self) -> Vec<KubeletEvent> {
        self.lock().events.clone()
    }

    /// The container starts of one pod, oldest first.
    pub fn starts(&self, pod: &str) -> Vec<KubeletEvent> {
        self.lock()
            .events
            .iter()
            .filter(|e| matches!(e, KubeletEvent::ContainerStarted { .. }) && e.pod() == Some(pod))
            .cloned()
            .collect()
    }

    /// How many times the manifest directory has been read and acted on.
    pub fn syncs(&self) -> u64 {
        self.lock().syncs
    }

    /// Waits until the manifest directory has been read and acted on `count` more times.
    pub async fn wait_syncs(&self, count: u64, timeout: Duration) -> bool {
        let target = self.syncs() + count;
        eventually("the kubelet's syncs", timeout, async || {
            let syncs = self.syncs();
            if syncs >= target { Ok(()) } else { Err(syncs) }
        })
        .await
        .is_ok()
    }

    pub fn pod_status(&self, pod: &str) -> Option<PodStatus> {
        self.lock().pods.get(pod).cloned()
    }

    /// Waits until `done` holds for the pod's status and events, polling; false on timeout.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        mut done: impl FnMut(Option<&PodStatus>, &[KubeletEvent]) -> bool,
        pod: &str,
    ) -> bool {
        eventually(pod, timeout, async || {
            let shared = self.lock();
            if done(shared.pods.get(pod), &shared.events) {
                Ok(())
            } else {
                Err(())
            }
        })
        .await
        .is_ok()
    }

    /// Stops every container and the supervisor; returns once all are gone.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A pod decoded from a manifest, reduced to what running it needs.
struct PodPlan {
    name: String,
    hash: String,
    container: Container,
    /// Absolute host path of the program, or why there is none.
    program: std::result::Result<PathBuf, String>,
    /// The argv with container paths mapped to host paths, or why the container cannot start.
    args: std::result::Result<Vec<String>, String>,
    termination_grace: Option<Duration>,
}

struct Running {
    process: ManagedProcess,
    started: Instant,
    ready: bool,
    started_up: bool,
    readiness: ProbeState,
    liveness: ProbeState,
    startup: ProbeState,
}

#[derive(Default)]
struct ProbeState {
    next: Option<Instant>,
    failures: i32,
}

struct PodRunner {
    plan: PodPlan,
    running: Option<Running>,
    next_start: Instant,
    backoff: Option<Duration>,
    starts: u32,
}

struct Supervisor {
    options: KubeletOptions,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    pods: BTreeMap<String, PodRunner>,
    reported_invalid: BTreeMap<String, String>,
    http: Option<reqwest::blocking::Client>,
}

impl Supervisor {
    fn new(options: KubeletOptions, shared: Arc<Mutex<Shared>>, stop: Arc<AtomicBool>) -> Self {
        // The kubelet does not verify the certificates of the endpoints it probes.
        let http = reqwest::blocking::Client::builder()
            .tls_danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(2))
            .build()
            .ok();
        Self {
            options,
            shared,
            stop,
            pods: BTreeMap::new(),
            reported_invalid: BTreeMap::new(),
            http,
        }
    }

    fn run(mut self) {
        while !self.stop.load(Ordering::SeqCst) {
            self.sync_manifests();
            let names: Vec<String> = self.pods.keys().cloned().collect();
            for name in names {
                self.tick(&name);
            }
            self.shared.lock().unwrap_or_else(|e| e.into_inner()).syncs += 1;
            std::thread::sleep(self.options.poll_interval);
        }
        let names: Vec<String> = self.pods.keys().cloned().collect();
        for name in names {
            self.stop_pod(&name, "kubelet stopped");
        }
    }

    fn record(&self, event: KubeletEvent) {
        self.shared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .events
            .push(event);
    }

    fn update_status(&self, pod: &str, update: impl FnOnce(&mut PodStatus)) {
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        update(shared.pods.entry(pod.to_string()).or_default());
    }

    /// Reads the manifest directory and reconciles the set of pods with it.
    fn sync_manifests(&mut self) {
        let mut desired: BTreeMap<String, PodPlan> = BTreeMap::new();
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&self.options.manifest_dir)
            .map(|dir| dir.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        entries.sort();
        let mut still_invalid = BTreeMap::new();
        for path in entries {
            let Some(file) = path
                .file_name()
                .and_then(|n| n.to_str())
                .map(str::to_string)
            else {
                continue;
            };
            if file.starts_with('.') || !path.is_file() {
                continue;
            }
            match self.plan(&path) {
                Ok(plan) if desired.contains_key(&plan.name) => {
                    still_invalid.insert(
                        file.clone(),
                        format!("a second manifest for pod {:?}", plan.name),
                    );
                }
                Ok(plan) => {
                    desired.insert(plan.name.clone(), plan);
                }
                Err(reason) => {
                    still_invalid.insert(file, reason);
                }
            }
        }
        for (file, reason) in &still_invalid {
            if self.reported_invalid.get(file) != Some(reason) {
                self.record(KubeletEvent::ManifestInvalid {
                    time: SystemTime::now(),
                    file: file.clone(),
                    reason: reason.clone(),
                });
            }
        }
        self.reported_invalid = still_invalid;

        let current: Vec<String> = self.pods.keys().cloned().collect();
        for name in current {
            match desired.get(&name) {
                None => {
                    self.stop_pod(&name, "manifest removed");
                    self.pods.remove(&name);
                    self.shared
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .pods
                        .remove(&name);
                }
                Some(plan) if plan.hash != self.pods[&name].plan.hash => {
                    self.stop_pod(&name, "manifest changed");
                    self.pods.remove(&name);
                }
                Some(_) => {}
            }
        }
        for (name, plan) in desired {
            if self.pods.contains_key(&name) {
                continue;
            }
            let hash = plan.hash.clone();
            self.pods.insert(
                name.clone(),
                PodRunner {
                    plan,
                    running: None,
                    next_start: Instant::now(),
                    backoff: None,
                    starts: 0,
                },
            );
            self.update_status(&name, |status| {
                *status = PodStatus {
                    pod_hash: hash,
                    ..Default::default()
                }
            });
        }
    }

    fn plan(&self, path: &Path) -> std::result::Result<PodPlan, String> {
        let text = std::fs::read_to_string(path).map_err(|err| format!("unreadable: {err}"))?;
        let pod: Pod = serde_saphyr::from_str(&text).map_err(|err| format!("not a Pod: {err}"))?;
        if pod.metadata.name.as_deref().unwrap_or("").is_empty() {
            return Err("the pod has no name".into());
        }
        let canonical = serde_json::to_vec(&pod).map_err(|err| err.to_string())?;
        let hash = hex::encode(&Sha256::digest(&canonical)[..8]);
        let spec = pod.spec.clone().ok_or("the pod has no spec")?;
        let container = spec
            .containers
            .first()
            .cloned()
            .ok_or("the pod has no containers")?;
        let mut argv: Vec<String> = container.command.clone().unwrap_or_default();
        argv.extend(container.args.clone().unwrap_or_default());
        if argv.is_empty() {
            return Err("the container has no command".into());
        }
        let mounts = self.mounts(&spec, &container);
        let program = self.resolve_program(&argv[0]);
        let args = mounts.and_then(|mounts| map_paths(&argv[1..], &mounts));
        Ok(PodPlan {
            name: pod.metadata.name.clone().unwrap_or_default(),
            hash,
            container,
            program,
            args,
            termination_grace: spec
                .termination_grace_period_seconds
                .map(|s| Duration::from_secs(s.max(0) as u64)),
        })
    }

    /// (mountPath, hostPath) pairs, checked as the kubelet checks them before starting a pod.
    fn mounts(
        &self,
        spec: &k8s_openapi::api::core::v1::PodSpec,
        container: &Container,
    ) -> std::result::Result<Vec<(PathBuf, PathBuf)>, String> {
        let volumes = spec.volumes.clone().unwrap_or_default();
        let mut pairs = Vec::new();
        for mount in container.volume_mounts.clone().unwrap_or_default() {
            let volume = volumes
                .iter()
                .find(|v| v.name == mount.name)
                .ok_or_else(|| format!("volumeMount {:?} names no volume", mount.name))?;
            let host_path = volume
                .host_path
                .as_ref()
                .ok_or_else(|| format!("volume {:?} is not a hostPath volume", volume.name))?;
            let host = PathBuf::from(&host_path.path);
            match host_path.type_.as_deref().unwrap_or("") {
                "DirectoryOrCreate" => {
                    std::fs::create_dir_all(&host).map_err(|err| {
                        format!("hostPath {} could not be created: {err}", host.display())
                    })?;
                }
                "Directory" if !host.is_dir() => {
                    return Err(format!(
                        "hostPath type check failed: {} is not a directory",
                        host.display()
                    ));
                }
                "File" if !host.is_file() => {
                    return Err(format!(
                        "hostPath type check failed: {} is not a file",
                        host.display()
                    ));
                }
                "FileOrCreate" if !host.exists() => {
                    if let Some(parent) = host.parent() {
                        let _ = std::fs::create_dir_all(parent);
                    }
                    std::fs::write(&host, b"").map_err(|err| {
                        format!("hostPath {} could not be created: {err}", host.display())
                    })?;
                }
                _ => {}
            }
            if let Some(sub) = mount.sub_path.as_deref().filter(|s| !s.is_empty()) {
                pairs.push((PathBuf::from(&mount.mount_path), host.join(sub)));
            } else {
                pairs.push((PathBuf::from(&mount.mount_path), host));
            }
        }
        Ok(pairs)
    }

    fn resolve_program(&self, command: &str) -> std::result::Result<PathBuf, String> {
        let path = Path::new(command);
        if path.is_absolute() {
            return Ok(path.to_path_buf());
        }
        self.options
            .bin_dirs
            .iter()
            .map(|dir| dir.join(command))
            .find(|candidate| candidate.is_file())
            .ok_or_else(|| format!("executable {command:?} not found in the image"))
    }

    fn tick(&mut self, name: &str) {
        let now = Instant::now();
        let Some(runner) = self.pods.get_mut(name) else {
            return;
        };
        if let Some(running) = runner.running.as_mut() {
            if let Some(status) = running.process.exit_status() {
                let pid = running.process.pid();
                runner.running = None;
                self.record(KubeletEvent::ContainerExited {
                    time: SystemTime::now(),
                    pod: name.into(),
                    pid,
                    status: status.to_string(),
                });
                self.update_status(name, |s| {
                    s.pid = None;
                    s.ready = false;
                    s.last_failure = Some(format!("container exited: {status}"));
                });
                self.back_off(name);
                return;
            }
            self.probe(name, now);
            return;
        }
        if now >= runner.next_start {
            self.start_container(name);
        }
    }

    fn back_off(&mut self, name: &str) {
        let (initial, max) = (self.options.backoff_initial, self.options.backoff_max);
        let Some(runner) = self.pods.get_mut(name) else {
            return;
        };
        let delay = runner.backoff.map_or(initial, |d| (d * 2).min(max));
        runner.backoff = Some(delay);
        runner.next_start = Instant::now() + delay;
        self.record(KubeletEvent::BackOff {
            time: SystemTime::now(),
            pod: name.into(),
            delay,
        });
    }

    fn start_container(&mut self, name: &str) {
        let runner = self.pods.get_mut(name).expect("the pod is known");
        let prepared = runner
            .plan
            .program
            .clone()
            .and_then(|program| runner.plan.args.clone().map(|args| (program, args)));
        let (program, args) = match prepared {
            Ok(ready) => ready,
            Err(reason) => {
                self.record(KubeletEvent::ContainerFailedToStart {
                    time: SystemTime::now(),
                    pod: name.into(),
                    reason: reason.clone(),
                });
                self.update_status(name, |s| s.last_failure = Some(reason));
                self.back_off(name);
                return;
            }
        };
        runner.starts += 1;
        let log = self
            .options
            .log_dir
            .join(format!("{name}-{}-{}.log", runner.plan.hash, runner.starts));
        let process = match ManagedProcess::spawn(name, &program, &args, &log) {
            Ok(process) => process,
            Err(err) => {
                let reason = err.to_string();
                self.record(KubeletEvent::ContainerFailedToStart {
                    time: SystemTime::now(),
                    pod: name.into(),
                    reason: reason.clone(),
                });
                self.update_status(name, |s| s.last_failure = Some(reason));
                self.back_off(name);
                return;
            }
        };
        let pid = process.pid();
        let now = Instant::now();
        let initial = |probe: &Option<Probe>| ProbeState {
            next: probe.as_ref().map(|p| {
                now + Duration::from_secs(p.initial_delay_seconds.unwrap_or(0).max(0) as u64)
            }),
            failures: 0,
        };
        let container = &runner.plan.container;
        runner.running = Some(Running {
            process,
            started: now,
            ready: false,
            started_up: container.startup_probe.is_none(),
            readiness: initial(&container.readiness_probe),
            liveness: initial(&container.liveness_probe),
            startup: initial(&container.startup_probe),
        });
        let mut argv = vec![program.display().to_string()];
        argv.extend(args);
        let pod_hash = runner.plan.hash.clone();
        let restarts = runner.starts - 1;
        self.record(KubeletEvent::ContainerStarted {
            time: SystemTime::now(),
            pod: name.into(),
            pid,
            argv,
            pod_hash,
        });
        self.update_status(name, |s| {
            s.pid = Some(pid);
            s.ready = false;
            s.restarts = restarts;
        });
    }

    fn probe(&mut self, name: &str, now: Instant) {
        let http = self.http.clone();
        let runner = self.pods.get_mut(name).expect("the pod is known");
        let container = runner.plan.container.clone();
        let running = runner.running.as_mut().expect("the container runs");
        let pid = running.process.pid();

        if !running.started_up {
            if let Some(probe) = &container.startup_probe
                && due(&running.startup, now)
            {
                let ok = check(http.as_ref(), probe);
                schedule(&mut running.startup, probe, now, ok);
                if ok {
                    running.started_up = true;
                } else if running.startup.failures >= probe.failure_threshold.unwrap_or(3) {
                    self.kill_unhealthy(name, "startup probe failed");
                    return;
                }
            }
        } else if let Some(probe) = &container.liveness_probe
            && due(&running.liveness, now)
        {
            let ok = check(http.as_ref(), probe);
            schedule(&mut running.liveness, probe, now, ok);
            if running.liveness.failures >= probe.failure_threshold.unwrap_or(3) {
                self.kill_unhealthy(name, "liveness probe failed");
                return;
            }
        }

        let runner = self.pods.get_mut(name).expect("the pod is known");
        let running = runner.running.as_mut().expect("the container runs");
        let was_ready = running.ready;
        match &container.readiness_probe {
            None => running.ready = running.started.elapsed() > Duration::ZERO,
            Some(probe) if due(&running.readiness, now) => {
                let ok = check(http.as_ref(), probe);
                schedule(&mut running.readiness, probe, now, ok);
                if ok {
                    running.ready = true;
                } else if running.readiness.failures >= probe.failure_threshold.unwrap_or(3) {
                    running.ready = false;
                }
            }
            Some(_) => {}
        }
        let ready = running.ready;
        if ready != was_ready {
            if ready {
                // A container that made it to ready earns a fresh back-off.
                runner.backoff = None;
            }
            self.record(if ready {
                KubeletEvent::Ready {
                    time: SystemTime::now(),
                    pod: name.into(),
                    pid,
                }
            } else {
                KubeletEvent::NotReady {
                    time: SystemTime::now(),
                    pod: name.into(),
                    pid,
                }
            });
            self.update_status(name, |s| {
                s.ready = ready;
                if ready {
                    s.last_failure = None;
                }
            });
        }
    }

    fn kill_unhealthy(&mut self, name: &str, reason: &str) {
        self.stop_pod(name, reason);
        self.update_status(name, |s| s.last_failure = Some(reason.to_string()));
        self.back_off(name);
    }

    fn stop_pod(&mut self, name: &str, reason: &str) {
        let grace = self.options.termination_grace;
        let Some(runner) = self.pods.get_mut(name) else {
            return;
        };
        let grace = runner
            .plan
            .termination_grace
            .map_or(grace, |g| g.min(grace));
        if let Some(mut running) = runner.running.take() {
            let pid = running.process.pid();
            running.process.stop(grace);
            self.record(KubeletEvent::ContainerStopped {
                time: SystemTime::now(),
                pod: name.into(),
                pid,
                reason: reason.into(),
            });
            self.update_status(name, |s| {
                s.pid = None;
                s.ready = false;
            });
        }
    }
}

fn due(state: &ProbeState, now: Instant) -> bool {
    state.next.is_some_and(|next| now >= next)
}

fn schedule(state: &mut ProbeState, probe: &Probe, now: Instant, ok: bool) {
    state.failures = if ok { 0 } else { state.failures + 1 };
    state.next = Some(now + Duration::from_secs(probe.period_seconds.unwrap_or(10).max(1) as u64));
}

/// One probe attempt: HTTP(S) GET answered 2xx/3xx, or a TCP connect.
fn check(http: Option<&reqwest::blocking::Client>, probe: &Probe) -> bool {
    let port_of = |port: &k8s_openapi::apimachinery::pkg::util::intstr::IntOrString| match port {
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(p) => Some(*p as u16),
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s) => s.parse().ok(),
    };
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).clamp(1, 2) as u64);
    if let Some(get) = &probe.http_get {
        let (Some(http), Some(port)) = (http, port_of(&get.port)) else {
            return false;
        };
        let scheme = get.scheme.as_deref().unwrap_or("HTTP").to_ascii_lowercase();
        let host = get.host.as_deref().unwrap_or("127.0.0.1");
        let path = get.path.as_deref().unwrap_or("/");
        let url = format!("{scheme}://{host}:{port}{path}");
        return http
            .get(url)
            .timeout(timeout)
            .send()
            .is_ok_and(|r| r.status().is_success() || r.status().is_redirection());
    }
    if let Some(tcp) = &probe.tcp_socket {
        let Some(port) = port_of(&tcp.port) else {
            return false;
        };
        let host = tcp.host.as_deref().unwrap_or("127.0.0.1");
        return format!("{host}:{port}")
            .parse()
            .ok()
            .is_some_and(|addr| std::net::TcpStream::connect_timeout(&addr, timeout).is_ok());
    }
    // Exec and gRPC probes are not played; such a probe counts as passing.
    true
}

/// Maps every absolute path in `--flag=/path` (and bare `/path`) arguments from container paths
/// to host paths; a path under no mount does not exist in the container.
fn map_paths(
    args: &[String],
    mounts: &[(PathBuf, PathBuf)],
) -> std::result::Result<Vec<String>, String> {
    args.iter()
        .map(|arg| {
            let (prefix, value) = match arg.split_once('=') {
                Some((flag, value)) if flag.starts_with('-') => (format!("{flag}="), value),
                _ => (String::new(), arg.as_str()),
            };
            if !value.starts_with('/') {
                return Ok(arg.clone());
            }
            let mapped = value
                .split(',')
                .map(|part| map_path(part, mounts).ok_or(part))
                .collect::<std::result::Result<Vec<String>, &str>>()
                .map_err(|missing| {
                    format!("{arg}: {missing} is not inside any volume mount, so the container cannot see it")
                })?;
            Ok(format!("{prefix}{}", mapped.join(",")))
        })
        .collect()
}

fn map_path(path: &str, mounts: &[(PathBuf, PathBuf)]) -> Option<String> {
    let path = Path::new(path);
    mounts
        .iter()
        .filter(|(mount, _)| path.starts_with(mount))
        // The deepest mount shadows the ones above it.
        .max_by_key(|(mount, _)| mount.components().count())
        .map(|(mount, host)| {
            let rest = path.strip_prefix(mount).expect("checked by starts_with");
            if rest.as_os_str().is_empty() {
                host.display().to_string()
            } else {
                host.join(rest).display().to_string()
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_through_the_deepest_mount() {
        let mounts = vec![
            (PathBuf::from("/etc/kubernetes"), PathBuf::from("/host/k8s")),
            (
                PathBuf::from("/etc/kubernetes/audit"),
                PathBuf::from("/host/audit"),
            ),
        ];
        let args = vec![
            "--audit-policy-file=/etc/kubernetes/audit/policy.yaml".to_string(),
            "--tls-cert-file=/etc/kubernetes/pki/apiserver.crt".to_string(),
            "--v=2".to_string(),
        ];
        assert_eq!(
            map_paths(&args, &mounts).unwrap(),
            vec![
                "--audit-policy-file=/host/audit/policy.yaml",
                "--tls-cert-file=/host/k8s/pki/apiserver.crt",
                "--v=2",
            ]
        );
    }

    #[test]
    fn a_path_outside_every_mount_keeps_the_container_from_starting() {
        let mounts = vec![(
            PathBuf::from("/etc/kubernetes/pki"),
            PathBuf::from("/etc/kubernetes/pki"),
        )];
        let err = map_paths(
            &["--audit-policy-file=/etc/kubernetes/audit/p.yaml".to_string()],
            &mounts,
        )
        .unwrap_err();
        assert!(err.contains("not inside any volume mount"), "{err}");
    }
}
