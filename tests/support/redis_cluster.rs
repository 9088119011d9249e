//! A real Redis Cluster for tests (three masters, three replicas), shared by the
//! store suite (src/session/store_tests.rs) and the e2e harness through `#[path]`.
//! Its nodes are started by redis_server.rs, which the includer includes next to
//! this file as `redis_server`.

use super::redis_server::{RedisProcess, free_port};

/// A port for a cluster node, drawn by [`free_port`] (not one the kernel handed out
/// for port 0), whose bus port (10000 higher; a node refuses one above 65535) is free
/// too.
fn cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port < 55535 && std::net::TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return port;
        }
    }
}

/// A Redis Cluster of this test's own: three masters, three replicas, real
/// `redis-server` processes created with `redis-cli --cluster create`; stopped on drop.
#[allow(dead_code)]
pub struct RedisCluster {
    /// The nodes, by `ports` index; `None` once stopped by [`RedisCluster::kill`].
    nodes: Vec<Option<RedisProcess>>,
    pub ports: Vec<u16>,
    /// Nodes stopped by [`RedisCluster::kill`].
    killed: Vec<u16>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    /// Starts a cluster. A port chosen free can be taken by a parallel test before its
    /// node binds it (or its bus port); then the node or `--cluster create` fails, and
    /// a new cluster on new ports is tried, up to three times.
    pub fn start() -> Self {
        for attempt in 1..=3 {
            match Self::try_start() {
                Ok(cluster) => return cluster,
                Err(why) if attempt < 3 => eprintln!("redis cluster: {why}; trying new ports"),
                Err(why) => panic!("redis cluster: {why}"),
            }
        }
        unreachable!()
    }

