//! The `strom server` command line: Kafka property files, overrides and config errors.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn strom(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_strom"))
        .args(args)
        .output()
        .expect("run strom")
}

fn strom_server(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_strom"))
        .arg("server")
        .args(args)
        .output()
        .expect("run strom")
}

#[test]
fn a_misspelt_key_exits_2_naming_the_key_and_the_closest_known_one() {
    let out = strom_server(&["--override", "log.segmnet.bytes=1000"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("'log.segmnet.bytes'")
            && stderr.contains("did you mean 'log.segment.bytes'"),
        "{stderr}"
    );
}

#[test]
fn a_malformed_value_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("server.properties");
    std::fs::write(&file, "num.partitions=three\n").unwrap();
    let out = strom_server(&["--config", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("'num.partitions'"));
    let missing = strom_server(&["--config", "/nonexistent/server.properties"]);
    assert_eq!(missing.status.code(), Some(2));
}

#[test]
fn a_kafka_server_properties_file_starts_with_one_warning_per_unimplemented_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("server.properties");
    std::fs::write(
        &file,
        "process.roles=broker,controller\nnode.id=1\nnum.network.threads=3\nnum.io.threads=8\n\
         listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT\nnum.partitions=3\n",
    )
    .unwrap();
    let config = format!("--config={}", file.display());
    let logs = format!("log.dirs={}", dir.path().join("logs").display());
    // A node started from a file refuses unformatted storage, naming the fix.
    let refused = strom_server(&[
        &config,
        "--override",
        "listeners=PLAINTEXT://127.0.0.1:0",
        "--override",
        &logs,
    ]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("strom storage format"));
    let cluster_id = String::from_utf8(strom(&["storage", "random-uuid"]).stdout)
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(cluster_id.len(), 22);
    let formatted = strom(&[
        "storage",
        "format",
        "--cluster-id",
        &cluster_id,
        &config,
        "--override",
        &logs,
    ]);
    assert!(
        formatted.status.success(),
        "{}",
        String::from_utf8_lossy(&formatted.stderr)
    );
    let again = strom(&[
        "storage",
        "format",
        "--cluster-id",
        &cluster_id,
        &config,
        "--override",
        &logs,
    ]);
    assert!(!again.status.success(), "formatting twice is refused");
    let mut child = Command::new(env!("CARGO_BIN_EXE_strom"))
        .args([
            "server",
            &config,
            "--override",
            "listeners=PLAINTEXT://127.0.0.1:0",
            "--override",
        ])
        .arg(format!("log.dirs={}", dir.path().join("logs").display()))
        .env("STROM_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert!(line.starts_with("strom listening on 127.0.0.1:"), "{line}");
    assert!(
        line.contains(&format!("cluster.id={cluster_id}")),
        "the formatted cluster id is used: {line}"
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for key in [
        "num.network.threads",
        "num.io.threads",
        "listener.security.protocol.map",
    ] {
        assert_eq!(
            stderr.matches(&format!("'{key}'")).count(),
            1,
            "one warning for {key}:\n{stderr}"
        );
    }
}

#[test]
fn roles_voters_and_listeners_that_do_not_fit_together_are_refused_with_the_key() {
    let broker_only = strom_server(&["--override", "process.roles=broker"]);
    assert_eq!(broker_only.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&broker_only.stderr).contains("'controller.quorum.voters'"));
    let no_controller_listener = strom_server(&[
        "--override",
        "controller.quorum.voters=1@127.0.0.1:1,2@127.0.0.1:2,3@127.0.0.1:3",
    ]);
    assert_eq!(no_controller_listener.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&no_controller_listener.stderr).contains("'listeners'"));
    let not_a_voter = strom_server(&[
        "--override",
        "node.id=7",
        "--override",
        "controller.quorum.voters=1@127.0.0.1:1,2@127.0.0.1:2,3@127.0.0.1:3",
    ]);
    assert_eq!(not_a_voter.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&not_a_voter.stderr).contains("'controller.quorum.voters'"));
    let malformed = strom_server(&["--override", "controller.quorum.voters=one@host"]);
    assert_eq!(malformed.status.code(), Some(2));
}

#[test]
fn a_cluster_id_that_begins_with_a_dash_formats_like_any_other() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("server.properties");
    std::fs::write(
        &file,
        format!("log.dirs={}\n", dir.path().join("logs").display()),
    )
    .unwrap();
    let formatted = strom(&[
        "storage",
        "format",
        "--cluster-id",
        "-8LmXAOkQiuVxlJtHOXaPw",
        "--config",
        file.to_str().unwrap(),
    ]);
    assert!(
        formatted.status.success(),
        "{}",
        String::from_utf8_lossy(&formatted.stderr)
    );
    let meta = std::fs::read_to_string(dir.path().join("logs/meta.properties")).unwrap();
    assert!(meta.contains("cluster.id=-8LmXAOkQiuVxlJtHOXaPw"), "{meta}");
}
