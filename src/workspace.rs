//! The workspace file (`workspace.json`, RudderStack's workspace shape): reading it and
//! checking it in two passes, each setting in exactly one. The structure pass
//! ([`validate_workspace`]) checks what surrounds the destinations' settings (sources, ids,
//! names, unique write keys, definition names, transformation entries) and converts the
//! file into [`Workspace`]; the settings pass ([`routing_table`]) builds every destination,
//! its kind's schema judging each setting before a constructor that only converts. Every
//! problem carries its JSON path in the file.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::path::Path;

use serde_json::Value;

use keel_actors::destinations::BuildEnv;

pub use keel_actors::workspace::{Destination, DestinationDefinition, Source, Workspace};

/// Every problem found in a workspace file, each with its JSON path.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {}", .problems.join(&format!("\n{}: ", .file)))]
pub struct WorkspaceError {
    /// The file read.
    pub file: String,
    /// `path: problem` lines.
    pub problems: Vec<String>,
}

/// Reads the workspace file at `path` and checks its structure (sources, ids, names, write
/// keys), collecting every problem rather than stopping at the first. Destination settings
/// are checked once, where they are built: [`routing_table`], or [`check_workspace`] for
/// both passes at once.
pub fn load_workspace(path: &Path) -> Result<Workspace, WorkspaceError> {
    workspace_from_text(&read_workspace(path)?, path)
}

/// The text of the workspace file at `path`.
fn read_workspace(path: &Path) -> Result<String, WorkspaceError> {
    std::fs::read_to_string(path).map_err(|e| WorkspaceError {
        file: path.display().to_string(),
        problems: vec![format!("cannot read: {e}")],
    })
}

/// `text` as JSON, or the parse error with its line and column.
fn parse_json(text: &str, path: &Path) -> Result<Value, WorkspaceError> {
    serde_json::from_str(text).map_err(|e| WorkspaceError {
        file: path.display().to_string(),
        problems: vec![format!(
            "invalid JSON at line {} column {}: {e}",
            e.line(),
            e.column()
        )],
    })
}

/// Reads `text` as the workspace file at `path` would be read: JSON, then its structure
/// (every problem, each with its JSON path), then the typed [`Workspace`].
pub fn workspace_from_text(text: &str, path: &Path) -> Result<Workspace, WorkspaceError> {
    let value = parse_json(text, path)?;
    let problems = validate_workspace(&value);
    if !problems.is_empty() {
        return Err(WorkspaceError {
            file: path.display().to_string(),
            problems,
        });
    }
    convert(value, path)
}

/// A structurally valid workspace `value` as the typed [`Workspace`] (a conversion: the
/// structure pass has judged it).
fn convert(value: Value, path: &Path) -> Result<Workspace, WorkspaceError> {
    serde_json::from_value(value).map_err(|e| WorkspaceError {
        file: path.display().to_string(),
        problems: vec![format!("$: {e}")],
    })
}

/// Both passes over the workspace file at `path`, every problem of either reported at once
/// (see [`check_workspace_text`]).
pub fn check_workspace(
    path: &Path,
    env: &BuildEnv,
) -> Result<(Workspace, keel_actors::routing::RoutingTable), WorkspaceError> {
    check_workspace_text(&read_workspace(path)?, path, env)
}

/// Both passes over `text` (the workspace file at `path`): the structure pass, then the
/// settings pass ([`routing_table`]). With structure problems the settings of every
/// destination whose own structure is sound are still judged, so one run reports
/// everything; each setting is still judged once.
pub fn check_workspace_text(
    text: &str,
    path: &Path,
    env: &BuildEnv,
) -> Result<(Workspace, keel_actors::routing::RoutingTable), WorkspaceError> {
    let value = parse_json(text, path)?;
    let mut problems = validate_workspace(&value);
    if problems.is_empty() {
        let ws = convert(value, path)?;
        return routing_table(&ws, env, path).map(|table| (ws, table));
    }
    let mut sound = Vec::new();
    let mut places = Vec::new();
    let sources = value.get("sources").and_then(Value::as_array);
    for (i, src) in sources.into_iter().flatten().enumerate() {
        let dests = src.get("destinations").and_then(Value::as_array);
        for (j, dest) in dests.into_iter().flatten().enumerate() {
            let at = format!("$.sources[{i}].destinations[{j}]");
            let clean = !problems.iter().any(|p| {
                p.strip_prefix(at.as_str())
                    .is_some_and(|rest| rest.starts_with(['.', ':']))
            });
            if let (true, Ok(d)) = (clean, serde_json::from_value::<Destination>(dest.clone())) {
                places.push((d.id.clone(), at));
                sound.push(d);
            }
        }
    }
    let partial = Workspace {
        sources: vec![keel_actors::workspace::Source {
            id: String::new(),
            name: String::new(),
            write_key: String::new(),
            enabled: true,
            destinations: sound,
        }],
    };
    if let Err(errors) = keel_actors::routing::RoutingTable::build(&partial, env) {
        problems.extend(placed(errors, &places));
    }
    Err(WorkspaceError {
        file: path.display().to_string(),
        problems,
    })
}

