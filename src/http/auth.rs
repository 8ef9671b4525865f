//! Write-key authentication: HTTP Basic (`writeKey:` as user), a `writeKey` query parameter
//! (browsers' `sendBeacon`) or a `writeKey` body field,
//! compared in constant time against every source so timing says nothing about which key
//! (or how much of one) matched.

use std::sync::Arc;

use actix_web::http::header::{self, HeaderMap};
use base64::Engine;
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::workspace::Workspace;

struct SourceEntry {
    write_key: Vec<u8>,
    id: Arc<str>,
    enabled: bool,
    /// The whole source, for the SDK settings documents.
    source: keel_actors::workspace::Source,
}

/// Write key → source lookup built from the workspace, with the workspace's secrets (what
/// the admin API redacts).
pub struct SourceIndex {
    sources: Vec<SourceEntry>,
    /// Destination id → its `writeOnly` settings (from its kind's schema).
    secret_settings: std::collections::HashMap<String, Vec<String>>,
    redactor: keel_actors::redact::Redactor,
}

impl SourceIndex {
    /// Indexes every source of `ws`; `scripts_dir` holds the script kinds' schemas (which
    /// settings are secrets).
    pub fn new(ws: &Workspace, scripts_dir: &std::path::Path) -> Self {
        let catalogue = keel_actors::destinations::catalogue::Catalogue::load(scripts_dir);
        let secret_settings = |d: &keel_actors::workspace::Destination| {
            catalogue
                .resolve(&d.destination_definition.name)
                .map(|k| k.secret_settings())
                .unwrap_or_default()
        };
        for s in &ws.sources {
            keel_actors::telemetry::register_source_series(&s.id);
        }
        let secret_by_destination = ws
            .sources
            .iter()
            .flat_map(|s| &s.destinations)
            .map(|d| (d.id.clone(), secret_settings(d)))
            .collect();
        Self {
            secret_settings: secret_by_destination,
            sources: ws
                .sources
                .iter()
                .map(|s| SourceEntry {
                    write_key: s.write_key.as_bytes().to_vec(),
                    id: Arc::from(s.id.as_str()),
                    enabled: s.enabled,
                    source: s.clone(),
                })
                .collect(),
            redactor: keel_actors::redact::Redactor::for_workspace(ws, &secret_settings),
        }
    }

    /// Replaces the workspace's secrets (write keys, secret destination settings).
    pub fn redactor(&self) -> &keel_actors::redact::Redactor {
        &self.redactor
    }

    /// Every source id.
    pub fn source_ids(&self) -> Vec<&str> {
        self.sources.iter().map(|s| &*s.id).collect()
    }

    /// Settings of destination `id` its kind's schema marks as secrets (`writeOnly`).
    pub fn secret_settings(&self, id: &str) -> &[String] {
        self.secret_settings.get(id).map_or(&[], Vec::as_slice)
    }

    /// Every source of the workspace, in its order.
    pub fn all_sources(&self) -> impl Iterator<Item = &keel_actors::workspace::Source> {
        self.sources.iter().map(|s| &s.source)
    }

    /// The source owning `key` (enabled or not), compared as `authenticate` does.
    pub fn source(&self, key: &str) -> Option<keel_actors::workspace::Source> {
        let mut found = None;
        for s in &self.sources {
            if bool::from(s.write_key.as_slice().ct_eq(key.as_bytes())) {
                found = Some(&s.source);
            }
        }
        found.cloned()
    }

    /// The id of the enabled source owning `key`, or a 401.
    pub fn authenticate(&self, key: &str) -> Result<Arc<str>, ApiError> {
        let mut found: Option<&SourceEntry> = None;
        for s in &self.sources {
            if bool::from(s.write_key.as_slice().ct_eq(key.as_bytes())) {
                found = Some(s);
            }
        }
        match found {
            None => Err(ApiError::unauthorized(
                "invalid_write_key",
                "unknown write key; check the SDK's writeKey",
            )),
            Some(s) if !s.enabled => Err(ApiError::unauthorized(
                "source_disabled",
                "the source for this write key is disabled",
            )),
            Some(s) => Ok(s.id.clone()),
        }
    }
}

/// The `writeKey` query parameter, if there is a non-empty one.
pub fn query_write_key(query: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, v)| k == "writeKey" && !v.is_empty())
        .map(|(_, v)| v.into_owned())
}

/// The write key from an `Authorization: Basic` header, if the header is present.
pub fn basic_write_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let malformed = || {
        ApiError::unauthorized(
            "invalid_authorization",
            "Authorization must be HTTP Basic with the write key as user name",
        )
    };
    let value = value.to_str().map_err(|_| malformed())?;
    let (scheme, encoded) = value.trim().split_once(' ').ok_or_else(malformed)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(malformed());
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| malformed())?;
    let decoded = String::from_utf8(decoded).map_err(|_| malformed())?;
    let user = decoded.split_once(':').map_or(decoded.as_str(), |(u, _)| u);
    if user.is_empty() {
        return Err(ApiError::unauthorized(
            "missing_write_key",
            "the Basic user name (the write key) is empty",
        ));
    }
    Ok(Some(user.to_owned()))
}
