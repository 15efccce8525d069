//! The web dashboard: a single page (plain HTML, CSS and JavaScript, no build step) served by
//! every node at `/`, compiled into the binary. It holds no data: the page calls the JSON API
//! under `/v1` from the browser, with the token the user types in (kept in `sessionStorage`),
//! so `/` and `/ui/*` are open routes (see [`super::auth::required`]).
//!
//! Data from users (workflow names, errors, logs) is only ever put in the page as text
//! (`textContent`, never `innerHTML`); the Content-Security-Policy below also refuses inline
//! scripts and every other origin, as a second line.

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// One file of the dashboard.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_str!("dashboard/index.html"),
    },
    Asset {
        path: "/ui/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("dashboard/app.js"),
    },
    Asset {
        path: "/ui/app.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("dashboard/app.css"),
    },
];

/// Same origin only, no inline script, no plugins, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Whether `path` is a file of the dashboard (served without a token: it holds no data).
pub fn is_asset(path: &str) -> bool {
    ASSETS.iter().any(|a| a.path == path)
}

/// The dashboard's routes, merged into every node's router (servers and workers).
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    ASSETS.iter().fold(Router::new(), |r, a| {
        r.route(a.path, get(move || async move { serve(a) }))
    })
}

fn serve(a: &'static Asset) -> Response {
    (
        [
            (header::CONTENT_TYPE, a.content_type),
            // A new binary may bring new files: ask again each time (they are small).
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        a.body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_assets_load_nothing_from_elsewhere() {
        for a in ASSETS {
            // The SVG namespace is a name, not an address.
            let body = a.body.replace("\"http://www.w3.org/2000/svg\"", "");
            for bad in ["http://", "https://", "//cdn", "@import", "url(http"] {
                assert!(
                    !body.contains(bad),
                    "{} refers to {bad}: the dashboard must work offline",
                    a.path
                );
            }
        }
    }

    /// Data is put in the page as text only (a hostile workflow name must not run script).
    #[test]
    fn the_script_never_parses_html() {
        let js = ASSETS.iter().find(|a| a.path == "/ui/app.js").unwrap().body;
        for bad in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
            "createContextualFragment",
            "DOMParser",
        ] {
            assert!(!js.contains(bad), "app.js uses {bad}");
        }
    }

    #[test]
    fn the_page_has_no_inline_script() {
        let html = ASSETS[0].body;
        assert!(html.contains("<script src=\"/ui/app.js\""), "{html}");
        assert!(!html.contains("<script>"), "inline script: {html}");
        for bad in ["onclick=", "onload=", "onerror=", "javascript:"] {
            assert!(!html.contains(bad), "inline handler {bad}: {html}");
        }
    }
}
