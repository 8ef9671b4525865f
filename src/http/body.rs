//! Reading request bodies under caps: the declared length, the bytes received and the bytes
//! inflated from gzip are each checked against the request cap as they arrive, so neither a
//! huge upload nor a gzip bomb is ever held in memory beyond the cap; and the whole body must
//! arrive within the read timeout, so a client trickling bytes (slowloris) cannot hold a
//! connection and its buffer open.

use std::io::Read;

use actix_web::http::header::{self, HeaderMap};
use actix_web::web;
use futures::StreamExt;

use super::error::ApiError;

/// How the body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Plain bytes.
    Identity,
    /// `Content-Encoding: gzip`.
    Gzip,
}

/// Checks `Content-Type` and `Content-Encoding`. Like Segment's API, the body is read as
/// JSON whatever the label says, as long as the label could carry JSON: none,
/// `application/json` (and `+json` types), `text/plain` (browsers' `sendBeacon`) and
/// `application/x-www-form-urlencoded` (RudderStack's Node SDK labels its gzipped JSON so).
/// Types that cannot be JSON (`multipart/*`, XML, binary…) are 415.
pub fn check_headers(headers: &HeaderMap) -> Result<Encoding, ApiError> {
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
        let mime = ct.split(';').next().unwrap_or("").trim();
        let json_like = matches!(
            mime,
            "" | "application/json" | "text/plain" | "application/x-www-form-urlencoded"
        ) || (mime.starts_with("application/") && mime.ends_with("+json"));
        if !json_like {
            return Err(ApiError::new(
                actix_web::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!("Content-Type {mime:?} is not accepted; send application/json"),
            ));
        }
    }
    match headers.get(header::CONTENT_ENCODING) {
        None => Ok(Encoding::Identity),
        Some(v) => match v
            .to_str()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
            .as_str()
        {
            "" | "identity" => Ok(Encoding::Identity),
            "gzip" | "x-gzip" => Ok(Encoding::Gzip),
            other => Err(ApiError::new(
                actix_web::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_encoding",
                format!("Content-Encoding {other:?} is not supported; use gzip or none"),
            )),
        },
    }
}

/// Reads the whole body, at most `max` bytes on the wire and at most `max` bytes inflated,
/// within `timeout` (else 408 `request_timeout`).
pub async fn read_body(
    headers: &HeaderMap,
    payload: web::Payload,
    encoding: Encoding,
    max: usize,
    timeout: std::time::Duration,
) -> Result<Vec<u8>, ApiError> {
    match tokio::time::timeout(timeout, read_capped(headers, payload, encoding, max)).await {
        Ok(result) => result,
        Err(_) => Err(ApiError::new(
            actix_web::http::StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "the request body did not arrive within {} s (server.read_timeout_secs)",
                timeout.as_secs()
            ),
        )),
    }
}

async fn read_capped(
    headers: &HeaderMap,
    mut payload: web::Payload,
    encoding: Encoding,
    max: usize,
) -> Result<Vec<u8>, ApiError> {
    let over = || ApiError::too_large(format!("request body exceeds {max} bytes"));
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
    {
        if len > max {
            return Err(over());
        }
    }
    let mut raw = Vec::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::bad_request("body_read_failed", format!("could not read body: {e}"))
        })?;
        if raw.len() + chunk.len() > max {
            return Err(over());
        }
        raw.extend_from_slice(&chunk);
    }
    match encoding {
        Encoding::Identity => Ok(raw),
        Encoding::Gzip => inflate(&raw, max),
    }
}

/// Inflates gzip `raw`, stopping as soon as the output would pass `max` bytes.
pub fn inflate(raw: &[u8], max: usize) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::with_capacity(raw.len().saturating_mul(4).min(max + 1));
    let decoder = flate2::read::MultiGzDecoder::new(raw);
    decoder
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| {
            ApiError::bad_request("invalid_gzip", format!("body is not valid gzip: {e}"))
        })?;
    if out.len() > max {
        return Err(ApiError::too_large(format!(
            "request body inflates to more than {max} bytes"
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(data).expect("gzip in memory");
        enc.finish().expect("gzip in memory")
    }

    #[test]
    fn inflates_within_cap() {
        let data = b"{\"a\":1}".repeat(100);
        assert_eq!(inflate(&gzip(&data), 10_000).expect("fits"), data);
    }

    #[test]
    fn refuses_gzip_bomb_without_inflating_it_all() {
        let bomb = gzip(&vec![b' '; 10 * 1024 * 1024]);
        assert!(
            bomb.len() < 20_000,
            "bomb is small on the wire: {}",
            bomb.len()
        );
        let err = inflate(&bomb, 500 * 1024).expect_err("over cap");
        assert_eq!(err.status.as_u16(), 413);
    }

    #[test]
    fn rejects_corrupt_gzip_with_400() {
        let err = inflate(b"not gzip at all", 1000).expect_err("corrupt");
        assert_eq!(err.code, "invalid_gzip");
    }
}
