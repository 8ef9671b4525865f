//! The console's workspace editor (RudderStack's config generator, served by Keel):
//!
//! - `GET /admin/catalogue`: every destination kind with its settings schema (the forms
//!   are generated from it; `check-config` validates with the same schemas).
//! - `GET /admin/workspace`: the workspace file as JSON.
//! - `POST /admin/workspace/validate`: a proposed workspace → `{valid, problems: [{path,
//!   message}]}`, the same checks as `check-config` and a reload (scripts compiled).
//! - `PUT /admin/workspace`: validates, writes the file atomically (temporary file in the
//!   same folder, then rename), reloads; a reload that fails puts the old file back.
//! - `POST /admin/workspace/write-key`: a new random write key.

use std::path::Path;

use actix_web::{web, HttpRequest, HttpResponse};
use rand::distributions::{Alphanumeric, DistString};
use serde_json::{json, Value};

use super::admin::authorize;
use super::error::ApiError;
use super::state::AppState;

/// Largest workspace the editor accepts.
const MAX_WORKSPACE_BYTES: usize = 8 * 1024 * 1024;

/// `GET /admin/catalogue`.
pub async fn catalogue(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let scripts_dir = Path::new(&state.config.transform.scripts_dir);
    let catalogue = keel_actors::destinations::catalogue::Catalogue::load(scripts_dir);
    let kinds: Vec<Value> = catalogue
        .kinds()
        .iter()
        .map(|k| {
            json!({
                "name": k.name,
                "aliases": k.aliases,
                "builtIn": k.script.is_none(),
                "title": k.schema.get("title").and_then(Value::as_str).unwrap_or(&k.name),
                "description": k.schema.get("description"),
                "secrets": k.secret_settings(),
                "schema": k.schema,
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({"kinds": kinds})))
}

/// `GET /admin/workspace`.
pub async fn get_workspace(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let path = Path::new(&state.config.server.workspace);
    let text = std::fs::read_to_string(path).map_err(|e| {
        ApiError::new(
            actix_web::http::StatusCode::NOT_FOUND,
            "workspace_unreadable",
            format!("{}: cannot read: {e}", path.display()),
        )
    })?;
    let value: Value = serde_json::from_str(&text).map_err(|e| {
        ApiError::new(
            actix_web::http::StatusCode::CONFLICT,
            "workspace_invalid_json",
            format!("{}: invalid JSON: {e}", path.display()),
        )
    })?;
    Ok(HttpResponse::Ok().json(json!({"path": path.display().to_string(), "workspace": value})))
}

/// `$.a.b: message` lines as `{path, message}` objects.
fn problems_json(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .map(|l| match l.split_once(": ") {
            Some((p, m)) if p.starts_with('$') => json!({"path": p, "message": m}),
            _ => json!({"path": "$", "message": l}),
        })
        .collect()
}

/// Every problem of `body` as a workspace (empty = valid), and its pretty text.
async fn check(state: &AppState, body: &[u8]) -> Result<(Vec<String>, String), ApiError> {
    if body.len() > MAX_WORKSPACE_BYTES {
        return Err(ApiError::too_large(format!(
            "a workspace is at most {MAX_WORKSPACE_BYTES} bytes"
        )));
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(
            "invalid_json",
            format!(
                "the workspace is not JSON: line {} column {}: {e}",
                e.line(),
                e.column()
            ),
        )
    })?;
    let text = serde_json::to_string_pretty(&value).unwrap_or_default() + "\n";
    let path = Path::new(&state.config.server.workspace);
    // Both passes, then what a reload would also refuse: scripts that do not compile or
    // export.
    let env = crate::config::build_env(&state.config, Some(state.transforms.clone()));
    let problems = match crate::workspace::check_workspace_text(&text, path, &env) {
        Ok((_, table)) => table.check_scripts().await,
        Err(e) => e.problems,
    };
    Ok((problems, text))
}

/// `POST /admin/workspace/validate`.
pub async fn validate_workspace(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let (problems, _) = check(&state, &body).await?;
    Ok(HttpResponse::Ok().json(json!({
        "valid": problems.is_empty(),
        "problems": problems_json(&problems),
    })))
}

/// Writes `text` to `path` atomically: a temporary file beside it, flushed, then renamed.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(text.as_bytes())?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Writes a file the console edited and reloads; puts the old text back if the reload
/// refuses it. Answers the reload report or the problems.
pub(crate) async fn write_and_reload(
    state: &AppState,
    path: &Path,
    text: &str,
) -> Result<HttpResponse, ApiError> {
    let previous = std::fs::read_to_string(path).ok();
    let io = |e: std::io::Error| {
        ApiError::new(
            actix_web::http::StatusCode::INTERNAL_SERVER_ERROR,
            "write_failed",
            format!("{}: cannot write: {e}", path.display()),
        )
    };
    write_atomically(path, text).map_err(io)?;
    match crate::reload::reload(state).await {
        Ok(report) => Ok(HttpResponse::Ok().json(json!({"status": "applied", "changes": report}))),
        Err(problems) => {
            if let Some(old) = previous {
                write_atomically(path, &old).map_err(io)?;
            }
            Ok(HttpResponse::BadRequest().json(json!({
                "error": "the reload refused the change; the file was put back and the running configuration is unchanged",
                "code": "invalid_workspace",
                "problems": problems_json(&problems),
            })))
        }
    }
}

/// `PUT /admin/workspace`.
pub async fn put_workspace(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let (problems, text) = check(&state, &body).await?;
    if !problems.is_empty() {
        return Ok(HttpResponse::BadRequest().json(json!({
            "error": "the workspace is invalid; nothing was written",
            "code": "invalid_workspace",
            "problems": problems_json(&problems),
        })));
    }
    let path = Path::new(&state.config.server.workspace);
    write_and_reload(&state, path, &text).await
}

/// `POST /admin/workspace/write-key`: 32 random letters and digits.
pub async fn new_write_key(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let key = Alphanumeric.sample_string(&mut rand::thread_rng(), 32);
    Ok(HttpResponse::Ok().json(json!({"writeKey": key})))
}
