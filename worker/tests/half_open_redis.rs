//! A half-open Redis connection (the host went away without a reset: nothing arrives,
//! nothing fails) does not hang the worker: its blocking read times out, it connects
//! again, and what was appended meanwhile is synced.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use teamchat_testkit::{TestEnv, wait_for_watermark};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A TCP proxy to Redis whose open connections can be frozen: their bytes are no longer
/// passed on either way, and the sockets stay open, as over a dead network path.
/// Connections opened after a freeze pass again.
struct Proxy {
    addr: SocketAddr,
    open: Arc<Mutex<Vec<Arc<AtomicBool>>>>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open: Arc<Mutex<Vec<Arc<AtomicBool>>>> = Arc::default();
        let connections = open.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let frozen = Arc::new(AtomicBool::new(false));
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(pass(client_read, server_write, frozen.clone()));
                tokio::spawn(pass(server_read, client_write, frozen.clone()));
                connections.lock().unwrap().push(frozen);
            }
        });
        Self { addr, open }
    }

    /// Freezes every connection open now.
    fn freeze(&self) {
        for frozen in self.open.lock().unwrap().drain(..) {
            frozen.store(true, Ordering::SeqCst);
        }
    }
}

/// Copies one direction until the connection ends; once frozen, reads are held and
/// nothing more is written.
async fn pass(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if frozen.load(Ordering::SeqCst) {
            // Keep both sockets open, pass nothing on.
            std::future::pending::<()>().await;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_redis_connection_does_not_hang_the_worker() {
    let env = TestEnv::new().await;
    let upstream: SocketAddr = env
        .redis_url
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .parse()
        .expect("a redis://host:port URL");
    let proxy = Proxy::start(upstream).await;
    let mut config = env.worker_config("w1");
    config.redis.redis_url = format!("redis://{}", proxy.addr);
    config.listen = format!("127.0.0.1:{}", teamchat_testkit::free_port())
        .parse()
        .unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(teamchat_worker::run(config, stop.clone()));
    let pg = env.pg().await;

    let first = env.inject_ingest("t", &message("c1")).await;
    wait_for_watermark(&pg, "t", first as i64).await;

    // The path to Redis goes dead under the worker's connections.
    proxy.freeze();
    let second = env.inject_ingest("t", &message("c2")).await;
    wait_for_watermark(&pg, "t", second as i64).await;
    stop.cancel();
}

/// A message's data as the append script stores it.
fn message(client_id: &str) -> String {
    serde_json::json!({"id": format!("id-{client_id}"), "client_id": client_id, "user": "u",
                       "body": "b", "ts": 1})
    .to_string()
}
