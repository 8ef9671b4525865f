//! The embedded database default: with no `DATABASE_URL`, use the local server at
//! `database.local_url` (creating database `keel` if missing) when one answers; otherwise
//! run `initdb`/`pg_ctl` to start a private cluster under `database.embedded_dir`, reachable
//! only through a Unix socket in that directory, and stop it when Keel exits.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tokio_postgres::NoTls;

use crate::config::DatabaseSettings;

/// Why no database could be had.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// Neither a local server nor the server binaries are available.
    #[error(
        "no PostgreSQL available: nothing answers at {local_url}, and initdb/pg_ctl were not \
         found on PATH or under /usr/lib/postgresql/*/bin. Set DATABASE_URL, start a server, \
         or install the PostgreSQL server (Debian/Ubuntu: apt-get install postgresql)"
    )]
    NothingFound {
        /// The URL probed.
        local_url: String,
    },
    /// A step of starting the private cluster failed.
    #[error("embedded PostgreSQL in {dir}: {step} failed: {detail}")]
    Step {
        /// The data directory.
        dir: String,
        /// What was attempted.
        step: &'static str,
        /// Output or error.
        detail: String,
    },
    /// Talking to a server failed.
    #[error("{0}")]
    Postgres(#[from] tokio_postgres::Error),
}

/// A private cluster Keel started; stopped when dropped.
pub struct EmbeddedCluster {
    data_dir: PathBuf,
    pg_ctl: PathBuf,
    run_as: Option<String>,
}

