//! A real Redis Sentinel deployment for tests: one master, one replica, three
//! sentinels (`redis-server CONF --sentinel`), all on free loopback ports; stopped on
//! drop. Shared by the e2e harness through `#[path]`, like redis_cluster.rs.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The name the sentinels monitor the master under.
pub const MASTER_NAME: &str = "portcullis";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli is required for the Redis Sentinel tests");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis on {port} did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[allow(dead_code)]
pub struct RedisSentinel {
    /// Redis data nodes by port (the master first at start), `None` once killed.
    nodes: Vec<(u16, Option<Child>)>,
    sentinels: Vec<(u16, Child)>,
    dir: tempfile::TempDir,
}

#[allow(dead_code)]
impl RedisSentinel {
    /// Starts the master, its replica (synchronised), and three sentinels that all
    /// know both.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut this = Self {
            nodes: Vec::new(),
            sentinels: Vec::new(),
            dir,
        };
        let master = free_port();
        this.spawn_node(master, None);
        let replica = free_port();
        this.spawn_node(replica, Some(master));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cli(replica, &["INFO", "replication"]).contains("master_link_status:up") {
            assert!(Instant::now() < deadline, "the replica never synchronised");
            std::thread::sleep(Duration::from_millis(20));
        }
        for _ in 0..3 {
            let port = free_port();
            let conf = this.dir.path().join(format!("sentinel-{port}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                     sentinel monitor {MASTER_NAME} 127.0.0.1 {master} 2\n\
                     sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                     sentinel failover-timeout {MASTER_NAME} 5000\n",
                    dir = this.dir.path().display()
                ),
            )
            .unwrap();
            let child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server is required for the Redis Sentinel tests");
            wait_listening(port);
            this.sentinels.push((port, child));
        }
        // Every sentinel has found the replica (and the others) before a test kills anything.
        let deadline = Instant::now() + Duration::from_secs(20);
        while !this.sentinels.iter().all(|(p, _)| {
            let info = cli(*p, &["SENTINEL", "MASTER", MASTER_NAME]);
            let field = |name: &str| {
                let lines: Vec<&str> = info.lines().collect();
                lines
                    .iter()
                    .position(|l| l.trim() == name)
                    .and_then(|i| lines.get(i + 1))
                    .map(|v| v.trim().to_owned())
            };
            field("num-slaves").as_deref() == Some("1")
                && field("num-other-sentinels").as_deref() == Some("2")
        }) {
            assert!(
                Instant::now() < deadline,
                "the sentinels never saw the replica and each other"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        this
    }

    fn spawn_node(&mut self, port: u16, replica_of: Option<u16>) {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--dbfilename", &format!("dump-{port}.rdb")])
            .stdout(Stdio::null());
        if let Some(master) = replica_of {
            cmd.args(["--replicaof", "127.0.0.1", &master.to_string()]);
        }
        let child = cmd
            .spawn()
            .expect("redis-server is required for the Redis Sentinel tests");
        wait_listening(port);
        self.nodes.push((port, Some(child)));
    }

    /// The README's form: `redis+sentinel://h1:p1,h2:p2,h3:p3/master_name`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|(p, _)| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+sentinel://{}/{MASTER_NAME}", hosts.join(","))
    }

    /// The master's port, as the first sentinel names it.
    pub fn master(&self) -> u16 {
        let reply = cli(
            self.sentinels[0].0,
            &["SENTINEL", "get-master-addr-by-name", MASTER_NAME],
        );
        reply
            .lines()
            .nth(1)
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("no master named: {reply}"))
    }

    /// kill -9 of the current master; returns its port.
    pub fn kill_master(&mut self) -> u16 {
        let port = self.master();
        let node = self.nodes.iter_mut().find(|(p, _)| *p == port).unwrap();
        let mut child = node.1.take().expect("the master is running");
        let _ = child.kill();
        let _ = child.wait();
        port
    }

    /// Waits until every sentinel names a master other than `old` and that node
    /// answers `ROLE` as a master; returns its port. Panics after `limit`.
    pub fn wait_failover(&self, old: u16, limit: Duration) -> u16 {
        let deadline = Instant::now() + limit;
        loop {
            let named: Vec<Option<u16>> = self
                .sentinels
                .iter()
                .map(|(p, _)| {
                    cli(*p, &["SENTINEL", "get-master-addr-by-name", MASTER_NAME])
                        .lines()
                        .nth(1)
                        .and_then(|p| p.trim().parse().ok())
                })
                .collect();
            if let Some(Some(new)) = named.first()
                && *new != old
                && named.iter().all(|n| *n == Some(*new))
                && cli(*new, &["ROLE"]).starts_with("master")
            {
                return *new;
            }
            assert!(Instant::now() < deadline, "no failover within {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        for (_, c) in &mut self.sentinels {
            let _ = c.kill();
            let _ = c.wait();
        }
        for (_, c) in &mut self.nodes {
            if let Some(c) = c {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}
