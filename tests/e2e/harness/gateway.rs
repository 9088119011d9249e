//! The Portcullis process: the real `portcullis` binary, started with a config
//! file, its stderr kept in a log a test can read.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{random_key, signal};

/// The `portcullis` binary, started with a config file; stopped on drop.
pub struct Gateway {
    pub origin: String,
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    child: Option<Child>,
    /// Extra environment of the process (e.g. `OTEL_*`).
    env: Vec<(String, String)>,
}

/// A config for a gateway that needs no provider (its issuer is unreachable and only
/// `token = "none"` routes are used): one worker on `127.0.0.1:port`, a memory store.
/// `server` holds extra lines of `[server]` (and may open `[server.tls]`), `routes`
/// the `[[routes]]` tables.
pub fn standalone_config(port: u16, public_origin: &str, server: &str, routes: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
public_origin = "{public_origin}"
workers = 1
{server}
[oidc]
issuer = "http://127.0.0.1:1"
client_id = "c"
client_secret = "s"
http_timeout = "1s"
[session]
store = "memory"
keys = ["{key}"]
{routes}
"#,
        key = random_key(),
    )
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_portcullis")
}

impl Gateway {
    pub fn start(port: u16, config: &str) -> Self {
        Self::start_with_env(port, config, &[])
    }

    /// Like [`Gateway::start`] for a config with `[server.tls]`: ready once it
    /// listens (the health probe speaks plain HTTP).
    pub fn start_tls(port: u16, config: &str) -> Self {
        Self::start_with_env(port, config, &[("PORTCULLIS_TEST_TLS", "1")])
    }

    /// Like [`Gateway::start`], with extra environment variables.
    pub fn start_with_env(port: u16, config: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("portcullis.toml");
        std::fs::write(&config_path, config).unwrap();
        let mut gw = Self {
            origin: format!("http://127.0.0.1:{port}"),
            port,
            dir,
            config_path,
            child: None,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        gw.spawn();
        gw
    }

    fn spawn(&mut self) {
        let mut child = Command::new(binary())
            .args(["serve", "--config"])
            .arg(&self.config_path)
            .current_dir(self.dir.path())
            .env("RUST_LOG", "info,portcullis=debug")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        self.tee_logs(&mut child);
        self.child = Some(child);
        self.wait_ready();
    }

    /// Copies the gateway's stderr to the test's stderr and appends it to
    /// [`Gateway::log_path`], so a test can read what the gateway logged.
    fn tee_logs(&self, child: &mut Child) {
        use std::io::Write;
        let stderr = child.stderr.take().unwrap();
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("{line}");
                let _ = writeln!(file, "{line}");
            }
        });
    }

    /// Where the gateway's stderr is collected (across restarts).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("portcullis.log")
    }

    /// Everything the gateway has logged so far. The copy runs on a thread; a short
    /// pause first lets the last lines land.
    pub fn logs(&self) -> String {
        std::thread::sleep(Duration::from_millis(200));
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends a signal (`"-TERM"`, `"-HUP"`…) to the running gateway.
    pub fn signal(&self, sig: &str) {
        signal(self.pid().expect("the gateway is running"), sig);
    }

    /// Waits for the process to exit on its own; returns whether it did within `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut()?;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("portcullis exited before it was ready: {status}");
            }
            let tls = self.env.iter().any(|(k, _)| k == "PORTCULLIS_TEST_TLS");
            if tls && self.logs().contains("\"message\":\"listening\"") {
                self.origin = format!("https://localhost:{}", self.port);
                return;
            }
            if !tls && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                let ok = status_probe(&format!("{}/healthz", self.origin));
                if ok == Some(200) {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "portcullis not ready within 20 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then wait for the process to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.origin)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A tiny blocking status probe (the harness's own readiness check).
fn status_probe(url: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let url = ::url::Url::parse(url).ok()?;
    let mut s = std::net::TcpStream::connect((url.host_str()?, url.port()?)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        url.path()
    )
    .ok()?;
    let mut buf = [0u8; 32];
    let n = s.read(&mut buf).ok()?;
    std::str::from_utf8(&buf[..n])
        .ok()?
        .get(9..12)?
        .parse()
        .ok()
}
