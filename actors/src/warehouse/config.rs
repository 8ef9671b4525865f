//! The `POSTGRES` warehouse destination kind: its workspace settings (`host`, `port`,
//! `database`, `user`, `password`, `schema`, `sslMode`, `uploadInterval`, `maxBatchRows`),
//! validated with errors naming the field, and the connection they describe (plain, or TLS
//! through rustls: `require` encrypts without checking the certificate, as libpq does;
//! `verify-ca`/`verify-full` check it against the Mozilla roots and the host name).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use super::sink::LoadError;
use crate::destinations::{ConfigError, Mapping, TransformError};
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

pub(crate) fn num(config: &Map<String, Value>, key: &str) -> Result<Option<f64>, String> {
    match config.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::Number(n)) => n.as_f64().map(Some).ok_or_else(|| "not a number".into()),
        Some(Value::String(s)) => s
            .trim()
            .parse::<f64>()
            .map(Some)
            .map_err(|_| format!("{s:?} is not a number")),
        Some(_) => Err("must be a number".into()),
    }
}

pub(crate) fn text(config: &Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match config.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err("must be a string".into()),
    }
}

impl PostgresWarehouse {
    /// Reads and checks the destination's settings.
    pub fn new(
        dest: &workspace::Destination,
        connect_timeout: Duration,
    ) -> Result<Self, ConfigError> {
        let err = |field: &str, problem: String| ConfigError {
            destination: dest.id.clone(),
            field: field.into(),
            problem,
        };
        let c = &dest.config;
        let required = |key: &str| -> Result<String, ConfigError> {
            text(c, key)
                .map_err(|p| err(key, p))?
                .ok_or_else(|| err(key, "missing (required by POSTGRES)".into()))
        };
        let host = required("host")?;
        let database = required("database")?;
        let user = required("user")?;
        let password = text(c, "password")
            .map_err(|p| err("password", p))?
            .unwrap_or_default();
        let port = match num(c, "port").map_err(|p| err("port", p))? {
            None => 5432,
            Some(p) if (1.0..=65535.0).contains(&p) && p.fract() == 0.0 => p as u16,
            Some(p) => return Err(err("port", format!("{p} is not a TCP port"))),
        };
        let ssl_mode = match text(c, "sslMode").map_err(|p| err("sslMode", p))?.as_deref() {
            None | Some("disable") => SslMode::Disable,
            Some("allow") | Some("prefer") => SslMode::Prefer,
            Some("require") => SslMode::Require,
            Some("verify-ca") | Some("verify-full") => SslMode::Verify,
            Some(other) => {
                return Err(err(
                    "sslMode",
                    format!("{other:?} is not one of disable, allow, prefer, require, verify-ca, verify-full"),
                ))
            }
        };
        let schema = text(c, "schema").map_err(|p| err("schema", p))?;
        if let Some(s) = &schema {
            if s.len() > super::schema::MAX_IDENT {
                return Err(err("schema", "longer than 63 bytes".into()));
            }
        }
        let upload_interval =
            match num(c, "uploadInterval").map_err(|p| err("uploadInterval", p))? {
                None => Duration::from_secs(30),
                Some(s) if s > 0.0 && s <= 86_400.0 => Duration::from_secs_f64(s),
                Some(s) => {
                    return Err(err(
                        "uploadInterval",
                        format!("{s} is not between 0 and 86400 seconds"),
                    ))
                }
            };
        let max_batch_rows = match num(c, "maxBatchRows").map_err(|p| err("maxBatchRows", p))? {
            None => 10_000,
            Some(n) if (1.0..=1_000_000.0).contains(&n) => n as i64,
            Some(n) => {
                return Err(err(
                    "maxBatchRows",
                    format!("{n} is not between 1 and 1000000"),
                ))
            }
        };
        Ok(Self {
            id: dest.id.clone(),
            conn: Arc::new(ConnConfig {
                host,
                port,
                database,
                user,
                password,
                ssl_mode,
                connect_timeout,
            }),
            schema,
            upload_interval,
            max_batch_rows,
        })
    }
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
