//! The `POSTGRES` warehouse destination kind: its workspace settings (`host`, `port`,
//! `database`, `user`, `password`, `schema`, `sslMode`, `uploadInterval`, `maxBatchRows`),
//! read once its schema (`schemas/POSTGRES.json`) accepted them, and the connection they describe (plain, or TLS
//! through rustls: `require` encrypts without checking the certificate, as libpq does;
//! `verify-ca`/`verify-full` check it against the Mozilla roots and the host name).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use super::sink::LoadError;
use crate::destinations::settings::Settings;
use crate::destinations::{Mapping, TransformError};
use crate::workspace;

/// Kind name in `destinationDefinition.name`.
pub const KIND: &str = "POSTGRES";

/// How the connection is secured (libpq's `sslmode` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS if the server offers it, without certificate checks; else plain.
    Prefer,
    /// TLS, without certificate checks.
    Require,
    /// TLS with the certificate checked against public roots and the host name.
    Verify,
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct ConnConfig {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Database name.
    pub database: String,
    /// User.
    pub user: String,
    /// Password (may be empty).
    pub password: String,
    /// TLS mode.
    pub ssl_mode: SslMode,
    /// Connect timeout.
    pub connect_timeout: Duration,
}

/// A `POSTGRES` warehouse destination.
#[derive(Debug, Clone)]
pub struct PostgresWarehouse {
    /// Destination id.
    pub id: String,
    /// Connection.
    pub conn: Arc<ConnConfig>,
    /// Schema for every source; `None` means `keel_<source name>` per source.
    pub schema: Option<String>,
    /// How often the uploader loads what is waiting.
    pub upload_interval: Duration,
    /// Events per load batch at most.
    pub max_batch_rows: i64,
}

impl PostgresWarehouse {
    /// Reads the destination's settings, which the POSTGRES schema accepted.
    pub fn new(dest: &workspace::Destination, connect_timeout: Duration) -> Self {
        let c = Settings::new(dest);
        let ssl_mode = match c.string("sslMode").as_deref() {
            Some("allow") | Some("prefer") => SslMode::Prefer,
            Some("require") => SslMode::Require,
            Some("verify-ca") | Some("verify-full") => SslMode::Verify,
            _ => SslMode::Disable,
        };
        let (upload_interval, max_batch_rows) = batching(&c, 30.0);
        Self {
            id: dest.id.clone(),
            conn: Arc::new(ConnConfig {
                host: c.required("host"),
                port: c.whole("port").map_or(5432, |p| p as u16),
                database: c.required("database"),
                user: c.required("user"),
                password: c.string("password").unwrap_or_default(),
                ssl_mode,
                connect_timeout,
            }),
            schema: c.string("schema"),
            upload_interval,
            max_batch_rows,
        }
    }
}

/// The batching settings every batch-uploading kind shares (`uploadInterval` seconds,
/// `maxBatchRows`), with the interval used when none is set.
pub(crate) fn batching(c: &Settings<'_>, default_interval: f64) -> (Duration, i64) {
    (
        Duration::from_secs_f64(c.number("uploadInterval").unwrap_or(default_interval)),
        c.number("maxBatchRows").map_or(10_000, |n| n as i64),
    )
}

impl Mapping for PostgresWarehouse {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn transform(&self, event: &Map<String, Value>) -> Result<Vec<Value>, TransformError> {
        Ok(vec![Value::Object(event.clone())])
    }

    fn warehouse(&self) -> Option<&dyn super::WarehouseKind> {
        Some(self)
    }
}

impl ConnConfig {
    /// Opens a connection; its I/O runs on a spawned task until the client is dropped.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, LoadError> {
        let mut pg = tokio_postgres::Config::new();
        pg.host(&self.host)
            .port(self.port)
            .dbname(&self.database)
            .user(&self.user)
            .password(self.password.as_bytes())
            .application_name("keel-warehouse")
            .connect_timeout(self.connect_timeout);
        let fail = |e: tokio_postgres::Error| LoadError::Connect(e.to_string());
        let timeout = self.connect_timeout + Duration::from_secs(1);
        let connected = async {
            match self.ssl_mode {
                SslMode::Disable => {
                    pg.ssl_mode(tokio_postgres::config::SslMode::Disable);
                    let (client, conn) = pg.connect(tokio_postgres::NoTls).await.map_err(fail)?;
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(error = %e, "warehouse connection ended");
                        }
                    });
                    Ok(client)
                }
                mode => {
                    pg.ssl_mode(if mode == SslMode::Prefer {
                        tokio_postgres::config::SslMode::Prefer
                    } else {
                        tokio_postgres::config::SslMode::Require
                    });
                    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls_config(mode)?);
                    let (client, conn) = pg.connect(tls).await.map_err(fail)?;
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(error = %e, "warehouse connection ended");
                        }
                    });
                    Ok(client)
                }
            }
        };
        tokio::time::timeout(timeout, connected)
            .await
            .map_err(|_| LoadError::Connect(format!("no answer within {timeout:?}")))?
    }
}

fn tls_config(mode: SslMode) -> Result<rustls::ClientConfig, LoadError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| LoadError::Connect(format!("TLS setup: {e}")))?;
    Ok(if mode == SslMode::Verify {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth()
    })
}

/// `sslMode: require`: encrypted, certificate not checked (libpq's meaning). Handshake
/// signatures are still verified.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
