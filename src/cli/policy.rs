//! `clusteraudit policy render | check | preview | compare | replay`.

use std::{
    io::{BufRead, BufReader, Read, Write},
    path::{Path, PathBuf},
};

use clap::Subcommand;

use clusteraudit_core::{
    api::{ClusterAudit, Envelope, unknown_fields},
    audit::{Event, Policy, PolicyError},
    policy::{
        Rendered,
        envelope::{self, Choice, Released},
        narrows::{Comparison, narrows},
        preview::Preview,
        render::{lint, render},
    },
};

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Print the audit Policy a ClusterAudit renders to.
    Render {
        /// The ClusterAudit (YAML or JSON; `-` for standard input).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// Check an audit Policy file: exit 0 when the kube-apiserver would accept it, 1 with the
    /// reason otherwise.
    Check {
        /// The audit.k8s.io/v1 Policy (`-` for standard input).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// Replay recorded audit events through a candidate policy.
    Preview {
        /// A ClusterAudit or an audit.k8s.io/v1 Policy.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Recorded events, one audit.k8s.io/v1 Event per line (the kube-apiserver's JSON log).
        #[arg(long)]
        events: PathBuf,
        /// One JSON line per event instead of the table: {"auditID", "level", "rule"}.
        #[arg(long)]
        per_event: bool,
    },
    /// Whether a candidate policy only narrows the running one, for every possible request: then
    /// the collector can enforce it without restarting the kube-apiservers. Prints `narrows`
    /// (exit 0), or `widens` and a request the candidate records more of as one JSON line (exit
    /// 1), the same in words on standard error; exit 2 when a file does not parse.
    Compare {
        /// The policy the kube-apiservers run: a ClusterAudit or an audit.k8s.io/v1 Policy.
        #[arg(long)]
        running: PathBuf,
        /// The new policy: a ClusterAudit or an audit.k8s.io/v1 Policy.
        #[arg(long)]
        candidate: PathBuf,
    },
    /// Replay a history of ClusterAudit edits and count the kube-apiserver rollouts it costs:
    /// with `rollout.envelope: Exact` (edits that only narrow are enforced by the collector),
    /// with `Wide`, and restarting for every policy change as auditing did before.
    Replay {
        /// ClusterAudits, one YAML document per edit, oldest first; the first turns auditing on.
        /// An edit may say what it is in the annotation `description`.
        #[arg(long)]
        edits: PathBuf,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyCliError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    NotAClusterAudit { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    InvalidPolicy {
        path: PathBuf,
        #[source]
        source: PolicyError,
    },
    #[error("{path}: expected kind ClusterAudit or Policy, found {found:?}")]
    UnknownKind { path: PathBuf, found: String },
    #[error("{path}: no line is an audit event")]
    NoEvents { path: PathBuf },
    #[error("writing the output: {0}")]
    Write(#[source] std::io::Error),
}

/// Runs a policy command; the error is what goes to standard error, exit status 1.
pub fn run(command: PolicyCommand) -> Result<(), PolicyCliError> {
    match command {
        PolicyCommand::Render { file } => {
            let (_, yaml) = load_candidate(&file)?;
            print_out(&yaml)
        }
        PolicyCommand::Check { file } => {
            let text = read_text(&file)?;
            let policy =
                Policy::from_yaml(&text).map_err(|source| PolicyCliError::InvalidPolicy {
                    path: file.clone(),
                    source,
                })?;
            for warning in lint(&policy) {
                eprintln!("warning: {}", warning.message);
            }
            eprintln!("{}: valid, {} rules", file.display(), policy.rules.len());
            Ok(())
        }
        PolicyCommand::Preview {
            file,
            events,
            per_event,
        } => {
            let (policy, _) = load_candidate(&file)?;
            preview(&policy, &events, per_event)
        }
        PolicyCommand::Compare { running, candidate } => compare(&running, &candidate),
        PolicyCommand::Replay { edits } => replay(&edits),
    }
}

/// Exit 0 when the candidate narrows, 1 when it widens, 2 when a file does not parse: the
/// status a script branches on, so it does not go through the usual error path (always 1).
fn compare(running: &Path, candidate: &Path) -> Result<(), PolicyCliError> {
    let (running, candidate) = match (load_candidate(running), load_candidate(candidate)) {
        (Ok((running, _)), Ok((candidate, _))) => (running, candidate),
        (Err(err), _) | (_, Err(err)) => {
            eprintln!("error: {err}");
            std::process::exit(2);
        }
    };
    let mut out = std::io::stdout().lock();
    match narrows(&running, &candidate) {
        Comparison::Narrows => {
            writeln!(out, "narrows").map_err(PolicyCliError::Write)?;
            out.flush().map_err(PolicyCliError::Write)
        }
        Comparison::Widens(found) => {
            let line = serde_json::to_string(&found).expect("a counterexample serializes");
            writeln!(out, "widens\n{line}").map_err(PolicyCliError::Write)?;
            out.flush().map_err(PolicyCliError::Write)?;
            eprintln!("{}", found.describe());
            std::process::exit(1);
        }
    }
}

/// A ClusterAudit (rendered) or a Policy (checked), with the policy's YAML.
fn load_candidate(path: &Path) -> Result<(Policy, String), PolicyCliError> {
    let text = read_text(path)?;
    let document: serde_json::Value =
        serde_saphyr::from_str(&text).map_err(|err| PolicyCliError::NotAClusterAudit {
            path: path.into(),
            reason: err.to_string(),
        })?;
    let kind = document["kind"].as_str().unwrap_or_default().to_string();
    match kind.as_str() {
        "ClusterAudit" => {
            let rendered = render_audit(path, document)?;
            for warning in lint(&rendered.policy) {
                eprintln!("warning: {}", warning.message);
            }
            Ok((rendered.policy, rendered.yaml))
        }
        "Policy" => {
            let policy =
                Policy::from_yaml(&text).map_err(|source| PolicyCliError::InvalidPolicy {
                    path: path.into(),
                    source,
                })?;
            Ok((policy, text))
        }
        other => Err(PolicyCliError::UnknownKind {
            path: path.into(),
            found: other.to_string(),
        }),
    }
}

/// A ClusterAudit document's policy, rendered.
fn render_audit(path: &Path, document: serde_json::Value) -> Result<Rendered, PolicyCliError> {
    let unknown = unknown_fields(&document);
    if !unknown.is_empty() {
        return Err(PolicyCliError::NotAClusterAudit {
            path: path.into(),
            reason: format!("unknown field(s): {}", unknown.join(", ")),
        });
    }
    let audit: ClusterAudit =
        serde_json::from_value(document).map_err(|err| PolicyCliError::NotAClusterAudit {
            path: path.into(),
            reason: err.to_string(),
        })?;
    let rendered = render(&audit.spec.policy).map_err(|source| PolicyCliError::InvalidPolicy {
        path: path.into(),
        source,
    })?;
    Ok(rendered)
}

/// What one way of running the kube-apiservers has released so far, and the rollouts it took.
#[derive(Default)]
struct Ledger {
    released: Option<(String, Policy)>,
    rollouts: usize,
}

impl Ledger {
    /// Takes one edit; returns what it did, in a word.
    fn take(&mut self, spec: &Rendered, envelope: Option<Envelope>) -> &'static str {
        let Some(envelope) = envelope else {
            // Before: every change of the rendered policy was a new revision.
            if self
                .released
                .as_ref()
                .is_some_and(|(yaml, _)| *yaml == spec.yaml)
            {
                return "-";
            }
            self.released = Some((spec.yaml.clone(), spec.policy.clone()));
            self.rollouts += 1;
            return "restart";
        };
        let released = self
            .released
            .as_ref()
            .map(|(yaml, policy)| Released { yaml, policy });
        let choice = envelope::choose(released, spec, envelope);
        let word = match &choice {
            Choice::Keep { narrowed: false } => "-",
            Choice::Keep { narrowed: true } => "narrows",
            Choice::Spec { .. } | Choice::Wide { .. } => "restart",
        };
        if choice.restarts() {
            let runs = choice.runs(released, spec);
            self.released = Some((runs.yaml.to_string(), runs.policy.clone()));
            self.rollouts += 1;
        }
        word
    }
}

fn replay(edits: &Path) -> Result<(), PolicyCliError> {
    let text = read_text(edits)?;
    let documents: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(&text).map_err(|err| PolicyCliError::NotAClusterAudit {
            path: edits.into(),
            reason: err.to_string(),
        })?;
    let documents: Vec<_> = documents.into_iter().filter(|d| !d.is_null()).collect();
    if documents.is_empty() {
        return Err(PolicyCliError::NotAClusterAudit {
            path: edits.into(),
            reason: "no ClusterAudit document".into(),
        });
    }
    let (mut exact, mut wide, mut before) =
        (Ledger::default(), Ledger::default(), Ledger::default());
    let mut out = std::io::stdout().lock();
    let mut line = |text: String| writeln!(out, "{text}").map_err(PolicyCliError::Write);
    line(format!(
        "{:>4}  {:<8}  {:<8}  {:<13}  description",
        "edit", "exact", "wide", "every-change"
    ))?;
    for (index, document) in documents.into_iter().enumerate() {
        let description = document["metadata"]["annotations"]["description"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let at = PathBuf::from(format!("{} (document {index})", edits.display()));
        let spec = render_audit(&at, document)?;
        let row = (
            exact.take(&spec, Some(Envelope::Exact)),
            wide.take(&spec, Some(Envelope::Wide)),
            before.take(&spec, None),
        );
        line(format!(
            "{index:>4}  {:<8}  {:<8}  {:<13}  {description}",
            row.0, row.1, row.2
        ))?;
    }
    line(format!(
        "rollouts (each restarts every kube-apiserver once): exact {}, wide {}, every-change {}",
        exact.rollouts, wide.rollouts, before.rollouts
    ))
}

fn preview(policy: &Policy, events: &Path, per_event: bool) -> Result<(), PolicyCliError> {
    let reader: Box<dyn Read> = if events == Path::new("-") {
        Box::new(std::io::stdin())
    } else {
        Box::new(
            std::fs::File::open(events).map_err(|source| PolicyCliError::Read {
                path: events.into(),
                source,
            })?,
        )
    };
    let mut preview = Preview::new(policy);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut skipped = 0u64;
    for (number, line) in BufReader::new(reader).lines().enumerate() {
        let line = line.map_err(|source| PolicyCliError::Read {
            path: events.into(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Event>(&line) {
            Ok(event) => {
                let outcome = preview.add(&event, line.len());
                if per_event {
                    serde_json::to_writer(&mut out, &outcome)
                        .map_err(|err| PolicyCliError::Write(err.into()))?;
                    out.write_all(b"\n").map_err(PolicyCliError::Write)?;
                }
            }
            Err(err) => {
                skipped += 1;
                if skipped <= 3 {
                    eprintln!(
                        "{}:{}: skipped, not an audit event: {err}",
                        events.display(),
                        number + 1
                    );
                }
            }
        }
    }
    if skipped > 3 {
        eprintln!("{}: {skipped} lines skipped in all", events.display());
    }
    if preview.report().events == 0 {
        return Err(PolicyCliError::NoEvents {
            path: events.into(),
        });
    }
    if !per_event {
        out.write_all(preview.report().render(policy).as_bytes())
            .map_err(PolicyCliError::Write)?;
    }
    out.flush().map_err(PolicyCliError::Write)
}

fn read_text(path: &Path) -> Result<String, PolicyCliError> {
    let mut text = String::new();
    let result = if path == Path::new("-") {
        std::io::stdin().read_to_string(&mut text).map(|_| ())
    } else {
        std::fs::read_to_string(path).map(|t| text = t)
    };
    result.map_err(|source| PolicyCliError::Read {
        path: path.into(),
        source,
    })?;
    Ok(text)
}

fn print_out(text: &str) -> Result<(), PolicyCliError> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .map_err(PolicyCliError::Write)?;
    out.flush().map_err(PolicyCliError::Write)
}
