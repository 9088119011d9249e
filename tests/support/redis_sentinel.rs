//! A real Redis Sentinel deployment for tests: one master, one replica, three
//! sentinels (`redis-server CONF --sentinel`), all on free loopback ports; stopped on
//! drop. Shared by the e2e harness through `#[path]`, like redis_cluster.rs; its
//! processes are started by redis_server.rs (included next to it as `redis_server`).

use std::process::Command;
use std::time::{Duration, Instant};

use super::redis_server::{RedisProcess, free_port};

/// The name the sentinels monitor the master under.
pub const MASTER_NAME: &str = "portcullis";

fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli is required for the Redis Sentinel tests");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[allow(dead_code)]
pub struct RedisSentinel {
    /// Declared first: on drop the sentinels stop before the nodes they watch.
    sentinels: Vec<RedisProcess>,
    /// Redis data nodes by port (the master first at start), `None` once killed.
    nodes: Vec<(u16, Option<RedisProcess>)>,
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
            let sentinel = RedisProcess::spawn(
                port,
                this.dir.path(),
                &[conf.to_str().unwrap(), "--sentinel"],
            );
            this.sentinels.push(sentinel);
        }
        // Every sentinel has found the replica (and the others) before a test kills anything.
        let deadline = Instant::now() + Duration::from_secs(20);
        while !this.sentinels.iter().all(|sentinel| {
            let info = cli(sentinel.port, &["SENTINEL", "MASTER", MASTER_NAME]);
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
        let dbfilename = format!("dump-{port}.rdb");
        let master = replica_of.map(|m| m.to_string());
        let mut args = vec![
            "--save",
            "",
            "--appendonly",
            "no",
            "--dbfilename",
            &dbfilename,
        ];
        if let Some(master) = &master {
            args.extend(["--replicaof", "127.0.0.1", master]);
        }
        let node = RedisProcess::spawn(port, self.dir.path(), &args);
        self.nodes.push((port, Some(node)));
    }

    /// The README's form: `redis+sentinel://h1:p1,h2:p2,h3:p3/master_name`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        format!("redis+sentinel://{}/{MASTER_NAME}", hosts.join(","))
    }

    /// The master's port, as the first sentinel names it.
    pub fn master(&self) -> u16 {
        let reply = cli(
            self.sentinels[0].port,
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
        node.1.take().expect("the master is running");
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
                .map(|s| {
                    cli(
                        s.port,
                        &["SENTINEL", "get-master-addr-by-name", MASTER_NAME],
                    )
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
