//! A real Redis Cluster for tests (three masters, three replicas), shared by the
//! store suite (src/session/store_tests.rs) and the e2e harness through `#[path]`.

/// A port for a cluster node: below 55535 (its bus port is 10000 higher, and a node
/// refuses a bus port above 65535), both free.
fn cluster_port() -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if port < 55535 && std::net::TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return port;
        }
    }
}

/// A Redis Cluster of this test's own: three masters, three replicas, real
/// `redis-server` processes created with `redis-cli --cluster create`; stopped on drop.
#[allow(dead_code)]
pub struct RedisCluster {
    children: Vec<std::process::Child>,
    pub ports: Vec<u16>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    /// Starts a cluster. A port chosen free can be taken by a parallel test before its
    /// node binds it (or its bus port); then `--cluster create` fails, and a new cluster
    /// on new ports is tried, up to three times.
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
        let mut cluster = Self {
            children: Vec::new(),
            ports: ports.clone(),
            _dir: tempfile::TempDir::new().unwrap(),
        };
        for &p in &ports {
            let child = std::process::Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--port", &p.to_string(), "--save", "", "--appendonly", "no"])
                .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"])
                .args(["--cluster-config-file", &format!("nodes-{p}.conf")])
                .arg("--dir")
                .arg(dir.path())
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("redis-server is required for the Redis store tests (./scripts/test.sh installs it)");
            cluster.children.push(child);
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        for &p in &ports {
            while std::net::TcpStream::connect(("127.0.0.1", p)).is_err() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "redis-server did not start"
                );
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
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
        cluster._dir = dir;
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

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
