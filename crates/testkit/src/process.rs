//! Child processes that never outlive their owner: stopped on drop, and killed by the kernel if the
//! owning thread dies first (a test that panics, a runner that is killed).

use std::{
    fs::File,
    io::{Read, Seek, SeekFrom},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::Duration,
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use super::{Result, TestkitError, eventually_blocking, file_error};

pub struct ManagedProcess {
    name: String,
    child: Child,
    log_path: PathBuf,
    exit: Option<ExitStatus>,
}

impl ManagedProcess {
    /// Starts `program` with its stdout and stderr appended to `log_path`.
    pub fn spawn(
        name: impl Into<String>,
        program: &Path,
        args: &[String],
        log_path: &Path,
    ) -> Result<Self> {
        let name = name.into();
        let log = File::options()
            .create(true)
            .append(true)
            .open(log_path)
            .map_err(file_error("opening a process log", log_path))?;
        let log_err = log
            .try_clone()
            .map_err(file_error("opening a process log", log_path))?;
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        // SAFETY: the closure runs between fork and exec and only makes an async-signal-safe
        // system call.
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
            });
        }
        let child = command.spawn().map_err(|source| TestkitError::Spawn {
            name: name.clone(),
            source,
        })?;
        Ok(Self {
            name,
            child,
            log_path: log_path.to_path_buf(),
            exit: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The exit status once the process has ended.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    pub fn is_running(&mut self) -> bool {
        self.exit_status().is_none()
    }

    /// SIGKILL at once, as a crash or the OOM killer would; returns once the process is reaped.
    pub fn kill_now(&mut self) -> Option<ExitStatus> {
        if self.exit_status().is_none() {
            let _ = self.child.kill();
            self.exit = self.child.wait().ok();
        }
        self.exit
    }

    /// SIGTERM, then SIGKILL after `grace`; returns once the process is reaped.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.exit_status() {
            return Some(status);
        }
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        if let Ok(status) = eventually_blocking("an exit after SIGTERM", grace, || {
            self.exit_status().ok_or(())
        }) {
            return Some(status);
        }
        let _ = self.child.kill();
        self.exit = self.child.wait().ok();
        self.exit
    }

    /// The last `lines` lines of the process log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path, lines)
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// The last `lines` lines of a log file (read from its last 64 KiB).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Whether a process with this pid exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}
