//! Write-key authentication: HTTP Basic (`writeKey:` as user) or a `writeKey` body field,
//! compared in constant time against every source so timing says nothing about which key
//! (or how much of one) matched.

use std::sync::Arc;

use actix_web::http::header::{self, HeaderMap};
use base64::Engine;
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::config::Workspace;

struct SourceEntry {
    write_key: Vec<u8>,
    id: Arc<str>,
    enabled: bool,
}

/// Write key → source lookup built from the workspace.
pub struct SourceIndex {
    sources: Vec<SourceEntry>,
}

impl SourceIndex {
    /// Indexes every source of `ws`.
    pub fn new(ws: &Workspace) -> Self {
        Self {
            sources: ws
                .sources
                .iter()
                .map(|s| SourceEntry {
                    write_key: s.write_key.as_bytes().to_vec(),
                    id: Arc::from(s.id.as_str()),
                    enabled: s.enabled,
                })
                .collect(),
        }
    }

    /// Every source id.
    pub fn source_ids(&self) -> Vec<&str> {
        self.sources.iter().map(|s| &*s.id).collect()
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
