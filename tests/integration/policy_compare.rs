//! `clusteraudit policy compare`: the real binary on policy files, its output and exit status.

use std::{path::Path, process::Command};

use serde_json::Value;

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/clusteraudit.yaml");

struct Outcome {
    status: i32,
    stdout: String,
    stderr: String,
}

fn compare(running: &Path, candidate: &Path) -> Outcome {
    let output = Command::new(env!("CARGO_BIN_EXE_clusteraudit"))
        .args(["policy", "compare", "--running"])
        .arg(running)
        .arg("--candidate")
        .arg(candidate)
        .output()
        .expect("the binary runs");
    Outcome {
        status: output.status.code().expect("an exit status"),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

/// The example ClusterAudit with one text replaced.
fn example_with(dir: &Path, name: &str, from: &str, to: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(EXAMPLE).unwrap();
    assert!(text.contains(from), "the example has {from:?}");
    let path = dir.join(name);
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    path
}

fn policy_file(dir: &Path, name: &str, rules: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!("apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n{rules}"),
    )
    .unwrap();
    path
}

#[test]
fn a_narrowing_change_prints_narrows_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let all = example_with(
        dir.path(),
        "all.yaml",
        "profile: Default ",
        "profile: AllRequestBodies ",
    );
    let outcome = compare(&all, Path::new(EXAMPLE));
    assert_eq!(outcome.status, 0, "{}", outcome.stderr);
    assert_eq!(outcome.stdout, "narrows\n");
    // Omitting one more stage narrows too.
    let fewer_stages = example_with(
        dir.path(),
        "stages.yaml",
        "omitStages: [RequestReceived]",
        "omitStages: [RequestReceived, ResponseStarted]",
    );
    let outcome = compare(Path::new(EXAMPLE), &fewer_stages);
    assert_eq!((outcome.status, outcome.stdout.as_str()), (0, "narrows\n"));
}

#[test]
fn a_widening_change_prints_widens_and_a_counterexample_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let running = policy_file(
        dir.path(),
        "running.yaml",
        "- level: Metadata\n  resources: [{group: \"\", resources: [secrets]}]\n- level: Request\n",
    );
    // The candidate records alice's reads of secrets in kube-system at Request.
    let candidate = policy_file(
        dir.path(),
        "candidate.yaml",
        "- level: Request\n  users: [alice]\n  verbs: [get]\n  namespaces: [kube-system]\n  \
         resources: [{group: \"\", resources: [secrets]}]\n\
         - level: Metadata\n  resources: [{group: \"\", resources: [secrets]}]\n- level: Request\n",
    );
    let outcome = compare(&running, &candidate);
    assert_eq!(outcome.status, 1, "{}", outcome.stderr);
    let lines: Vec<&str> = outcome.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", outcome.stdout);
    assert_eq!(lines[0], "widens");
    assert!(lines[1].starts_with(r#"{"user":"#), "{}", lines[1]);
    let line: Value = serde_json::from_str(lines[1]).expect("one JSON line");
    let keys: Vec<&str> = line
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    let mut expected = vec![
        "user",
        "groups",
        "verb",
        "apiGroup",
        "resource",
        "subresource",
        "namespace",
        "name",
        "path",
        "runningLevel",
        "candidateLevel",
    ];
    expected.sort();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(sorted, expected);
    assert_eq!(line["user"], "alice");
    assert_eq!(line["verb"], "get");
    assert_eq!(line["resource"], "secrets");
    assert_eq!(line["namespace"], "kube-system");
    assert_eq!(line["runningLevel"], "Metadata");
    assert_eq!(line["candidateLevel"], "Request");
    assert!(
        outcome.stderr.contains(
            "a get of secrets in kube-system by alice would be recorded at Request; the running \
             policy records Metadata: a restart is needed"
        ),
        "{}",
        outcome.stderr
    );
    // The other way round it narrows.
    let outcome = compare(&candidate, &running);
    assert_eq!((outcome.status, outcome.stdout.as_str()), (0, "narrows\n"));
}

#[test]
fn a_cluster_audit_and_a_policy_compare_with_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let rendered = Command::new(env!("CARGO_BIN_EXE_clusteraudit"))
        .args(["policy", "render", "-f", EXAMPLE])
        .output()
        .unwrap();
    assert!(rendered.status.success());
    let policy = dir.path().join("rendered.yaml");
    std::fs::write(&policy, rendered.stdout).unwrap();
    for (running, candidate) in [
        (policy.as_path(), Path::new(EXAMPLE)),
        (Path::new(EXAMPLE), policy.as_path()),
    ] {
        let outcome = compare(running, candidate);
        assert_eq!(outcome.status, 0, "{}", outcome.stderr);
        assert_eq!(outcome.stdout, "narrows\n");
    }
    // Recording managed fields the running kube-apiservers strip is a widening.
    let managed = example_with(
        dir.path(),
        "managed.yaml",
        "omitManagedFields: true",
        "omitManagedFields: false",
    );
    let outcome = compare(&policy, &managed);
    assert_eq!(outcome.status, 1, "{}", outcome.stderr);
    assert!(
        outcome.stderr.contains("managed fields"),
        "{}",
        outcome.stderr
    );
}

#[test]
fn a_file_that_does_not_parse_exits_2_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.yaml");
    std::fs::write(
        &broken,
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules: [",
    )
    .unwrap();
    let misspelt = policy_file(
        dir.path(),
        "misspelt.yaml",
        "- level: Metadata\n  resource: []\n",
    );
    for (running, candidate) in [
        (broken.as_path(), Path::new(EXAMPLE)),
        (Path::new(EXAMPLE), misspelt.as_path()),
        (
            Path::new(EXAMPLE),
            dir.path().join("missing.yaml").as_path(),
        ),
    ] {
        let outcome = compare(running, candidate);
        assert_eq!(
            outcome.status, 2,
            "{running:?} {candidate:?}: {}",
            outcome.stderr
        );
        assert!(outcome.stdout.is_empty(), "{}", outcome.stdout);
        assert!(outcome.stderr.starts_with("error: "), "{}", outcome.stderr);
    }
    let outcome = compare(Path::new(EXAMPLE), &misspelt);
    assert!(outcome.stderr.contains("resource"), "{}", outcome.stderr);
}

/// The README's figure: the twenty edits of `examples/policy-edits.yaml` cost nine rollouts with
/// the exact envelope, three with the wide one, and twenty when every change restarted.
#[test]
fn replaying_the_example_edits_counts_the_rollouts_each_envelope_costs() {
    let edits = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/policy-edits.yaml");
    let output = Command::new(env!("CARGO_BIN_EXE_clusteraudit"))
        .args(["policy", "replay", "--edits", edits])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rows: Vec<&str> = stdout
        .lines()
        .skip(1)
        .filter(|l| !l.starts_with("rollouts"))
        .collect();
    assert_eq!(rows.len(), 20, "{stdout}");
    // Every edit changes the policy, so each restarted everything before.
    for row in &rows {
        assert_eq!(row.split_whitespace().nth(3), Some("restart"), "{row}");
    }
    assert!(
        stdout.contains("exact 9, wide 3, every-change 20"),
        "{stdout}"
    );

    let bad = std::env::temp_dir().join(format!("edits-{}.yaml", std::process::id()));
    std::fs::write(
        &bad,
        "kind: ClusterAudit\nspec: {policy: {profile: Loud}}\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_clusteraudit"))
        .args(["policy", "replay", "--edits"])
        .arg(&bad)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&bad);
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("document 0"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
