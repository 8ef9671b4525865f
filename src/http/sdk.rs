//! The settings documents browser SDKs fetch before they send anything, served from the
//! workspace so a page needs only Keel (no vendor control plane or CDN):
//!
//! - RudderStack JS SDK v3 (`configUrl` pointed at Keel): `GET /sourceConfig?writeKey=…`
//!   (also `/sourceConfig/`, and the write key as HTTP Basic user): the source, and its
//!   destinations that run in the browser (device mode: `connectionMode` `"device"` or
//!   `"hybrid"`, or `useNativeSDK`); cloud-mode destinations are Keel's to deliver and are
//!   left out. Secret settings never leave.
//! - Segment analytics.js 2.0 (`cdnURL` pointed at Keel):
//!   `GET /v1/projects/{writeKey}/settings`, whose `Segment.io` integration sends events to
//!   this Keel (`apiHost` from the request's own host).
//!
//! An unknown or disabled write key is a 404 with a JSON error. Answers carry
//! `Cache-Control: public, max-age=60`: a reload reaches browsers within a minute.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::auth;
use super::error::ApiError;
use super::state::AppState;
use keel_actors::workspace::{Destination, Source};

/// How long browsers and proxies may keep a settings document.
const MAX_AGE_SECS: u32 = 60;

/// Query of `GET /sourceConfig`.
#[derive(Deserialize)]
pub struct SourceConfigQuery {
    #[serde(rename = "writeKey")]
    write_key: Option<String>,
}

fn not_found(what: &str) -> ApiError {
    ApiError::new(
        actix_web::http::StatusCode::NOT_FOUND,
        "unknown_write_key",
        format!("{what}: no enabled source has this write key"),
    )
}

fn cached(body: Value) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((
            header::CACHE_CONTROL,
            format!("public, max-age={MAX_AGE_SECS}"),
        ))
        .json(body)
}

/// The enabled source owning `key`, or a 404.
fn source_for(state: &AppState, key: &str, what: &str) -> Result<Source, ApiError> {
    state
        .sources()
        .source(key)
        .filter(|s| s.enabled)
        .ok_or_else(|| not_found(what))
}

/// True when the destination runs in the browser (RudderStack's device mode).
fn device_mode(d: &Destination) -> bool {
    let mode = d.config.get("connectionMode").and_then(Value::as_str);
    matches!(mode, Some("device" | "hybrid"))
        || d.config.get("useNativeSDK").and_then(Value::as_bool) == Some(true)
}

/// A destination's settings without its secrets (a device-mode SDK needs public ids only):
/// neither secret-named members nor the settings its schema marks `writeOnly`.
fn public_config(config: &Map<String, Value>, secret_settings: &[String]) -> Map<String, Value> {
    config
        .iter()
        .filter(|(k, _)| !keel_actors::redact::is_secret_name(k) && !secret_settings.contains(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The RudderStack control plane's answer for `source`; `secret_settings` gives a
/// destination's `writeOnly` settings by id.
pub fn rudderstack_source_config(
    source: &Source,
    secret_settings: &dyn Fn(&str) -> Vec<String>,
) -> Value {
    let destinations: Vec<Value> = source
        .destinations
        .iter()
        .filter(|d| d.enabled && device_mode(d))
        .map(|d| {
            let def = &d.destination_definition;
            json!({
                "id": d.id,
                "name": d.name,
                "enabled": true,
                "deleted": false,
                "config": public_config(&d.config, &secret_settings(&d.id)),
                "destinationDefinitionId": def.name,
                "destinationDefinition": {
                    "name": def.name,
                    "displayName": def.display_name.as_deref().unwrap_or(&def.name),
                },
                "areTransformationsConnected": false,
                "shouldApplyDeviceModeTransformation": false,
                "propagateEventsUntransformedOnError": false,
            })
        })
        .collect();
    json!({
        "isHosted": false,
        "source": {
            "id": source.id,
            "name": source.name,
            "writeKey": source.write_key,
            "enabled": true,
            "workspaceId": "keel",
            "sourceDefinitionId": "keel-javascript",
            "sourceDefinition": {"name": "Javascript", "category": "webapp"},
            // No error or metrics reports to RudderStack's servers.
            "config": {"statsCollection": {"errors": {"enabled": false}, "metrics": {"enabled": false}}},
            "destinations": destinations,
            "dataplanes": {},
        },
    })
}

/// `GET /sourceConfig?writeKey=…` (RudderStack JS SDK v3's `configUrl`).
pub async fn source_config(
    req: HttpRequest,
    query: web::Query<SourceConfigQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let key = match (&query.write_key, auth::basic_write_key(req.headers())?) {
        (Some(k), _) if !k.is_empty() => k.clone(),
        (_, Some(k)) => k,
        _ => {
            return Err(ApiError::bad_request(
                "missing_write_key",
                "give the write key as ?writeKey=… or as the HTTP Basic user",
            ))
        }
    };
    let source = source_for(&state, &key, "sourceConfig")?;
    let index = state.sources();
    Ok(cached(rudderstack_source_config(&source, &|id| {
        index.secret_settings(id).to_vec()
    })))
}

/// Segment's CDN settings for `source`, sending to `api_host` (`host[:port]/v1`).
pub fn segment_settings(source: &Source, api_host: &str, protocol: &str) -> Value {
    json!({
        "integrations": {
            "Segment.io": {
                "apiKey": source.write_key,
                "apiHost": api_host,
                "protocol": protocol,
                "unbundledIntegrations": [],
                "addBundledMetadata": true,
                "maybeBundledConfigIds": {},
                "versionSettings": {"componentTypes": []},
            },
        },
        "plan": {
            "track": {"__default": {"enabled": true, "integrations": {}}},
            "identify": {"__default": {"enabled": true}},
            "group": {"__default": {"enabled": true}},
        },
        "edgeFunction": {},
        "analyticsNextEnabled": true,
        "middlewareSettings": {},
        "enabledMiddleware": {},
        // No metrics to Segment's servers.
        "metrics": {"sampleRate": 0},
        "legacyVideoPluginsEnabled": false,
        "remotePlugins": [],
    })
}

/// `GET /v1/projects/{writeKey}/settings` (analytics.js 2.0's `cdnURL`).
pub async fn segment_project_settings(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let source = source_for(&state, &path, "settings")?;
    let info = req.connection_info();
    let api_host = format!("{}/v1", info.host());
    Ok(cached(segment_settings(&source, &api_host, info.scheme())))
}
