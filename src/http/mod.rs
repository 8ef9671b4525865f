//! The HTTP surface: the routes and the handlers' modules (ingest, browser SDK settings,
//! ops, admin, console); the state they share is in [`state`].

pub mod admin;
pub mod auth;
pub mod body;
pub mod connections;
pub mod console;
pub mod error;
pub mod event;
pub mod ingest;
pub mod live;
pub mod normalize;
pub mod ops;
pub mod parse;
pub mod scripts_api;
pub mod sdk;
pub mod state;
pub mod workspace_api;

use actix_web::web;
use ingest::Endpoint;
use normalize::EventType;
use state::AppState;

fn ingest_route(endpoint: Endpoint) -> actix_web::Route {
    web::post().to(
        move |req: actix_web::HttpRequest, payload: web::Payload, state: web::Data<AppState>| {
            ingest::ingest(req, payload, state, endpoint)
        },
    )
}

/// Query and path parameters that do not parse get the same JSON error shape as everything
/// else (actix-web's default is a plain-text 400).
fn invalid_parameter(e: impl std::fmt::Display) -> actix_web::Error {
    error::ApiError::bad_request("invalid_parameter", format!("invalid parameter: {e}")).into()
}

/// Any path Keel does not serve: 404 as JSON.
async fn not_found(req: actix_web::HttpRequest) -> actix_web::HttpResponse {
    use actix_web::ResponseError;
    error::ApiError::new(
        actix_web::http::StatusCode::NOT_FOUND,
        "not_found",
        format!("no endpoint {} {}", req.method(), req.path()),
    )
    .error_response()
}

/// Registers every route.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::QueryConfig::default().error_handler(|e, _| invalid_parameter(e)))
        .app_data(web::PathConfig::default().error_handler(|e, _| invalid_parameter(e)))
        .default_service(web::to(not_found));
    for ty in [
        EventType::Identify,
        EventType::Track,
        EventType::Page,
        EventType::Screen,
        EventType::Group,
        EventType::Alias,
    ] {
        cfg.route(
            &format!("/v1/{}", ty.as_str()),
            ingest_route(Endpoint::Single(ty)),
        );
    }
    // analytics.js 2.0 posts to one-letter paths (`/v1/t`, and `/v1/b` when batching).
    for (letter, ty) in [
        ("i", EventType::Identify),
        ("t", EventType::Track),
        ("p", EventType::Page),
        ("s", EventType::Screen),
        ("g", EventType::Group),
        ("a", EventType::Alias),
    ] {
        cfg.route(&format!("/v1/{letter}"), ingest_route(Endpoint::Single(ty)));
    }
    cfg.route("/v1/b", ingest_route(Endpoint::Batch))
        // RudderStack JS SDK v3's `sendBeacon` queue (write key in the query).
        .route("/beacon/v1/batch", ingest_route(Endpoint::Batch))
        .route("/sourceConfig", web::get().to(sdk::source_config))
        .route("/sourceConfig/", web::get().to(sdk::source_config))
        .route(
            "/v1/projects/{write_key}/settings",
            web::get().to(sdk::segment_project_settings),
        );
    cfg.route("/v1/batch", ingest_route(Endpoint::Batch))
        .route("/v1/import", ingest_route(Endpoint::Import))
        .route("/health", web::get().to(ops::health))
        .route("/ready", web::get().to(ops::ready))
        .route("/metrics", web::get().to(ops::metrics))
        .route("/admin/dlq", web::get().to(admin::list_dlq))
        .route("/admin/reload", web::post().to(admin::reload))
        .route("/admin/test/panic", web::post().to(admin::inject_panic))
        .route("/admin/dlq/replay", web::post().to(admin::replay_dlq))
        // Before `{message_id}`, which would take "recent" for an id.
        .route("/admin/events/recent", web::get().to(scripts_api::recent))
        .route("/admin/events/{message_id}", web::get().to(admin::explain))
        .route(
            "/admin/connections",
            web::get().to(connections::connections),
        )
        .route("/admin/live", web::get().to(live::live))
        .route("/admin/catalogue", web::get().to(workspace_api::catalogue))
        .route(
            "/admin/workspace",
            web::get().to(workspace_api::get_workspace),
        )
        .route(
            "/admin/workspace",
            web::put().to(workspace_api::put_workspace),
        )
        .route(
            "/admin/workspace/validate",
            web::post().to(workspace_api::validate_workspace),
        )
        .route(
            "/admin/workspace/write-key",
            web::post().to(workspace_api::new_write_key),
        )
        .route("/admin/scripts", web::get().to(scripts_api::list))
        .route("/admin/scripts/file", web::get().to(scripts_api::read))
        .route("/admin/scripts/file", web::put().to(scripts_api::save))
        .route("/admin/scripts/run", web::post().to(scripts_api::run))
        .route("/console", web::get().to(console::index))
        .route("/console/{tail:.*}", web::get().to(console::asset));
}
