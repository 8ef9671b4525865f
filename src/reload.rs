//! Configuration reload (SIGHUP or `POST /admin/reload`): re-reads and validates the
//! workspace file, then swaps the write-key index and hands the new routing table to the
//! supervisor, which restarts only the routers and uploaders whose destinations changed.
//! An invalid file changes nothing and every problem is reported. Reloads run one at a
//! time. `keel.toml` is not re-read (server settings need a restart).

use std::sync::Arc;
use std::time::Duration;

use keel_actors::supervisor::{Reconfigure, ReloadReport};

use crate::http::auth::SourceIndex;
use crate::http::state::AppState;
use crate::workspace::{check_workspace, WorkspaceError};

static RELOADING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Applies the workspace file named by `server.workspace`; on failure returns every
/// problem (`file: path: problem` lines) and leaves the running configuration alone.
pub async fn reload(state: &AppState) -> Result<ReloadReport, Vec<String>> {
    let _one_at_a_time = RELOADING.lock().await;
    let path = std::path::Path::new(&state.config.server.workspace);
    let lines = |e: WorkspaceError| {
        e.problems
            .iter()
            .map(|p| format!("{}: {p}", e.file))
            .collect::<Vec<_>>()
    };
    let env = crate::config::build_env(&state.config, Some(state.transforms.clone()));
    let http = env.http.clone();
    let (ws, routing) = check_workspace(path, &env).map_err(lines)?;
    let problems = routing.check_scripts().await;
    if !problems.is_empty() {
        return Err(problems);
    }
    // Routers being replaced get at least one delivery timeout to finish what they sent.
    let drain_deadline = Duration::from_secs(state.config.server.drain_timeout_secs)
        .max(http.timeout + Duration::from_secs(1));
    let report = state
        .root
        .send(Reconfigure {
            routing: Arc::new(routing),
            drain_deadline,
        })
        .await
        .map_err(|e| {
            vec![format!(
                "the supervisor did not take the new configuration: {e}"
            )]
        })?;
    let index = Arc::new(SourceIndex::new(
        &ws,
        std::path::Path::new(&state.config.transform.scripts_dir),
    ));
    match state.sources.write() {
        Ok(mut s) => *s = index,
        Err(poisoned) => *poisoned.into_inner() = index,
    }
    tracing::info!(file = %path.display(), sources = ws.sources.len(), "workspace reloaded");
    Ok(report)
}
