//! Process faults: a second `portcullis serve` on an address already served.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

/// Runs `portcullis serve` with `config` and waits (bounded) for it to exit; returns
/// its status and stderr.
fn serve_expecting_exit(config: &str) -> (std::process::ExitStatus, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(binary())
        .args(["serve", "--config"])
        .arg(&path)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            return (out.status, text);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("a second `portcullis serve` on a served address kept running");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn a_second_serve_on_a_served_address_refuses_to_start() {
    let (port, admin) = (free_port(), free_port());
    let origin = format!("http://127.0.0.1:{port}");
    let admin_line = format!("admin_listen = \"127.0.0.1:{admin}\"\n");
    let first = Gateway::start(port, &standalone_config(port, &origin, &admin_line, ""));

    // The same public listener.
    let other_admin = format!("admin_listen = \"127.0.0.1:{}\"\n", free_port());
    let (status, text) = serve_expecting_exit(&standalone_config(port, &origin, &other_admin, ""));
    assert!(!status.success(), "{status}");
    assert!(text.contains("address already in use"), "{text}");
    assert!(text.contains("server.listen"), "names the key: {text}");

    // The same admin listener, on another public port.
    let p2 = free_port();
    let (status, text) = serve_expecting_exit(&standalone_config(
        p2,
        &format!("http://127.0.0.1:{p2}"),
        &admin_line,
        "",
    ));
    assert!(!status.success(), "{status}");
    assert!(text.contains("address already in use"), "{text}");
    assert!(
        text.contains("server.admin_listen"),
        "names the key: {text}"
    );

    // The first one keeps serving, all of it: many fresh connections all answered by it.
    for _ in 0..20 {
        let r = Browser::new().get(&first.url("/healthz")).await;
        assert_eq!(r.status, 200);
    }
    let r = Browser::new()
        .get(&format!("http://127.0.0.1:{admin}/healthz"))
        .await;
    assert_eq!(r.status, 200);
}

/// A gateway that has stopped leaves its connections in TIME_WAIT; the probe must
/// not mistake them for a listener.
#[tokio::test]
async fn a_restart_on_the_same_address_after_connections_starts() {
    let port = free_port();
    let origin = format!("http://127.0.0.1:{port}");
    let mut g = Gateway::start(port, &standalone_config(port, &origin, "", ""));
    for _ in 0..5 {
        assert_eq!(Browser::new().get(&g.url("/healthz")).await.status, 200);
    }
    g.restart();
    assert_eq!(Browser::new().get(&g.url("/healthz")).await.status, 200);
}
