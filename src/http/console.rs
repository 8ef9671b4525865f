//! The web console's assets at `/console`: built by Vite from `console/` and embedded in the
//! binary (`rust-embed`; in debug builds read from disk). Any path that is not a file is the
//! single-page app's `index.html`, whose router shows the page; the app logs in with the
//! admin token and calls the admin API, so the assets themselves need no token.

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use rust_embed::Embed;

#[derive(Embed)]
#[folder = "$CONSOLE_ASSETS_DIR"]
struct Assets;

fn serve(path: &str) -> HttpResponse {
    let (file, path) = match Assets::get(path) {
        Some(f) => (f, path),
        None => match Assets::get("index.html") {
            Some(f) => (f, "index.html"),
            None => {
                return HttpResponse::NotFound().json(serde_json::json!({
                "error": "the console is not in this build", "code": "console_missing"}))
            }
        },
    };
    // Hashed asset names never change; the page itself is always revalidated.
    let cache = if path.starts_with("assets/") {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    HttpResponse::Ok()
        .content_type(file.metadata.mimetype())
        .insert_header((header::CACHE_CONTROL, cache))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .insert_header(("Referrer-Policy", "no-referrer"))
        .body(file.data.into_owned())
}

/// `GET /console`.
pub async fn index() -> HttpResponse {
    serve("index.html")
}

/// `GET /console/{tail}`.
pub async fn asset(tail: web::Path<String>) -> HttpResponse {
    serve(tail.trim_start_matches('/'))
}
