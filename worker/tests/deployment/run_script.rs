//! `scripts/run` keeps its promise: Ctrl-C (SIGINT to its process group, as a terminal
//! sends it) stops everything it started — the worker, the gateways, and the Redis and
//! PostgreSQL it started because none answered.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use std::os::unix::process::CommandExt;
use teamchat_testkit::free_port;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn answers(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// Polls `check` every 100 ms until it holds; false after `limit`.
fn within(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    check()
}

/// Whether any process of the group is left (`kill -0 -- -PGID`).
fn group_alive(pgid: u32) -> bool {
    Command::new("kill")
        .args(["-0", "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// A running `scripts/run` with Redis and PostgreSQL of its own, its process group, and
/// the ports of all it started.
struct Run {
    child: std::process::Child,
    pgid: u32,
    ports: [u16; 5],
    pg: u16,
    data: PathBuf,
}

impl Run {
    fn start(name: &str) -> Run {
        let bin_dir = Path::new(env!("CARGO_BIN_EXE_teamchat-worker"))
            .parent()
            .unwrap()
            .to_path_buf();
        assert!(
            bin_dir.join("teamchat-gateway").exists(),
            "build the gateway first (cargo build -p teamchat-gateway): {}",
            bin_dir.display()
        );
        // Ports nothing answers on: the script starts its own Redis and PostgreSQL there.
        let (redis, pg, worker) = (free_port(), free_port(), free_port());
        let gateways = [free_port(), free_port()];
        let data = std::env::temp_dir().join(format!("teamchat-run-{pg}"));
        let log_path = std::env::temp_dir().join(format!("teamchat-run-{name}-{pg}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new("bash")
            .arg(repo().join("scripts/run"))
            .env("REDIS_URL", format!("redis://127.0.0.1:{redis}"))
            .env(
                "DATABASE_URL",
                format!("postgres://teamchat:teamchat@127.0.0.1:{pg}/teamchat"),
            )
            .env("TEAMCHAT_DATA", &data)
            .env("TEAMCHAT_BIN_DIR", &bin_dir)
            .env("GATEWAY_PORTS", format!("{} {}", gateways[0], gateways[1]))
            .env("WORKER_LISTEN", format!("127.0.0.1:{worker}"))
            .env("DEV_MODE", "false")
            .env("JWT_SECRET", "a-secret-for-the-run-script-test-0123456789")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            // Its own process group, as a terminal's job is.
            .process_group(0)
            .spawn()
            .expect("scripts/run starts");
        let run = Run {
            pgid: child.id(),
            child,
            ports: [redis, pg, worker, gateways[0], gateways[1]],
            pg,
            data,
        };
        if !within(Duration::from_secs(120), || {
            run.ports.into_iter().all(answers)
        }) {
            run.signal("KILL");
            panic!(
                "scripts/run did not bring everything up: {}",
                log_path.display()
            );
        }
        run
    }

    /// Sends a signal to the whole group.
    fn signal(&self, signal: &str) {
        Command::new("kill")
            .args([&format!("-{signal}"), "--", &format!("-{}", self.pgid)])
            .status()
            .unwrap();
    }

    /// Waits for the script to exit, then checks that nothing it started is left.
    fn assert_all_stopped(mut self) {
        let exited = within(Duration::from_secs(60), || {
            self.child.try_wait().ok().flatten().is_some()
        });
        assert!(exited, "scripts/run did not exit");
        let stopped = within(Duration::from_secs(30), || {
            !self.ports.into_iter().any(answers) && !group_alive(self.pgid)
        });
        let left: Vec<u16> = self.ports.into_iter().filter(|p| answers(*p)).collect();
        let _ = std::fs::remove_dir_all(&self.data);
        let _ = std::fs::remove_dir_all(format!("/var/tmp/teamchat-pg-{}", self.pg));
        assert!(
            stopped,
            "still answering: ports {left:?} of redis, postgres, worker, gateways {:?}; group alive: {}",
            self.ports,
            group_alive(self.pgid)
        );
    }
}

#[test]
fn ctrl_c_stops_everything_the_run_script_started() {
    let run = Run::start("ctrl-c");
    // Ctrl-C: SIGINT to the whole group.
    run.signal("INT");
    run.assert_all_stopped();
}

/// Children that died already (all at once, as the same Ctrl-C can end them before the
/// script's trap runs) end the run, and the cleanup still stops Redis and PostgreSQL
/// (`kill` of their pids fails: the cleanup must go on).
#[test]
fn children_that_died_first_do_not_keep_the_databases_running() {
    let run = Run::start("dead-children");
    let killed = Command::new("pkill")
        .args([
            "-KILL",
            "-g",
            &run.pgid.to_string(),
            "-f",
            "teamchat-(worker|gateway)",
        ])
        .status()
        .unwrap();
    assert!(
        killed.success(),
        "the binaries were found in the run's group"
    );
    run.assert_all_stopped();
}