impl Drop for EmbeddedCluster {
    fn drop(&mut self) {
        let mut cmd = command(&self.pg_ctl, self.run_as.as_deref());
        cmd.arg("stop")
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-m", "fast", "-w"]);
        match cmd.output() {
            Ok(out) if out.status.success() => tracing::info!("embedded PostgreSQL stopped"),
            Ok(out) => {
                tracing::warn!(stderr = %String::from_utf8_lossy(&out.stderr), "pg_ctl stop failed")
            }
            Err(e) => tracing::warn!(error = %e, "pg_ctl stop failed"),
        }
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`, for logs and errors.
pub fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    match rest[..at].split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***{}", &rest[at..]),
        None => url.to_owned(),
    }
}

/// Picks the database: returns the URL to use and the cluster to keep alive, if one was started.
pub async fn resolve(
    db: &DatabaseSettings,
) -> Result<(String, Option<EmbeddedCluster>), EmbeddedError> {
    let local = db.local_url.trim_end_matches('/');
    if probe(&format!("{local}/postgres")).await {
        ensure_database(&format!("{local}/postgres"), "keel").await?;
        tracing::info!(url = %redact_password(local), "using the local PostgreSQL server, database keel");
        return Ok((format!("{local}/keel"), None));
    }
    let (initdb, pg_ctl) = find_binaries().ok_or_else(|| EmbeddedError::NothingFound {
        local_url: redact_password(local),
    })?;
    let dir = absolute(Path::new(&db.embedded_dir));
    let cluster = start_cluster(&dir, &initdb, &pg_ctl)?;
    let sock = dir.join("sock");
    let base = format!("host={} port=5432 user=postgres", sock.display());
    ensure_database(&format!("{base} dbname=postgres"), "keel").await?;
    tracing::info!(dir = %dir.display(), "using an embedded PostgreSQL cluster");
    Ok((format!("{base} dbname=keel"), Some(cluster)))
}

async fn probe(url: &str) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(3), tokio_postgres::connect(url, NoTls)).await,
        Ok(Ok(_))
    )
}

async fn ensure_database(admin_url: &str, name: &str) -> Result<(), EmbeddedError> {
    let (client, conn) = tokio_postgres::connect(admin_url, NoTls).await?;
    let driver = tokio::spawn(conn);
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await?
        .is_some();
    if !exists {
        // Two nodes racing to create it is harmless: one wins, the other sees 42P04.
        if let Err(e) = client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
        {
            if e.code() != Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE) {
                return Err(e.into());
            }
        }
    }
    drop(client);
    let _ = driver.await;
    Ok(())
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

/// `initdb` and `pg_ctl` from PATH, else from the newest `/usr/lib/postgresql/*/bin`.
fn find_binaries() -> Option<(PathBuf, PathBuf)> {
    let on_path = |name: &str| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
    };
    if let (Some(i), Some(c)) = (on_path("initdb"), on_path("pg_ctl")) {
        return Some((i, c));
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file())
        .collect();
    dirs.sort_by_key(|d| {
        d.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    dirs.pop().map(|d| (d.join("initdb"), d.join("pg_ctl")))
}

fn command(program: &Path, run_as: Option<&str>) -> Command {
    match run_as {
        Some(user) => {
            let mut c = Command::new("runuser");
            c.args(["-u", user, "--"]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

fn run(mut cmd: Command, dir: &Path, step: &'static str) -> Result<(), EmbeddedError> {
    let err = |detail: String| EmbeddedError::Step {
        dir: dir.display().to_string(),
        step,
        detail,
    };
    let out = cmd.output().map_err(|e| err(e.to_string()))?;
    if !out.status.success() {
        return Err(err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

fn start_cluster(
    dir: &Path,
    initdb: &Path,
    pg_ctl: &Path,
) -> Result<EmbeddedCluster, EmbeddedError> {
    // PostgreSQL refuses to run as root; run it as the `postgres` user then.
    let run_as = if nix::unistd::geteuid().is_root() {
        if nix::unistd::User::from_name("postgres")
            .ok()
            .flatten()
            .is_none()
        {
            return Err(EmbeddedError::Step {
                dir: dir.display().to_string(),
                step: "choosing a user",
                detail: "running as root and there is no `postgres` user to run the cluster as; \
                         run Keel as a normal user or set DATABASE_URL"
                    .into(),
            });
        }
        Some("postgres".to_owned())
    } else {
        None
    };
    let sock = dir.join("sock");
    let io_err = |e: std::io::Error| EmbeddedError::Step {
        dir: dir.display().to_string(),
        step: "creating the directory",
        detail: e.to_string(),
    };
    let owner = run_as
        .as_deref()
        .and_then(|u| nix::unistd::User::from_name(u).ok().flatten());
    let make_dir = |p: &Path| -> Result<(), EmbeddedError> {
        std::fs::create_dir_all(p).map_err(io_err)?;
        if let Some(u) = &owner {
            nix::unistd::chown(p, Some(u.uid), Some(u.gid)).map_err(|e| io_err(e.into()))?;
        }
        Ok(())
    };
    make_dir(dir)?;
    if !dir.join("PG_VERSION").exists() {
        let mut cmd = command(initdb, run_as.as_deref());
        cmd.arg("-D").arg(dir).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-instructions",
        ]);
        run(cmd, dir, "initdb")?;
    }
    make_dir(&sock)?;
    let cluster = EmbeddedCluster {
        data_dir: dir.to_path_buf(),
        pg_ctl: pg_ctl.to_path_buf(),
        run_as: run_as.clone(),
    };
    let mut cmd = command(pg_ctl, run_as.as_deref());
    cmd.arg("start")
        .arg("-D")
        .arg(dir)
        .arg("-l")
        .arg(dir.join("server.log"))
        .args(["-w", "-t", "60", "-o"])
        .arg(format!(
            "-c listen_addresses='' -c unix_socket_directories='{}' -p 5432",
            sock.display()
        ));
    run(cmd, dir, "pg_ctl start")?;
    Ok(cluster)
}

#[cfg(test)]
mod tests {
    use super::redact_password;

    #[test]
    fn redacts_only_the_password_of_a_url() {
        assert_eq!(
            redact_password("postgres://keel:s3cret@db:5432/keel"),
            "postgres://keel:***@db:5432/keel"
        );
        assert_eq!(
            redact_password("postgres://postgres@127.0.0.1:5432"),
            "postgres://postgres@127.0.0.1:5432"
        );
        assert_eq!(redact_password("host=/tmp user=x"), "host=/tmp user=x");
    }
}
