//! The live web dashboard at `/` (SPEC §6): one page, its script and its style
//! sheet, embedded in the binary (no build step, nothing fetched at run time).
//!
//! The page follows `/api/v1/events?status=1` (see [`crate::http`]): a status
//! snapshot at least every second and after every committed history line. It
//! greys a server whose last report is older than the agent timeout (with its
//! age), and the whole page when the stream is quiet for 3 s; on a lost stream it
//! tries the other controllers (learnt from the status), whose followers
//! redirect to the leader.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

const INDEX: &str = include_str!("dashboard/index.html");
const APP: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/style.css");

fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

/// The dashboard's routes (merged into the HTTP router).
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/",
            get(|| async { asset(INDEX, "text/html; charset=utf-8") }),
        )
        .route(
            "/dashboard/app.js",
            get(|| async { asset(APP, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/dashboard/style.css",
            get(|| async { asset(STYLE, "text/css; charset=utf-8") }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_its_embedded_script_and_style() {
        assert!(INDEX.contains(r#"src="/dashboard/app.js""#));
        assert!(INDEX.contains(r#"href="/dashboard/style.css""#));
        // The script reads the stream the HTTP module serves.
        assert!(APP.contains("/api/v1/events?status=1"));
        assert!(APP.contains(r#"addEventListener("status""#));
        // Nothing is fetched from elsewhere.
        for text in [INDEX, APP, STYLE] {
            assert!(!text.contains("https://"), "an external URL");
        }
    }
}
