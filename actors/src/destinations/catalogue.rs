//! The destination catalogue: every kind this build can deliver to, each with its one
//! settings schema (JSON Schema 2020-12). Built-in kinds carry theirs in the binary
//! (`schemas/<KIND>.json`); a script kind's is `schema.json` beside its `transform.js`,
//! which may also list other names it answers to (`x-keel-aliases`, e.g. `MAILCHIMP` for
//! RudderStack's `MC`). Every kind also accepts the settings Keel reads for any destination
//! (batching, routing filters, throttling, connection mode): [`COMMON`] is merged into each
//! schema, so no second list exists.
//!
//! The schemas are what `keel check-config` validates a workspace against (each problem
//! with its JSON path), what the console renders its forms from, and where
//! `writeOnly: true` marks the settings that are secrets (redacted everywhere Keel shows
//! text, whatever their name).
//!
//! [`build`] is the factory: the kind a workspace destination names, built from its
//! settings. It lives here, above the kinds, so that the kinds (and the warehouse sinks)
//! depend on the `Destination` trait in `destinations/mod.rs` and nothing depends back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Map, Value};

use super::{nats, rabbitmq, redis, script, webhook};
use super::{BuildEnv, BuiltKind, ConfigError};
use crate::transform::Libraries;
use crate::workspace;

/// Settings Keel itself reads on any destination, merged into every kind's schema.
const COMMON: &str = include_str!("schemas/common.json");

/// The built-in kinds and their schemas.
const BUILT_IN: &[(&str, &str)] = &[
    (super::webhook::KIND, include_str!("schemas/WEBHOOK.json")),
    (
        crate::warehouse::config::KIND,
        include_str!("schemas/POSTGRES.json"),
    ),
    (super::redis::KIND, include_str!("schemas/REDIS.json")),
    (super::rabbitmq::KIND, include_str!("schemas/RABBITMQ.json")),
    (super::nats::KIND, include_str!("schemas/NATS.json")),
    ("S3", include_str!("schemas/S3.json")),
    ("MINIO", include_str!("schemas/MINIO.json")),
    ("GCS", include_str!("schemas/GCS.json")),
    ("AZURE_BLOB", include_str!("schemas/AZURE_BLOB.json")),
    (
        crate::warehouse::datalake::KIND,
        include_str!("schemas/S3_DATALAKE.json"),
    ),
    (
        crate::warehouse::clickhouse::KIND,
        include_str!("schemas/CLICKHOUSE.json"),
    ),
];

/// One destination kind.
#[derive(Debug, Clone)]
pub struct Kind {
    /// The definition name (`WEBHOOK`, `BRAZE`…): a script kind's folder name.
    pub name: String,
    /// Other definition names that select it.
    pub aliases: Vec<String>,
    /// The script, for script kinds.
    pub script: Option<PathBuf>,
    /// Its settings schema, with [`COMMON`] merged in.
    pub schema: Value,
}

/// A setting that does not fit its kind's schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingProblem {
    /// JSON path below the destination's `config`, e.g. `.headers[0].from` (empty for the
    /// whole object).
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// Every kind: the built-in ones, then the script folders.
#[derive(Debug, Clone, Default)]
pub struct Catalogue {
    kinds: Vec<Kind>,
}