/// Builds the routing table of `ws` (read from `file`): the one pass over every
/// destination's settings (its kind's schema, then its constructor) and transformations.
/// Every problem is reported with its JSON path in the file, as
/// `$.sources[i].destinations[j].config.<key>: problem`, after any script folder whose
/// `schema.json` is broken.
pub fn routing_table(
    ws: &Workspace,
    env: &BuildEnv,
    file: &Path,
) -> Result<keel_actors::routing::RoutingTable, WorkspaceError> {
    let schema_errors =
        keel_actors::destinations::catalogue::Catalogue::schema_errors(&env.scripts_dir);
    let built = keel_actors::routing::RoutingTable::build(ws, env);
    if schema_errors.is_empty() {
        if let Ok(table) = built {
            return Ok(table);
        }
    }
    let mut places = Vec::new();
    for (i, src) in ws.sources.iter().enumerate() {
        for (j, d) in src.destinations.iter().enumerate() {
            places.push((d.id.clone(), format!("$.sources[{i}].destinations[{j}]")));
        }
    }
    let mut problems = schema_errors;
    problems.extend(placed(built.err().unwrap_or_default(), &places));
    Err(WorkspaceError {
        file: file.display().to_string(),
        problems,
    })
}

/// Each settings problem at every place (destination id, JSON path) its destination has
/// (`*`: every destination); one without a place at `$`.
fn placed(
    errors: Vec<keel_actors::destinations::ConfigError>,
    places: &[(String, String)],
) -> Vec<String> {
    let mut problems = Vec::new();
    for e in errors {
        let at_len = problems.len();
        for (id, at) in places {
            if *id == e.destination || e.destination == "*" {
                problems.push(format!("{at}.{}: {}", e.path(), e.problem));
            }
        }
        if problems.len() == at_len {
            problems.push(format!("$: {e}"));
        }
    }
    problems.dedup();
    problems
}

/// The folder relative transformation paths start from: the workspace file's own.
pub fn workspace_dir(workspace: &Path) -> std::path::PathBuf {
    workspace
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_owned()
}

fn validate_transformations(dest: &Value, at: &str, problems: &mut Vec<String>) {
    let Some(list) = dest.get("transformations") else {
        return;
    };
    let Some(list) = list.as_array() else {
        problems.push(format!(
            "{at}.transformations: must be an array of {{name, file}}"
        ));
        return;
    };
    for (k, t) in list.iter().enumerate() {
        let at = format!("{at}.transformations[{k}]");
        if !t.is_object() {
            problems.push(format!("{at}: must be an object with name and file"));
            continue;
        }
        require_str(t, "name", &at, problems);
        require_str(t, "file", &at, problems);
    }
}

/// What a destination is built from: its `config` and `destinationDefinition.name`.
type BuiltFrom<'a> = (Option<&'a Value>, Option<&'a Value>);

