//! The one way the tests and benches start a `redis-server`: on a free loopback
//! port, in a temporary directory, ready once it answers PING, killed on drop, and a
//! loud failure when `redis-server` is not installed or does not come up.
//!
//! Its users are three different crates, so it is shared as a file, through
//! `#[path]`: the library's unit tests (src/session/store_tests.rs), the e2e test crate
//! (tests/e2e/harness/redis.rs) and the store_scale bench (benches/store_scale.rs). A
//! dev-only module of the library would ship test code in the crate; a crate of its
//! own for one file would be more build than code. redis_cluster.rs and
//! redis_sentinel.rs start their nodes with [`RedisProcess`] and name it as
//! `super::redis_server`: a file that includes one of them includes this one next to
//! it, as `mod redis_server`.

// Each includer uses a part of it.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What to install when `redis-server` is missing.
const MISSING: &str = "redis-server is required for these tests (./scripts/test.sh installs it: apt-get install redis-server redis-tools)";

/// A free TCP port on 127.0.0.1 for a server a test starts (bound then released).
///
/// Drawn at random from below the kernel's ephemeral range, which every bind to port
/// 0 and every outgoing connection draw from: a port handed out by the kernel (bound
/// then released) can be handed out again at once to the next process that binds
/// port 0 — the test provider, an upstream — before the server meant for it binds
/// it (seen: the gateway's port given to the provider). Another test choosing the
/// same port in the same instant is the remaining, far smaller, chance.
pub fn free_port() -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    // 20000..low when the range leaves room below it, else anywhere above 1024.
    let (from, to) = if low > 21000 {
        (20000, low)
    } else {
        (1025, low.max(1100))
    };
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ (u64::from(std::process::id()) << 32);
    for _ in 0..1000 {
        // xorshift: any spread will do; uniqueness comes from binding.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let port = from + (seed % u64::from(to - from)) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs one command on `127.0.0.1:port` through a raw RESP exchange; the raw reply.
pub fn command(port: u16, args: &[&str]) -> std::io::Result<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes())?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// One `redis-server` process, killed on drop.
pub struct RedisProcess {
    pub port: u16,
    child: Child,
}

impl RedisProcess {
    /// `redis-server ARGS… --bind 127.0.0.1 --port PORT --dir DIR`, once it answers
    /// PING. `args` may start with a config file (`[conf, "--sentinel"]`).
    pub fn spawn(port: u16, dir: &Path, args: &[&str]) -> Self {
        Self::try_spawn(port, dir, args).unwrap_or_else(|why| panic!("{why}"))
    }

    /// Like [`RedisProcess::spawn`], with an error instead of a panic when the server
    /// exits or does not answer (a port taken by a parallel test, say); a missing
    /// `redis-server` still panics.
    pub fn try_spawn(port: u16, dir: &Path, args: &[&str]) -> Result<Self, String> {
        let child = Command::new("redis-server")
            .args(args)
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .spawn()
            .expect(MISSING);
        let mut process = Self { port, child };
        process.wait_pong()?;
        Ok(process)
    }

    /// Waits until this server answers PING (not `-LOADING` while it reads its
    /// append-only file).
    fn wait_pong(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Err(format!(
                    "redis-server on port {} exited at start: {status}",
                    self.port
                ));
            }
            if command(self.port, &["PING"]).is_ok_and(|r| r.starts_with("+PONG")) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "redis-server on port {} does not answer PING within 10 s",
                    self.port
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `redis-server` of the test's own: a free port, a temporary directory, and one
/// process that can be stopped and started again on the same port.
pub struct RedisServer {
    pub port: u16,
    process: Option<RedisProcess>,
    /// The server's options: persistence on or off.
    args: &'static [&'static str],
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Persistence off: a restart comes back empty.
    pub fn start() -> Self {
        Self::with_args(&["--save", "", "--appendonly", "no"])
    }

    /// `--appendonly` with an fsync a write, so a restart keeps what it had.
    pub fn persistent() -> Self {
        Self::with_args(&[
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ])
    }

    fn with_args(args: &'static [&'static str]) -> Self {
        let mut server = Self {
            port: free_port(),
            process: None,
            args,
            dir: tempfile::tempdir().unwrap(),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        self.process = Some(RedisProcess::spawn(self.port, self.dir.path(), self.args));
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills the server (as a crash would); [`RedisServer::restart`] brings it back.
    pub fn stop(&mut self) {
        self.process = None;
    }

    /// Stops the server if it runs and starts it again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Waits until Redis answers PING (not `-LOADING` while it reads its append-only file).
    pub fn wait_pong(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.command(&["PING"]).starts_with("+PONG") {
            assert!(
                Instant::now() < deadline,
                "redis-server does not answer PING"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Runs a command with redis-cli semantics through a raw RESP exchange.
    pub fn command(&self, args: &[&str]) -> String {
        command(self.port, args).unwrap()
    }
}
