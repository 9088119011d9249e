//! Redis for the e2e tests: one server, a Cluster, a Sentinel deployment. All three
//! live in tests/support/ (the store suite in src/session/store_tests.rs includes the
//! same files) and start their `redis-server` processes through
//! tests/support/redis_server.rs.

#[path = "../../support/redis_server.rs"]
mod redis_server;
/// A free port for a server a test starts (see its docs: outside the ephemeral range).
pub use redis_server::{RedisServer, free_port};
#[path = "../../support/redis_cluster.rs"]
mod redis_cluster;
pub use redis_cluster::RedisCluster;
#[path = "../../support/redis_sentinel.rs"]
mod redis_sentinel;
pub use redis_sentinel::RedisSentinel;