    fn try_start() -> Result<Self, String> {
        let dir = tempfile::tempdir().unwrap();
        let mut ports = Vec::new();
        while ports.len() < 6 {
            let p = cluster_port();
            if !ports.contains(&p) {
                ports.push(p);
            }
        }
        let mut nodes = Vec::new();
        for &p in &ports {
            let config_file = format!("nodes-{p}.conf");
            let args = [
                "--save",
                "",
                "--appendonly",
                "no",
                "--cluster-enabled",
                "yes",
                "--cluster-node-timeout",
                "1000",
                // Replicas sync at once (the default waits 5 s for more of them).
                "--repl-diskless-sync-delay",
                "0",
                "--cluster-config-file",
                &config_file,
            ];
            nodes.push(Some(RedisProcess::try_spawn(p, dir.path(), &args)?));
        }
        let cluster = Self {
            nodes,
            ports: ports.clone(),
            killed: Vec::new(),
            _dir: dir,
        };
        let status = std::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(ports.iter().map(|p| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(std::process::Stdio::null())
            .status()
            .expect(
                "redis-cli is required for the Redis Cluster tests (./scripts/test.sh installs it)",
            );
        if !status.success() {
            return Err(format!("redis-cli --cluster create: {status}"));
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !ports.iter().all(|&p| {
            cluster
                .cli(p, &["CLUSTER", "INFO"])
                .contains("cluster_state:ok")
        }) {
            if std::time::Instant::now() >= deadline {
                return Err("cluster_state never ok".into());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        // Every replica holds its master's data before a test writes or kills anything:
        // a replica promoted before its first sync would come up empty.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !ports.iter().all(|&p| {
            let info = cluster.cli(p, &["INFO", "replication"]);
            info.contains("role:master") || info.contains("master_link_status:up")
        }) {
            if std::time::Instant::now() >= deadline {
                return Err("the replicas never synchronised".into());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Ok(cluster)
    }

    fn cli(&self, port: u16, args: &[&str]) -> String {
        let out = std::process::Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Empties every master (replicas refuse the write and follow).
    pub fn flush(&self) {
        for &p in &self.ports {
            self.cli(p, &["FLUSHALL"]);
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while self
            .ports
            .iter()
            .any(|&p| self.cli(p, &["DBSIZE"]).trim() != "0")
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the cluster did not empty"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// The README's form: `redis+cluster://h1:p1,h2:p2,…`.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+cluster://{}", nodes.join(","))
    }
}

/// Fault injection, for the failover tests (tests/e2e/failover.rs).
#[allow(dead_code)]
impl RedisCluster {
    /// The port of the master serving `key`'s slot, as a live node sees it.
    pub fn master_of(&self, key: &str) -> u16 {
        let alive = self.alive_port();
        let slot: u16 = self
            .cli(alive, &["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .expect("CLUSTER KEYSLOT");
        self.owner_of(alive, slot)
            .expect("a master serves every slot")
    }

    /// Who serves `slot` in `port`'s view: a master not flagged as failing.
    fn owner_of(&self, port: u16, slot: u16) -> Option<u16> {
        let nodes = self.cli(port, &["CLUSTER", "NODES"]);
        nodes.lines().find_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let flags = f.get(2)?;
            if !flags.contains("master") || flags.contains("fail") {
                return None;
            }
            let serves = f.iter().skip(8).any(|range| {
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                matches!((a.parse::<u16>(), b.parse::<u16>()), (Ok(a), Ok(b)) if a <= slot && slot <= b)
            });
            let addr = f.get(1)?.split('@').next()?;
            serves.then(|| addr.rsplit(':').next()?.parse().ok())?
        })
    }

    fn alive_port(&self) -> u16 {
        self.ports
            .iter()
            .copied()
            .find(|p| !self.killed.contains(p))
            .expect("a live node")
    }

    /// kill -9 of the node on `port`.
    pub fn kill(&mut self, port: u16) {
        let i = self
            .ports
            .iter()
            .position(|&p| p == port)
            .expect("a node of this cluster");
        self.nodes[i] = None;
        self.killed.push(port);
    }

    /// How many pub/sub clients `port` has (its `CLIENT LIST` entries with `sub=1`).
    pub fn subscribers(&self, port: u16) -> usize {
        self.cli(port, &["CLIENT", "LIST"])
            .lines()
            .filter(|l| l.contains(" sub=1 "))
            .count()
    }

    /// Waits until every live node reports `cluster_state:ok` and, in its view, no
    /// failing or killed master serves a slot (every failover is done).
    pub fn wait_ok(&self, limit: std::time::Duration) {
        let deadline = std::time::Instant::now() + limit;
        while !self
            .ports
            .iter()
            .filter(|p| !self.killed.contains(p))
            .all(|&p| {
                self.cli(p, &["CLUSTER", "INFO"])
                    .contains("cluster_state:ok")
                    && !self.cli(p, &["CLUSTER", "NODES"]).lines().any(|l| {
                        // A master that serves slots and is failing or was killed.
                        let f: Vec<&str> = l.split_whitespace().collect();
                        let port = f.get(1).and_then(|a| {
                            a.split('@').next()?.rsplit(':').next()?.parse::<u16>().ok()
                        });
                        f.len() > 8
                            && f[2].contains("master")
                            && (f[2].contains("fail")
                                || port.is_some_and(|p| self.killed.contains(&p)))
                    })
            })
        {
            assert!(
                std::time::Instant::now() < deadline,
                "cluster not ok within {limit:?}: {}",
                self.cli(self.alive_port(), &["CLUSTER", "NODES"])
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Waits until every live node reports `cluster_state:ok` and sees a live master
    /// other than a killed node serving `key`'s slot (its replica took over); returns
    /// the new master's port. Panics after `limit`.
    pub fn wait_failover(&self, key: &str, limit: std::time::Duration) -> u16 {
        let alive: Vec<u16> = self
            .ports
            .iter()
            .copied()
            .filter(|p| !self.killed.contains(p))
            .collect();
        let slot: u16 = self
            .cli(alive[0], &["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .expect("CLUSTER KEYSLOT");
        let deadline = std::time::Instant::now() + limit;
        loop {
            let owners: Vec<Option<u16>> = alive.iter().map(|&p| self.owner_of(p, slot)).collect();
            if let Some(Some(owner)) = owners.first()
                && !self.killed.contains(owner)
                && owners.iter().all(|o| *o == Some(*owner))
                && alive.iter().all(|&p| {
                    self.cli(p, &["CLUSTER", "INFO"])
                        .contains("cluster_state:ok")
                })
            {
                return *owner;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no failover within {limit:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}