/// The structure pass: what a workspace file must hold around its destinations' settings
/// (sources with ids, names, unique write keys; destinations with ids, names, a definition
/// name, a settings object, well-formed transformation entries).
fn validate_workspace(root: &Value) -> Vec<String> {
    let mut problems: Vec<String> = Vec::new();
    let Some(sources) = root.get("sources") else {
        problems.push("$.sources: missing (expected an array of sources)".into());
        return problems;
    };
    let Some(sources) = sources.as_array() else {
        problems.push("$.sources: must be an array".into());
        return problems;
    };
    let mut write_keys = HashSet::new();
    let mut source_ids = HashSet::new();
    let mut dest_ids = HashSet::new();
    // Where each destination id was first seen, with what it is built from there.
    let mut first_seen: HashMap<&str, (String, BuiltFrom<'_>)> = HashMap::new();
    for (i, src) in sources.iter().enumerate() {
        let at = format!("$.sources[{i}]");
        if !src.is_object() {
            problems.push(format!("{at}: must be an object"));
            continue;
        }
        if let Some(id) = require_str(src, "id", &at, &mut problems) {
            if !source_ids.insert(id.to_owned()) {
                problems.push(format!("{at}.id: duplicate source id {id:?}"));
            }
        }
        require_str(src, "name", &at, &mut problems);
        if let Some(key) = require_str(src, "writeKey", &at, &mut problems) {
            if !write_keys.insert(key.to_owned()) {
                problems.push(format!("{at}.writeKey: used by another source"));
            }
        }
        require_bool(src, "enabled", &at, &mut problems);
        let Some(dests) = src.get("destinations") else {
            continue;
        };
        let Some(dests) = dests.as_array() else {
            problems.push(format!("{at}.destinations: must be an array"));
            continue;
        };
        for (j, dest) in dests.iter().enumerate() {
            let at = format!("{at}.destinations[{j}]");
            if !dest.is_object() {
                problems.push(format!("{at}: must be an object"));
                continue;
            }
            if let Some(id) = require_str(dest, "id", &at, &mut problems) {
                // The same destination may be connected to several sources in RudderStack
                // exports; only a clash within one source is an error.
                if !dest_ids.insert((i, id.to_owned())) {
                    problems.push(format!("{at}.id: duplicate destination id {id:?}"));
                }
                // It is built once, from its first place, so every place must agree.
                let built_from = (
                    dest.get("config"),
                    dest.get("destinationDefinition")
                        .and_then(|d| d.get("name")),
                );
                match first_seen.entry(id) {
                    Entry::Vacant(v) => {
                        v.insert((at.clone(), built_from));
                    }
                    Entry::Occupied(o) if o.get().1 != built_from => {
                        problems.push(format!(
                            "{at}: destination {id:?} is also connected at {} with another \
                             config or destinationDefinition; one destination has one set of \
                             settings (give this one its own id)",
                            o.get().0
                        ));
                    }
                    Entry::Occupied(_) => {}
                }
            }
            require_str(dest, "name", &at, &mut problems);
            require_bool(dest, "enabled", &at, &mut problems);
            if let Some(c) = dest.get("config") {
                if !c.is_object() {
                    problems.push(format!("{at}.config: must be an object"));
                }
            }
            match dest.get("destinationDefinition") {
                None => problems.push(format!("{at}.destinationDefinition: missing")),
                Some(def) => {
                    require_str(
                        def,
                        "name",
                        &format!("{at}.destinationDefinition"),
                        &mut problems,
                    );
                }
            }
            validate_transformations(dest, &at, &mut problems);
        }
    }
    problems
}

fn require_str<'a>(
    obj: &'a Value,
    key: &str,
    at: &str,
    problems: &mut Vec<String>,
) -> Option<&'a str> {
    match obj.get(key) {
        None => {
            problems.push(format!("{at}.{key}: missing"));
            None
        }
        Some(Value::String(s)) if !s.is_empty() => Some(s),
        Some(Value::String(_)) => {
            problems.push(format!("{at}.{key}: must not be empty"));
            None
        }
        Some(_) => {
            problems.push(format!("{at}.{key}: must be a string"));
            None
        }
    }
}

