//! A private PostgreSQL cluster a test starts itself (`initdb` + `pg_ctl`, found on PATH or
//! under `/usr/lib/postgresql/*/bin`, run as the `postgres` user when the tests run as root),
//! listening on 127.0.0.1 on a free port, so a test can stop and restart the database under
//! load without touching the machine's shared server. Stopped and deleted when dropped.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A running private cluster.
pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// TCP port on 127.0.0.1.
    pub port: u16,
}

fn find_bin() -> PathBuf {
    if let Some(paths) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&paths) {
            if d.join("initdb").is_file() && d.join("pg_ctl").is_file() {
                return d;
            }
        }
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("no initdb on PATH and no /usr/lib/postgresql: install the PostgreSQL server")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|d| d.join("initdb").is_file())
        .collect();
    dirs.sort_by_key(|d| {
        d.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    dirs.pop().expect("initdb under /usr/lib/postgresql/*/bin")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn command(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(mut cmd: Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl PgCluster {
    /// Creates and starts a cluster (trust auth, user `postgres`).
    pub fn start() -> PgCluster {
        let bin = find_bin();
        let dir = tempfile::Builder::new()
            .prefix("keel-pg-")
            .tempdir()
            .expect("temp dir");
        if is_root() {
            run(
                {
                    let mut c = Command::new("chown");
                    c.arg("postgres:").arg(dir.path());
                    c
                },
                "chown the cluster directory",
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut initdb = command(&bin.join("initdb"));
        initdb.arg("-D").arg(dir.path().join("data")).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        run(initdb, "initdb");
        let cluster = PgCluster { dir, bin, port };
        cluster.start_again();
        cluster
    }

    /// URL of database `db` in this cluster.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    fn pg_ctl(&self, args: &[&str]) -> Command {
        let mut c = command(&self.bin.join("pg_ctl"));
        c.arg("-D").arg(self.dir.path().join("data")).args(args);
        c
    }

    /// Starts the (stopped) cluster and waits until it accepts connections.
    pub fn start_again(&self) {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c max_connections=100",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("pg.log");
        let mut cmd = self.pg_ctl(&["start", "-w", "-t", "60", "-o", &opts, "-l"]);
        cmd.arg(log);
        run(cmd, "pg_ctl start");
    }

    /// Stops the cluster; `immediate` is a crash (no checkpoint, WAL replay at start).
    pub fn stop(&self, mode: &str) {
        run(self.pg_ctl(&["stop", "-w", "-m", mode]), "pg_ctl stop");
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["stop", "-w", "-m", "immediate"]).output();
    }
}
