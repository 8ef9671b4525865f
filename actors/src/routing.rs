//! Where each source's events go: the [`RoutingTable`] built once from the workspace (every
//! enabled source's [`Route`]s, each a destination with its built kind, its loaded user
//! transformations and its secrets) and swapped whole on reload. Built by `keel serve`,
//! `keel check-config`, reload and the console's validation alike, so a workspace that
//! checks is one that runs. The processor reads it; the supervisor starts one router or
//! uploader per [`RoutingTable::enabled_destinations`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::destinations::{self, BuildEnv, Delivery, Mapping};
use crate::telemetry as t;
use crate::transform::{Script, ScriptKind, TransformPool};
use crate::workspace::{self, Workspace};

/// One destination of a source, with its kind and user transformations.
#[derive(Clone)]
pub struct Route {
    /// The destination as configured.
    pub destination: workspace::Destination,
    /// Its kind, as the processor maps events with it.
    pub kind: Arc<dyn Mapping>,
    /// Its kind, as a router sends with it; `None` for a batch-loaded kind (an uploader
    /// loads it: [`Mapping::warehouse`]).
    pub delivery: Option<Arc<dyn Delivery>>,
    /// User transformations, run in order before the kind maps the events.
    pub transformations: Vec<Arc<Script>>,
    /// The destination's secret settings, kept out of log lines.
    pub secrets: Arc<crate::redact::Redactor>,
}

/// Source id → its routes; built once from the workspace.
#[derive(Clone, Default)]
pub struct RoutingTable {
    by_source: HashMap<String, Vec<Route>>,
    source_names: HashMap<String, String>,
    pool: Option<Arc<TransformPool>>,
}

impl RoutingTable {
    /// Builds every destination of every enabled source and loads every transformation;
    /// reports every invalid one.
    pub fn build(ws: &Workspace, env: &BuildEnv) -> Result<Self, Vec<destinations::ConfigError>> {
        let mut by_source = HashMap::new();
        let source_names = ws
            .sources
            .iter()
            .map(|s| (s.id.clone(), s.name.clone()))
            .collect();
        let mut errors = Vec::new();
        let libraries = env.libraries().unwrap_or_else(|problem| {
            errors.push(destinations::ConfigError {
                destination: "*".into(),
                field: "transformations".into(),
                problem,
            });
            Arc::default()
        });
        let mut built: HashMap<String, Route> = HashMap::new();
        let catalogue = destinations::catalogue::Catalogue::load(&env.scripts_dir);
        for source in &ws.sources {
            let mut routes = Vec::new();
            for d in &source.destinations {
                if let Some(r) = built.get(&d.id) {
                    routes.push(Route {
                        destination: d.clone(),
                        ..r.clone()
                    });
                    continue;
                }
                let made = match destinations::catalogue::build(&catalogue, d, env, &libraries) {
                    Ok(k) => k,
                    Err(problems) => {
                        errors.extend(problems);
                        continue;
                    }
                };
                let mut transformations = Vec::new();
                for (i, t) in d.transformations.iter().enumerate() {
                    let path = env.transformation_path(&t.file);
                    match Script::load(
                        &t.name,
                        &path,
                        ScriptKind::Transformation,
                        libraries.clone(),
                    ) {
                        Ok(s) => transformations.push(Arc::new(s)),
                        Err(problem) => errors.push(destinations::ConfigError {
                            destination: d.id.clone(),
                            field: format!("transformations[{i}].file"),
                            problem,
                        }),
                    }
                }
                for t in &transformations {
                    t::register_script_series(&t.name);
                }
                let kind = made.mapping;
                if let Some(script) = kind.script() {
                    t::register_script_series(&script.name);
                }
                // Zero from the start for every series its dashboards show.
                t::register_destination_series(&d.id);
                if kind.warehouse().is_some() {
                    t::register_warehouse_series(&d.id);
                }
                let route = Route {
                    secrets: Arc::new(crate::redact::Redactor::for_config(
                        &d.config,
                        &catalogue
                            .resolve(&d.destination_definition.name)
                            .map(|k| k.secret_settings())
                            .unwrap_or_default(),
                    )),
                    destination: d.clone(),
                    kind,
                    delivery: made.delivery,
                    transformations,
                };
                built.insert(d.id.clone(), route.clone());
                routes.push(route);
            }
            by_source.insert(source.id.clone(), routes);
        }
        if errors.is_empty() {
            Ok(Self {
                by_source,
                source_names,
                pool: env.pool.clone(),
            })
        } else {
            Err(errors)
        }
    }

    /// Every script (transformations and destination scripts) this table runs, for
    /// checking that they compile.
    pub fn scripts(&self) -> Vec<Arc<Script>> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for routes in self.by_source.values() {
            for r in routes {
                for t in r.transformations.iter().chain(r.kind.script()) {
                    if seen.insert(t.id()) {
                        out.push(t.clone());
                    }
                }
            }
        }
        out
    }

    /// Compiles every script this table runs and checks its exports (an empty call on the
    /// pool); one line per problem, naming the file. Without a pool there is nothing to run.
    pub async fn check_scripts(&self) -> Vec<String> {
        let Some(pool) = &self.pool else {
            return Vec::new();
        };
        let empty = Value::Object(Map::new());
        let mut problems = Vec::new();
        for script in self.scripts() {
            if let Err(e) = pool.call(&script, &empty, &[], Some(&empty)).await {
                problems.push(format!("{}: {e}", script.path.display()));
            }
        }
        problems
    }

    /// Id → name of every source whose routes include destination `id`.
    pub fn sources_of(&self, id: &str) -> HashMap<String, String> {
        self.by_source
            .iter()
            .filter(|(_, routes)| routes.iter().any(|r| r.destination.id == id))
            .map(|(s, _)| {
                (
                    s.clone(),
                    self.source_names.get(s).cloned().unwrap_or_default(),
                )
            })
            .collect()
    }

    /// Every distinct enabled destination (one router or warehouse uploader each).
    pub fn enabled_destinations(&self) -> Vec<Route> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for routes in self.by_source.values() {
            for r in routes {
                if r.destination.enabled && seen.insert(r.destination.id.clone()) {
                    out.push(r.clone());
                }
            }
        }
        out.sort_by(|a, b| a.destination.id.cmp(&b.destination.id));
        out
    }

    /// The routes of source `source_id` (none for an unknown source).
    pub fn routes_of(&self, source_id: &str) -> &[Route] {
        self.by_source
            .get(source_id)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// The name of source `source_id` (empty for an unknown source).
    pub fn source_name(&self, source_id: &str) -> &str {
        self.source_names
            .get(source_id)
            .map(String::as_str)
            .unwrap_or_default()
    }

    /// The isolate pool the table's scripts run on (none for tables built without one).
    pub fn pool(&self) -> Option<&Arc<TransformPool>> {
        self.pool.as_ref()
    }
}