fn require_bool(obj: &Value, key: &str, at: &str, problems: &mut Vec<String>) {
    match obj.get(key) {
        None => problems.push(format!("{at}.{key}: missing")),
        Some(Value::Bool(_)) => {}
        Some(_) => problems.push(format!("{at}.{key}: must be true or false")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_every_problem_with_its_path() {
        let v: Value = serde_json::json!({
            "sources": [
                {"id": "s1", "name": "a", "writeKey": "k", "enabled": true,
                 "destinations": [{"id": "d1", "name": "hook", "enabled": "yes",
                                   "config": {}, "destinationDefinition": {"name": "WEBHOOK"}}]},
                {"id": "s1", "name": "b", "writeKey": "k"}
            ]
        });
        let problems = validate_workspace(&v);
        assert!(
            problems.contains(
                &"$.sources[0].destinations[0].enabled: must be true or false".to_string()
            ),
            "{problems:?}"
        );
        assert!(
            problems.contains(&"$.sources[1].id: duplicate source id \"s1\"".to_string()),
            "{problems:?}"
        );
        assert!(
            problems.contains(&"$.sources[1].writeKey: used by another source".to_string()),
            "{problems:?}"
        );
        assert!(
            problems.contains(&"$.sources[1].enabled: missing".to_string()),
            "{problems:?}"
        );
        assert_eq!(problems.len(), 4, "{problems:?}");
    }

    #[test]
    fn settings_are_checked_once_where_destinations_are_built_each_problem_with_its_path() {
        let text = serde_json::json!({
            "sources": [{"id": "s1", "name": "a", "writeKey": "k", "enabled": true,
                         "destinations": [
                {"id": "d1", "name": "hook", "enabled": true, "config": {"maxBatchSize": 0},
                 "destinationDefinition": {"name": "WEBHOOK"}},
                {"id": "d2", "name": "odd", "enabled": true, "config": {},
                 "destinationDefinition": {"name": "NO_SUCH_KIND"}},
                {"id": "d3", "name": "ok", "enabled": true,
                 "config": {"webhookUrl": "http://127.0.0.1:9/x"},
                 "destinationDefinition": {"name": "WEBHOOK"}}]}]
        })
        .to_string();
        let path = Path::new("workspace.json");
        let ws = workspace_from_text(&text, path).expect("the structure is valid");
        let env = BuildEnv {
            scripts_dir: "transformer-scripts".into(),
            ..Default::default()
        };
        let problems = routing_table(&ws, &env, path)
            .err()
            .expect("invalid settings")
            .problems;
        assert!(
            problems.contains(
                &"$.sources[0].destinations[0].config.webhookUrl: missing (required by WEBHOOK)"
                    .to_string()
            ),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("$.sources[0].destinations[0].config.maxBatchSize: ")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.starts_with(
                "$.sources[0].destinations[1].destinationDefinition.name: unknown destination kind \"NO_SUCH_KIND\""
            )),
            "{problems:?}"
        );
        assert_eq!(problems.len(), 3, "{problems:?}");
        // With a structure problem elsewhere, the sound destinations' settings are still
        // judged in the same report.
        let mut broken: Value = serde_json::from_str(&text).expect("json");
        broken["sources"][0]["destinations"][2]["enabled"] = Value::from("yes");
        let all = check_workspace_text(&broken.to_string(), path, &env)
            .err()
            .expect("invalid")
            .problems;
        assert_eq!(
            all[0],
            "$.sources[0].destinations[2].enabled: must be true or false"
        );
        assert_eq!(&all[1..], &problems[..], "{all:?}");
    }

    #[test]
    fn one_destination_in_several_sources_must_have_one_set_of_settings() {
        let dest = |url: &str| {
            serde_json::json!({"id": "d1", "name": "hook", "enabled": true,
                               "config": {"webhookUrl": url},
                               "destinationDefinition": {"name": "WEBHOOK"}})
        };
        let ws = |second: Value| {
            serde_json::json!({"sources": [
                {"id": "s1", "name": "a", "writeKey": "k1", "enabled": true,
                 "destinations": [dest("http://127.0.0.1:9/a")]},
                {"id": "s2", "name": "b", "writeKey": "k2", "enabled": true,
                 "destinations": [second]}]})
        };
        // RudderStack exports repeat the same destination under each source it serves.
        assert!(validate_workspace(&ws(dest("http://127.0.0.1:9/a"))).is_empty());
        assert_eq!(
            validate_workspace(&ws(dest("http://127.0.0.1:9/b"))),
            [
                "$.sources[1].destinations[0]: destination \"d1\" is also connected at \
              $.sources[0].destinations[0] with another config or destinationDefinition; one \
              destination has one set of settings (give this one its own id)"
            ]
        );
    }

    #[test]
    fn ignores_unknown_fields_of_an_exported_workspace() {
        let v: Value = serde_json::json!({
            "workspaceId": "w1", "libraries": [],
            "sources": [{"id": "s1", "name": "a", "writeKey": "k", "enabled": true,
                         "sourceDefinition": {"name": "HTTP"}, "config": {}, "deleted": false,
                         "destinations": [{"id": "d1", "name": "hook", "enabled": true,
                                           "config": {"webhookUrl": "http://x", "webhookMethod": "POST"},
                                           "destinationDefinition": {"name": "WEBHOOK", "displayName": "Webhook", "config": {}},
                                           "transformations": []}]}]
        });
        assert!(validate_workspace(&v).is_empty());
        let ws: Workspace = serde_json::from_value(v).expect("valid workspace");
        assert_eq!(
            ws.sources[0].destinations[0].destination_definition.name,
            "WEBHOOK"
        );
    }
}
