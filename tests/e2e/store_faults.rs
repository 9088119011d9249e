//! SQLite store faults, injected for real: a full disk (a small tmpfs filled up), the
//! database locked by another process beyond the busy timeout, and kill -9 with a
//! restart. Seen from outside: 503 `store_unavailable` and `/readyz` not ready while
//! the fault lasts, a log line naming the cause, recovery without a restart, and no
//! session lost that a browser was told about.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

async fn api(browser: &Browser, env: &Env, path: &str) -> Answer {
    browser.get_with(&env.url(path), &[("x-csrf", "1")]).await
}

async fn ready(env: &Env) -> u16 {
    Browser::new()
        .get(&env.url("/readyz"))
        .await
        .status
        .as_u16()
}

/// Polls until `check` holds (panics after `limit`); returns how long it took.
async fn within<F, Fut>(limit: Duration, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_and_restart_with_sqlite_brings_every_session_back() {
    let mut env = Env::builder().store("sqlite").start().await;
    let mut browsers = Vec::new();
    for user in ["alice", "bob", "alice"] {
        let b = env.browser();
        b.login(&env, user, user, "/").await;
        assert_eq!(api(&b, &env, "/api/before").await.status, 200);
        browsers.push(b);
    }
    env.gateway.signal("-KILL");
    assert!(env.gateway.wait_exit(Duration::from_secs(5)).is_some());
    env.gateway.restart();
    for (i, b) in browsers.iter().enumerate() {
        let r = api(b, &env, "/api/after").await;
        assert_eq!(
            r.status,
            200,
            "session {i} after kill -9 and restart: {}",
            r.text()
        );
    }
}

/// A process of its own holding SQLite's write lock on `db` (`BEGIN EXCLUSIVE`) until
/// it is killed.
fn hold_write_lock(db: &std::path::Path) -> Child {
    let mut child = Command::new("sqlite3")
        .arg(db)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sqlite3 is required for the locked-database test (apt-get install sqlite3)");
    use std::io::{BufRead, Write};
    let stdin = child.stdin.as_mut().unwrap();
    writeln!(stdin, ".timeout 10000\nBEGIN EXCLUSIVE; SELECT 'locked';").unwrap();
    stdin.flush().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "locked");
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_locked_by_another_process_is_503_then_recovers_by_itself() {
    let env = Env::builder().store("sqlite").start().await;
    let alice = env.browser();
    alice.login(&env, "alice", "alice", "/").await;
    assert_eq!(api(&alice, &env, "/api/before").await.status, 200);

    let db = env.gateway.dir.path().join("sessions.db");
    let mut locker = hold_write_lock(&db);
    // A write (a login's pending state) waits the busy timeout, then fails cleanly.
    let started = Instant::now();
    let r = Browser::new().get(&env.url("/bff/login")).await;
    println!("LOCKED: a write failed after {:?}", started.elapsed());
    r.assert_error(503, "store_unavailable");
    let not_ready = within(Duration::from_secs(15), || async {
        ready(&env).await == 503
    })
    .await;
    println!("LOCKED: /readyz not ready {not_ready:?} after the write failed");
    assert!(
        env.gateway.logs().contains("locked"),
        "a log line names the cause"
    );

    let _ = locker.kill();
    let _ = locker.wait();
    let back = within(Duration::from_secs(15), || async {
        ready(&env).await == 200
    })
    .await;
    println!("LOCKED: ready again {back:?} after the lock was released");
    assert_eq!(Browser::new().get(&env.url("/bff/login")).await.status, 302);
    assert_eq!(
        api(&alice, &env, "/api/after").await.status,
        200,
        "session kept"
    );
}

/// A tmpfs of `size` mounted on a fresh directory; unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap()
            .success();
        assert!(
            ok,
            "mount -t tmpfs needs root (the disk-full test fills a real, small disk)"
        );
        Self { dir }
    }

    /// Fills the disk with a file until the kernel refuses (ENOSPC).
    fn fill(&self) {
        let status = Command::new("dd")
            .args(["if=/dev/zero", "bs=4k"])
            .arg(format!("of={}", self.dir.path().join("filler").display()))
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(!status.success(), "dd stops at a full disk");
    }

    fn free(&self) {
        std::fs::remove_file(self.dir.path().join("filler")).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_503_and_not_ready_then_recovers_without_a_restart() {
    let disk = SmallDisk::mount("4m");
    let mut env = Env::builder().store("sqlite").start().await;
    // The store's file on the small disk.
    let config = std::fs::read_to_string(&env.gateway.config_path)
        .unwrap()
        .replace(
            "sqlite_path = \"sessions.db\"",
            &format!(
                "sqlite_path = {:?}",
                disk.dir.path().join("sessions.db").to_str().unwrap()
            ),
        );
    std::fs::write(&env.gateway.config_path, config).unwrap();
    env.gateway.restart();
    let alice = env.browser();
    alice.login(&env, "alice", "alice", "/").await;
    assert_eq!(api(&alice, &env, "/api/before").await.status, 200);

    disk.fill();
    // New logins need writes: a clean 503 each, never a panic.
    let mut failed = 0;
    let mut answers = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let r = Browser::new().get(&env.url("/bff/login")).await;
        answers.insert(r.status.as_u16());
        if r.status == 503 {
            r.assert_error(503, "store_unavailable");
            failed += 1;
        }
    }
    println!("DISK FULL: {failed} of 20 login starts failed ({answers:?})");
    assert!(failed > 0, "a full disk is noticed");
    assert!(!answers.contains(&500));
    let not_ready = within(Duration::from_secs(15), || async {
        ready(&env).await == 503
    })
    .await;
    println!("DISK FULL: /readyz not ready after {not_ready:?}");
    let logs = env.gateway.logs();
    assert!(logs.contains("full"), "a log line names the cause");
    assert!(!logs.contains("panicked"));
    // Reads of acknowledged sessions go on.
    let r = api(&alice, &env, "/api/during").await;
    println!("DISK FULL: an existing session's request: {}", r.status);

    disk.free();
    let back = within(Duration::from_secs(15), || async {
        ready(&env).await == 200
    })
    .await;
    println!("DISK FULL: ready again {back:?} after space was freed");
    assert_eq!(Browser::new().get(&env.url("/bff/login")).await.status, 302);
    assert_eq!(
        api(&alice, &env, "/api/after").await.status,
        200,
        "session kept"
    );
    let bob = env.browser();
    bob.login(&env, "bob", "bob", "/").await;
    env.gateway.restart();
    for b in [&alice, &bob] {
        assert_eq!(
            api(b, &env, "/api/restarted").await.status,
            200,
            "acknowledged sessions are on disk"
        );
    }
}