impl Catalogue {
    /// The built-in kinds and the scripts under `<scripts_dir>/destinations/`. A script
    /// folder whose `schema.json` is missing gets a permissive schema; one that does not
    /// parse is reported by [`Catalogue::schema_errors`].
    pub fn load(scripts_dir: &Path) -> Self {
        let common: Value = serde_json::from_str(COMMON).unwrap_or(Value::Null);
        let mut kinds: Vec<Kind> = BUILT_IN
            .iter()
            .map(|(name, text)| Kind {
                name: (*name).to_owned(),
                aliases: Vec::new(),
                script: None,
                schema: merged(serde_json::from_str(text).unwrap_or(Value::Null), &common),
            })
            .collect();
        let mut scripts: BTreeMap<String, Kind> = BTreeMap::new();
        for entry in std::fs::read_dir(scripts_dir.join("destinations"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let script = entry.path().join("transform.js");
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if !script.is_file() {
                continue;
            }
            let schema = std::fs::read_to_string(entry.path().join("schema.json"))
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .unwrap_or_else(|| serde_json::json!({"type": "object"}));
            let aliases = schema
                .get("x-keel-aliases")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            scripts.insert(
                name.clone(),
                Kind {
                    name,
                    aliases,
                    script: Some(script),
                    schema: merged(schema, &common),
                },
            );
        }
        kinds.extend(scripts.into_values());
        Self { kinds }
    }

    /// Every kind, built-in ones first, scripts by name.
    pub fn kinds(&self) -> &[Kind] {
        &self.kinds
    }

    /// The kind a definition name selects: a built-in kind by its exact name, else a
    /// script by folder name or alias, case-insensitively.
    pub fn resolve(&self, definition: &str) -> Option<&Kind> {
        self.kinds
            .iter()
            .find(|k| k.script.is_none() && k.name == definition)
            .or_else(|| {
                self.kinds.iter().find(|k| {
                    k.script.is_some()
                        && (k.name.eq_ignore_ascii_case(definition)
                            || k.aliases.iter().any(|a| a.eq_ignore_ascii_case(definition)))
                })
            })
    }

    /// Names of every kind (and alias), for error messages.
    pub fn names(&self) -> Vec<String> {
        self.kinds
            .iter()
            .flat_map(|k| std::iter::once(k.name.clone()).chain(k.aliases.iter().cloned()))
            .collect()
    }

    /// Script folders whose `schema.json` exists but is not a valid schema.
    pub fn schema_errors(scripts_dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(scripts_dir.join("destinations"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let path = entry.path().join("schema.json");
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            match serde_json::from_str::<Value>(&text) {
                Err(e) => out.push(format!("{}: not JSON: {e}", path.display())),
                Ok(v) => {
                    if let Err(e) = jsonschema::validator_for(&v) {
                        out.push(format!("{}: not a JSON Schema: {e}", path.display()));
                    }
                }
            }
        }
        out
    }
}

impl Kind {
    /// Every place `config` does not fit the schema (none = valid).
    pub fn validate(&self, config: &Map<String, Value>) -> Vec<SettingProblem> {
        let validator = match jsonschema::validator_for(&self.schema) {
            Ok(v) => v,
            Err(e) => {
                return vec![SettingProblem {
                    path: String::new(),
                    message: format!("the {} settings schema is invalid: {e}", self.name),
                }]
            }
        };
        // Numeric strings are judged as the numbers they are read as.
        let empty = Map::new();
        let properties = self
            .schema
            .get("properties")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let instance = Value::Object(super::settings::numbers_read(config, properties));
        let mut problems: Vec<SettingProblem> = validator
            .iter_errors(&instance)
            .map(|e| {
                let path = json_path(&e.instance_path().to_string());
                match e.kind() {
                    // Said at the missing key, as a user looks for it.
                    jsonschema::error::ValidationErrorKind::Required { property } => {
                        SettingProblem {
                            path: format!("{path}.{}", property.as_str().unwrap_or_default()),
                            message: format!("missing (required by {})", self.name),
                        }
                    }
                    // A regular expression means little to a user: say what is expected.
                    jsonschema::error::ValidationErrorKind::Pattern { .. } => {
                        let pointer = e.schema_path().to_string();
                        let expected = pointer
                            .strip_suffix("/pattern")
                            .and_then(|p| self.schema.pointer(p))
                            .and_then(|node| node.get("description").or_else(|| node.get("title")))
                            .and_then(Value::as_str);
                        SettingProblem {
                            path,
                            message: match expected {
                                Some(what) => format!("{} does not fit: {what}", e.instance()),
                                None => e.to_string(),
                            },
                        }
                    }
                    _ => SettingProblem {
                        path,
                        message: e.to_string(),
                    },
                }
            })
            .collect();
        problems.dedup();
        problems
    }

    /// Top-level settings marked `writeOnly` (secrets, whatever their name).
    pub fn secret_settings(&self) -> Vec<String> {
        self.schema
            .get("properties")
            .and_then(Value::as_object)
            .map(|props| {
                props
                    .iter()
                    .filter(|(_, p)| p.get("writeOnly").and_then(Value::as_bool) == Some(true))
                    .map(|(k, _)| k.clone())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// `schema` with the common settings added where it does not define them itself.
fn merged(mut schema: Value, common: &Value) -> Value {
    let Some(extra) = common.get("properties").and_then(Value::as_object) else {
        return schema;
    };
    if let Some(obj) = schema.as_object_mut() {
        let props = obj
            .entry("properties")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(props) = props.as_object_mut() {
            for (k, v) in extra {
                props.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
    }
    schema
}

/// A JSON pointer (`/headers/0/from`) as the workspace errors write paths (`.headers[0].from`).
fn json_path(pointer: &str) -> String {
    let mut out = String::new();
    for part in pointer.split('/').skip(1) {
        let part = part.replace("~1", "/").replace("~0", "~");
        if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{part}]"));
        } else {
            out.push('.');
            out.push_str(&part);
        }
    }
    out
}

/// Destination script folders in `scripts_dir` (their names), for messages and `--all`.
pub fn script_kinds(scripts_dir: &Path) -> Vec<String> {
    Catalogue::load(scripts_dir)
        .kinds()
        .iter()
        .filter(|k| k.script.is_some())
        .map(|k| k.name.clone())
        .collect()
}

/// The script of a destination definition: `<scripts_dir>/destinations/<name>/transform.js`
/// (folder matched case-insensitively, aliases followed), with the kind's name.
pub fn destination_script(scripts_dir: &Path, definition: &str) -> Option<(String, PathBuf)> {
    let catalogue = Catalogue::load(scripts_dir);
    let kind = catalogue.resolve(definition)?;
    Some((kind.name.clone(), kind.script.clone()?))
}

/// Builds the kind named by `dest.destinationDefinition.name` (a built-in kind, else a
/// destination script whose folder or alias carries that name): the one pass over a
/// destination's settings. The kind's schema checks every setting and reports every misfit
/// with its path; only then does the kind's constructor run, which converts the settings
/// and checks only what a schema cannot say (a URL the URL parser refuses, a script that
/// does not load).
pub fn build(
    catalogue: &Catalogue,
    dest: &workspace::Destination,
    env: &BuildEnv,
    libraries: &Arc<Libraries>,
) -> Result<BuiltKind, Vec<ConfigError>> {
    let definition = dest.destination_definition.name.as_str();
    let Some(kind) = catalogue.resolve(definition) else {
        return Err(vec![ConfigError {
            destination: dest.id.clone(),
            field: "destinationDefinition.name".into(),
            problem: format!(
                "unknown destination kind {definition:?} (built in, or a script folder in {}: {})",
                env.scripts_dir.join("destinations").display(),
                catalogue.names().join(", ")
            ),
        }]);
    };
    let problems = kind.validate(&dest.config);
    if !problems.is_empty() {
        return Err(problems
            .into_iter()
            .map(|p| ConfigError {
                destination: dest.id.clone(),
                field: p.path.trim_start_matches('.').to_owned(),
                problem: p.message,
            })
            .collect());
    }
    construct(kind, dest, env, libraries).map_err(|e| vec![e])
}

/// The kind's constructor over settings its schema accepted.
fn construct(
    kind: &Kind,
    dest: &workspace::Destination,
    env: &BuildEnv,
    libraries: &Arc<Libraries>,
) -> Result<BuiltKind, ConfigError> {
    let http = &env.http;
    if let Some(script) = &kind.script {
        return Ok(BuiltKind::delivered(script::ScriptDestination::new(
            dest, &kind.name, script, env, libraries,
        )?));
    }
    Ok(match kind.name.as_str() {
        webhook::KIND => BuiltKind::delivered(webhook::Webhook::new(dest, http)?),
        crate::warehouse::config::KIND => BuiltKind::loaded(
            crate::warehouse::PostgresWarehouse::new(dest, http.connect_timeout),
        ),
        "S3" | "MINIO" | "GCS" | "AZURE_BLOB" => {
            BuiltKind::loaded(crate::warehouse::objects::ObjectStorage::new(dest, http)?)
        }
        crate::warehouse::datalake::KIND => {
            BuiltKind::loaded(crate::warehouse::datalake::DataLake::new(dest, http)?)
        }
        crate::warehouse::clickhouse::KIND => {
            BuiltKind::loaded(crate::warehouse::clickhouse::ClickHouse::new(dest, http))
        }
        redis::KIND => BuiltKind::delivered(redis::Redis::new(dest, http)?),
        rabbitmq::KIND => BuiltKind::delivered(rabbitmq::RabbitMq::new(dest, http)?),
        nats::KIND => BuiltKind::delivered(nats::Nats::new(dest, http)?),
        other => {
            return Err(ConfigError {
                destination: dest.id.clone(),
                field: "destinationDefinition.name".into(),
                problem: format!("built-in kind {other:?} has a schema but no constructor"),
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scripts() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../transformer-scripts")
    }

    #[test]
    fn every_shipped_schema_compiles() {
        assert!(Catalogue::schema_errors(&scripts()).is_empty());
        let c = Catalogue::load(&scripts());
        for k in c.kinds() {
            assert!(
                jsonschema::validator_for(&k.schema).is_ok(),
                "{}: invalid schema",
                k.name
            );
        }
        assert!(c.kinds().len() >= 30, "{}", c.kinds().len());
    }

    #[test]
    fn resolves_names_and_aliases_case_insensitively_for_scripts_only() {
        let c = Catalogue::load(&scripts());
        assert_eq!(
            c.resolve("WEBHOOK").map(|k| k.name.as_str()),
            Some("WEBHOOK")
        );
        assert!(c.resolve("webhook").is_none(), "built-in names are exact");
        assert_eq!(c.resolve("mc").map(|k| k.name.as_str()), Some("MC"));
        assert_eq!(c.resolve("MAILCHIMP").map(|k| k.name.as_str()), Some("MC"));
        assert_eq!(
            c.resolve("OneSignal").map(|k| k.name.as_str()),
            Some("ONE_SIGNAL")
        );
        assert!(c.resolve("NOPE").is_none());
    }

    #[test]
    fn problems_name_their_json_path() {
        let c = Catalogue::load(&scripts());
        let webhook = c.resolve("WEBHOOK").expect("webhook");
        assert!(webhook
            .validate(
                json!({"webhookUrl": "https://x.test/h"})
                    .as_object()
                    .unwrap()
            )
            .is_empty());
        let problems = webhook.validate(
            json!({"headers": [{"from": 5, "to": "x"}], "maxBatchSize": 0})
                .as_object()
                .unwrap(),
        );
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert!(
            paths.contains(&".webhookUrl"),
            "missing webhookUrl: {problems:?}"
        );
        assert!(paths.contains(&".headers[0].from"), "{problems:?}");
        assert!(paths.contains(&".maxBatchSize"), "{problems:?}");
        assert!(webhook.secret_settings().contains(&"webhookUrl".to_owned()));
    }

    #[test]
    fn storage_kinds_validate_with_rudderstack_keys_and_mark_secrets() {
        let c = Catalogue::load(&scripts());
        let s3 = c.resolve("S3").expect("S3");
        assert!(s3
            .validate(
                json!({"bucketName": "b", "prefix": "p", "accessKeyID": "k", "accessKey": "s",
                             "uploadInterval": "30"})
                .as_object()
                .unwrap()
            )
            .is_empty());
        let problems = s3.validate(json!({"uploadInterval": 0}).as_object().unwrap());
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert!(
            paths.contains(&".bucketName") && paths.contains(&".uploadInterval"),
            "{problems:?}"
        );
        assert_eq!(s3.secret_settings(), vec!["accessKey".to_owned()]);
        let minio = c.resolve("MINIO").expect("MINIO");
        assert!(minio
            .validate(json!({"bucketName": "b"}).as_object().unwrap())
            .iter()
            .any(|p| p.path == ".endPoint"));
        assert!(minio
            .secret_settings()
            .contains(&"secretAccessKey".to_owned()));
        let azure = c.resolve("AZURE_BLOB").expect("AZURE_BLOB");
        let mut secrets = azure.secret_settings();
        secrets.sort();
        assert_eq!(
            secrets,
            vec!["accountKey".to_owned(), "sasToken".to_owned()]
        );
        assert_eq!(
            c.resolve("GCS").expect("GCS").secret_settings(),
            vec!["credentials".to_owned()]
        );
        assert!(c.resolve("S3_DATALAKE").is_some());
        let ch = c.resolve("CLICKHOUSE").expect("CLICKHOUSE");
        assert!(ch
            .validate(
                json!({"host": "h", "database": "bad-name"})
                    .as_object()
                    .unwrap()
            )
            .iter()
            .any(|p| p.path == ".database"));
        assert_eq!(ch.secret_settings(), vec!["password".to_owned()]);
    }
}
