//! Keel's outbound HTTP client, used by destination kinds to deliver and by scripts'
//! `fetch`/`fetchV2`: one pooled reqwest client per destination with its timeouts, and the
//! address policy. Unless private targets are allowed it refuses loopback, private,
//! link-local and other non-public addresses: IP-literal URLs before sending, host names
//! after DNS resolution (a resolver that drops such addresses), so a name pointing inside
//! the network is refused too.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};

/// Settings every outbound client shares (HTTP and broker kinds: `timeout` bounds every
/// delivery attempt, `connect_timeout` every connection attempt).
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Whole-request timeout.
    pub timeout: Duration,
    /// TCP/TLS connect timeout.
    pub connect_timeout: Duration,
    /// Idle pooled connections kept per host.
    pub pool_max_idle_per_host: usize,
    /// Allow loopback, private and link-local targets (refused by default).
    pub allow_private_targets: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            pool_max_idle_per_host: 64,
            allow_private_targets: false,
        }
    }
}

/// A pooled client for one destination, with its address policy.
#[derive(Clone)]
pub struct HttpClient {
    inner: reqwest::Client,
    allow_private: bool,
    /// The endpoint parsed last and its URL: a destination mostly posts to one URL, and
    /// parsing it for every delivery was a few percent of a router's time.
    last_url: Arc<Mutex<Option<(String, reqwest::Url)>>>,
}

impl HttpClient {
    /// A request builder on the pooled client (the caller checked the target).
    pub(crate) fn request(
        &self,
        method: reqwest::Method,
        url: impl reqwest::IntoUrl,
    ) -> reqwest::RequestBuilder {
        self.inner.request(method, url)
    }

    /// `endpoint` parsed, from the one-entry cache when it is the last one seen; `None` if
    /// it is not a valid URL (the request builder then reports why).
    pub(crate) fn endpoint(&self, endpoint: &str) -> Option<reqwest::Url> {
        if let Ok(last) = self.last_url.lock() {
            if let Some((text, url)) = last.as_ref() {
                if text == endpoint {
                    return Some(url.clone());
                }
            }
        }
        let url = reqwest::Url::parse(endpoint).ok()?;
        if let Ok(mut last) = self.last_url.lock() {
            *last = Some((endpoint.to_owned(), url.clone()));
        }
        Some(url)
    }
}

/// Builds the pooled client for one destination (or for the isolates' `fetch`).
pub fn client(settings: &HttpConfig) -> HttpClient {
    let mut builder = reqwest::Client::builder()
        .timeout(settings.timeout)
        .connect_timeout(settings.connect_timeout)
        .pool_max_idle_per_host(settings.pool_max_idle_per_host)
        .user_agent(concat!("Keel/", env!("CARGO_PKG_VERSION")));
    if !settings.allow_private_targets {
        builder = builder.dns_resolver(Arc::new(PublicOnly));
    }
    HttpClient {
        inner: builder.build().unwrap_or_else(|_| reqwest::Client::new()),
        allow_private: settings.allow_private_targets,
        last_url: Arc::default(),
    }
}

/// True for addresses a destination may not point at unless private targets are allowed:
/// unspecified, loopback, private (RFC 1918, unique-local), link-local, shared (CGNAT),
/// multicast, broadcast, documentation and benchmarking ranges, and IPv4-mapped forms.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_unspecified()
                || v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || (o[0] == 198 && (o[1] == 18 || o[1] == 19))
                || o[0] >= 240
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private(IpAddr::V4(v4));
            }
            let seg = v6.segments();
            v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (seg[0] & 0xfe00) == 0xfc00
                || (seg[0] & 0xffc0) == 0xfe80
                || (seg[0] == 0x2001 && seg[1] == 0x0db8)
        }
    }
}

/// Why a target was refused.
#[derive(Debug)]
struct PrivateTarget(String);

impl std::fmt::Display for PrivateTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} is not a public address; set allow_private_targets = true (KEEL_ALLOW_PRIVATE_TARGETS=true) to allow it",
            self.0
        )
    }
}

impl std::error::Error for PrivateTarget {}

/// DNS resolution that keeps only public addresses.
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = all
                .iter()
                .copied()
                .filter(|a| !is_private(a.ip()))
                .collect();
            if public.is_empty() {
                let shown = all
                    .first()
                    .map_or(host.clone(), |a| format!("{host} ({})", a.ip()));
                return Err(
                    Box::new(PrivateTarget(shown)) as Box<dyn std::error::Error + Send + Sync>
                );
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

pub(crate) fn refused_private(e: &reqwest::Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(p) = s.downcast_ref::<PrivateTarget>() {
            return Some(p.to_string());
        }
        source = s.source();
    }
    None
}

/// The refusal for a URL whose host is a non-public IP literal (names are checked after
/// resolution), unless private targets are allowed.
pub(crate) fn refused_literal(client: &HttpClient, url: &reqwest::Url) -> Option<String> {
    if client.allow_private {
        return None;
    }
    let ip = url.host_str().and_then(|h| {
        h.trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .ok()
    })?;
    is_private(ip).then(|| format!("refused: {}", PrivateTarget(ip.to_string())))
}

/// A response to a script's `fetch`: status, headers and the body as text.
#[derive(Debug, Clone, Serialize)]
pub struct FetchResponse {
    /// HTTP status.
    pub status: u16,
    /// Header name → value (the last value of repeated headers).
    pub headers: Map<String, Value>,
    /// The body as (lossy UTF-8) text, at most `max_body` bytes.
    pub body: String,
}

/// One request made by a transformation script (`fetch`/`fetchV2`), with the destinations'
/// address policy and timeouts. Errors are messages for the script.
pub async fn fetch(
    client: &HttpClient,
    method: &str,
    url: &str,
    headers: &Map<String, Value>,
    body: Option<String>,
    max_body: usize,
) -> Result<FetchResponse, String> {
    let method = reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("invalid HTTP method {method:?}"))?;
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("invalid URL {url:?}: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("only http(s) URLs can be fetched, not {url:?}"));
    }
    if let Some(why) = refused_literal(client, &parsed) {
        return Err(why);
    }
    let mut builder = client.inner.request(method, parsed);
    for (k, v) in headers {
        builder = builder.header(k.as_str(), value_str(v));
    }
    if let Some(body) = body {
        builder = builder.body(body);
    }
    let res = builder.send().await.map_err(|e| {
        refused_private(&e).map_or_else(
            || format!("fetch failed: {}", e.without_url()),
            |why| format!("refused: {why}"),
        )
    })?;
    let status = res.status().as_u16();
    let headers = header_map(res.headers());
    let mut bytes = res
        .bytes()
        .await
        .map_err(|e| format!("reading the response failed: {}", e.without_url()))?
        .to_vec();
    bytes.truncate(max_body);
    Ok(FetchResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

/// Response headers as a JSON object: name → value (lossy UTF-8; the last of repeated ones).
pub(crate) fn header_map(headers: &reqwest::header::HeaderMap) -> Map<String, Value> {
    headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
            )
        })
        .collect()
}

/// A header or parameter value as text: strings as they are, anything else as JSON.
pub(crate) fn value_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_addresses() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "224.0.0.1",
        ] {
            assert!(is_private(ip.parse().expect("ip")), "{ip}");
        }
        for ip in ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "172.32.0.1"] {
            assert!(!is_private(ip.parse().expect("ip")), "{ip}");
        }
    }
}
