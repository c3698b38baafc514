//! A PostgreSQL server of a test's own, for fault tests that stop and restart it. As root
//! the server runs as the `postgres` user (it refuses root), as scripts/services.sh does.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct PgServer {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    /// Requiring TLS, with a server certificate of this CA (its certificate's path).
    tls_ca: Option<PathBuf>,
}

fn pg_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL installed (scripts/test installs it)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("pg_ctl").exists())
        .collect();
    versions.sort();
    versions.pop().expect("a PostgreSQL version with pg_ctl")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false)
}

/// Runs a PostgreSQL tool, as `postgres` when we are root.
fn run(bin: &Path, tool: &str, args: &[&str]) {
    let program = bin.join(tool);
    let mut command = if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(&program);
        command
    } else {
        Command::new(&program)
    };
    let status = command
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("running {tool}: {e}"));
    assert!(status.success(), "{tool} {args:?} failed");
}

impl PgServer {
    /// A fresh cluster on a free port, with trust authentication and a `teamchat` database.
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// The same, accepting TLS connections only, with a server certificate of `ca`.
    pub async fn start_tls(ca: &crate::tls::TestCa) -> Self {
        Self::start_with(Some(ca)).await
    }

    async fn start_with(ca: Option<&crate::tls::TestCa>) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir =
            std::env::temp_dir().join(format!("teamchat-test-pg-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        if is_root() {
            Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&dir)
                .status()
                .unwrap();
        }
        let bin = pg_bin();
        let data = dir.to_str().unwrap().to_owned();
        run(
            &bin,
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        if let Some(ca) = ca {
            // The key must be the server's own and private; and no plain connection is let in.
            for (from, to) in [
                (ca.server_cert(), "server.crt"),
                (ca.server_key(), "server.key"),
            ] {
                std::fs::copy(from, dir.join(to)).unwrap();
            }
            Command::new("chmod")
                .args(["600"])
                .arg(dir.join("server.key"))
                .status()
                .unwrap();
            if is_root() {
                Command::new("chown")
                    .args(["postgres:postgres"])
                    .arg(dir.join("server.crt"))
                    .arg(dir.join("server.key"))
                    .status()
                    .unwrap();
            }
            std::fs::write(
                dir.join("pg_hba.conf"),
                "hostssl all all 127.0.0.1/32 trust\nhostnossl all all 0.0.0.0/0 reject\n",
            )
            .unwrap();
        }
        let tls_ca = ca.map(|ca| ca.ca());
        let server = Self {
            port,
            dir,
            bin,
            tls_ca,
        };
        server.restart();
        let admin = format!("postgres://postgres@127.0.0.1:{port}/postgres");
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin)
            .await
            .unwrap();
        sqlx::query("CREATE DATABASE teamchat")
            .execute(&mut conn)
            .await
            .unwrap();
        server
    }

    /// Its `teamchat` database; with TLS, verified against the CA (`verify-full`).
    pub fn url(&self) -> String {
        let url = format!("postgres://postgres@127.0.0.1:{}/teamchat", self.port);
        match &self.tls_ca {
            Some(ca) => format!("{url}?sslmode=verify-full&sslrootcert={}", ca.display()),
            None => url,
        }
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub fn restart(&self) {
        let data = self.dir.to_str().unwrap();
        let log = self.dir.join("server.log");
        let mut options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c fsync=off",
            self.port
        );
        if self.tls_ca.is_some() {
            options.push_str(" -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key");
        }
        run(
            &self.bin,
            "pg_ctl",
            &[
                "-D",
                data,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-o",
                &options,
                "start",
            ],
        );
    }

    /// Stops it the way a crash would (`immediate`: no checkpoint, clients cut off).
    pub fn kill(&self) {
        run(
            &self.bin,
            "pg_ctl",
            &[
                "-D",
                self.dir.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let data = self.dir.to_str().unwrap().to_owned();
        let program = self.bin.join("pg_ctl");
        let args = ["-D", data.as_str(), "-m", "immediate", "stop"];
        let _ = if is_root() {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&program)
                .args(args)
                .output()
        } else {
            Command::new(&program).args(args).output()
        };
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
