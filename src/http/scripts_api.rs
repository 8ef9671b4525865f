//! The console's transformation editor:
//!
//! - `GET /admin/scripts`: the scripts the console may edit — every destination script and
//!   every user transformation the workspace names — with their paths.
//! - `GET /admin/scripts/file?path=…`: one script's text.
//! - `POST /admin/scripts/run`: runs a (possibly unsaved) script over an event with a
//!   destination's settings — the engine of `keel transform test` — and answers output,
//!   logs and error.
//! - `PUT /admin/scripts/file`: writes the script (atomically) and reloads; a reload that
//!   refuses it puts the old text back.
//! - `GET /admin/events/recent`: recently accepted events, to run a script on one.
//!
//! Only the listed files can be read or written: a path outside them is a 404.

use std::path::{Path, PathBuf};

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::admin::authorize;
use super::error::ApiError;
use super::state::AppState;

/// Largest script the editor accepts.
const MAX_SCRIPT_BYTES: usize = 2 * 1024 * 1024;

/// One editable script.
struct Editable {
    path: PathBuf,
    kind: &'static str,
    name: String,
}

fn editable(state: &AppState) -> Vec<Editable> {
    let scripts_dir = Path::new(&state.config.transform.scripts_dir);
    let catalogue = keel_actors::destinations::catalogue::Catalogue::load(scripts_dir);
    let mut out: Vec<Editable> = catalogue
        .kinds()
        .iter()
        .filter_map(|k| {
            k.script.clone().map(|path| Editable {
                path,
                kind: "destination",
                name: k.name.clone(),
            })
        })
        .collect();
    let workspace_dir = crate::workspace::workspace_dir(Path::new(&state.config.server.workspace));
    let index = state.sources();
    for s in index.all_sources() {
        for d in &s.destinations {
            for t in &d.transformations {
                let p = Path::new(&t.file);
                let path = if p.is_absolute() {
                    p.to_owned()
                } else {
                    workspace_dir.join(p)
                };
                if !out.iter().any(|e| e.path == path) {
                    out.push(Editable {
                        path,
                        kind: "transformation",
                        name: t.name.clone(),
                    });
                }
            }
        }
    }
    out
}

fn find(state: &AppState, path: &str) -> Result<Editable, ApiError> {
    editable(state)
        .into_iter()
        .find(|e| e.path.to_string_lossy() == path)
        .ok_or_else(|| {
            ApiError::new(
                actix_web::http::StatusCode::NOT_FOUND,
                "unknown_script",
                format!("{path:?} is not a destination script or a transformation the workspace names (GET /admin/scripts lists them)"),
            )
        })
}

/// `GET /admin/scripts`.
pub async fn list(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let scripts: Vec<Value> = editable(&state)
        .into_iter()
        .map(|e| json!({"path": e.path.to_string_lossy(), "kind": e.kind, "name": e.name}))
        .collect();
    Ok(HttpResponse::Ok().json(json!({"scripts": scripts})))
}

/// Query naming one script.
#[derive(Deserialize)]
pub struct PathQuery {
    path: String,
}

/// `GET /admin/scripts/file?path=…`.
pub async fn read(
    req: HttpRequest,
    query: web::Query<PathQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let e = find(&state, &query.path)?;
    let text = std::fs::read_to_string(&e.path).unwrap_or_default();
    Ok(HttpResponse::Ok()
        .json(json!({"path": query.path, "kind": e.kind, "name": e.name, "text": text})))
}

/// Body of `PUT /admin/scripts/file`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaveRequest {
    path: String,
    text: String,
}

/// `PUT /admin/scripts/file`.
pub async fn save(
    req: HttpRequest,
    body: web::Json<SaveRequest>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    if body.text.len() > MAX_SCRIPT_BYTES {
        return Err(ApiError::too_large(format!(
            "a script is at most {MAX_SCRIPT_BYTES} bytes"
        )));
    }
    let e = find(&state, &body.path)?;
    super::workspace_api::write_and_reload(&state, &e.path, &body.text).await
}

/// Body of `POST /admin/scripts/run`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// The script's text (unsaved edits included).
    text: String,
    /// Where it lives (names it in stacks; relative imports of libraries work as saved).
    #[serde(default)]
    path: Option<String>,
    /// The event.
    event: Map<String, Value>,
    /// The destination (workspace shape) whose settings a destination script reads.
    #[serde(default)]
    destination: Option<Value>,
}

/// `POST /admin/scripts/run`.
pub async fn run(
    req: HttpRequest,
    body: web::Json<RunRequest>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let body = body.into_inner();
    if body.text.len() > MAX_SCRIPT_BYTES {
        return Err(ApiError::too_large(format!(
            "a script is at most {MAX_SCRIPT_BYTES} bytes"
        )));
    }
    let path = PathBuf::from(body.path.unwrap_or_else(|| "console.js".into()));
    let destination = body.destination.unwrap_or_else(|| {
        json!({"id": "console", "name": "console", "config": {}, "destinationDefinition": {"name": "TEST"}})
    });
    let scripts_dir = Path::new(&state.config.transform.scripts_dir);
    let run = crate::transform_cli::run_source(
        &state.transforms,
        scripts_dir,
        &path,
        body.text,
        &body.event,
        &destination,
    )
    .await
    .map_err(|e| ApiError::bad_request("script_not_runnable", format!("{e:#}")))?;
    Ok(HttpResponse::Ok().json(run))
}

/// `GET /admin/events/recent`: recently accepted events kept by this node (every event
/// while the live view is open, else about one a second), newest first.
pub async fn recent(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    Ok(HttpResponse::Ok().json(json!({"events": state.children.live.samples()})))
}
