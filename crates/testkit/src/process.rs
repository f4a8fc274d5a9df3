//! Child processes that never outlive their owner: stopped on drop, and killed by the kernel if the
//! owning thread dies first (a test that panics, a runner that is killed).

use std::{
    ffi::OsString,
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

/// How [`ManagedProcess::spawn_with`] starts a process, beyond its program and arguments.
#[derive(Clone, Debug, Default)]
pub struct SpawnOptions {
    /// Set on top of the environment it inherits.
    pub env: Vec<(OsString, OsString)>,
    /// The user and group ids it runs as, with no supplementary groups; changing them needs root.
    pub user: Option<(u32, u32)>,
}

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
        Self::spawn_with(name, program, args, log_path, &SpawnOptions::default())
    }

    /// [`ManagedProcess::spawn`], with environment variables of its own or as another user.
    pub fn spawn_with(
        name: impl Into<String>,
        program: &Path,
        args: &[String],
        log_path: &Path,
        options: &SpawnOptions,
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
            .envs(options.env.iter().map(|(key, value)| (key, value)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        if let Some((uid, gid)) = options.user {
            use std::os::unix::process::CommandExt;
            // As root, std also drops the supplementary groups.
            command.uid(uid).gid(gid);
        }
        // A change of user clears the parent-death signal; std changes the user before this
        // closure runs, so the signal set here holds for a process run as another user too.
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn a_process_run_as_another_user_still_dies_with_the_thread_that_started_it() {
        let dir = tempfile::tempdir().unwrap();
        let me = std::fs::metadata("/proc/self").unwrap();
        // Without root, switching to one's own ids still takes the same path through std.
        let user = if me.uid() == 0 {
            (65534, 65534)
        } else {
            (me.uid(), me.gid())
        };
        let log = dir.path().join("sleep.log");
        let pid = std::thread::spawn(move || {
            let process = ManagedProcess::spawn_with(
                "sleep",
                Path::new("sleep"),
                &["600".to_string()],
                &log,
                &SpawnOptions {
                    user: Some(user),
                    ..Default::default()
                },
            )
            .unwrap();
            let pid = process.pid();
            assert_eq!(
                std::fs::metadata(format!("/proc/{pid}")).unwrap().uid(),
                user.0
            );
            // As if the owner never got to stop it: only the kernel's parent-death signal can.
            std::mem::forget(process);
            pid
        })
        .join()
        .unwrap();
        eventually_blocking(
            "the orphaned process to die",
            Duration::from_secs(10),
            || {
                if pid_alive(pid) { Err(()) } else { Ok(()) }
            },
        )
        .unwrap();
    }
}
