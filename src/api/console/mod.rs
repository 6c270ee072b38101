//! The operator console under `/ui`: server-rendered pages over the same functions the
//! JSON API calls, a small script for live fields and confirmations, and a session
//! cookie instead of a bearer header (a browser cannot send one on a plain link).
//!
//! Access: with `api.tokens` set, a viewer signs in with a token and gets an `HttpOnly`,
//! `SameSite=Strict` cookie signed by this process ([`session`]); every POST carries a
//! CSRF token bound to that cookie; a `read` token sees everything and changes nothing.
//! Without tokens, everyone is an anonymous reader, or an admin when
//! `ui.allow_anonymous_admin` is set.

mod bulk;
mod charts;
mod dlq;
mod jobs;
mod overview;
pub(crate) mod pages;
pub(crate) mod session;

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};

use super::error::ApiError;
use super::AppState;
use crate::config::TokenRole;
use pages::{esc, Page, Tab};
use session::Viewer;

/// The console's stylesheet, embedded in the binary.
const CSS: &str = include_str!("../../../assets/console/console.css");
/// The console's one script: live fields by short polling, confirmations.
const JS: &str = include_str!("../../../assets/console/console.js");

/// The console's pages may load only their own script and stylesheet: no inline script,
/// nothing from elsewhere, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Whether `path` belongs to the console (which checks its own session, not a bearer
/// header).
pub(crate) fn is_console_path(path: &str) -> bool {
    path == "/ui" || path.starts_with("/ui/")
}

/// Registers the console's routes (api role only, like the JSON API it reads).
pub(crate) fn configure(cfg: &mut web::ServiceConfig) {
    use super::resource;
    cfg.service(resource("/ui").route(web::get().to(overview::page)))
        .service(resource("/ui/assets/console.css").route(web::get().to(css)))
        .service(resource("/ui/assets/console.js").route(web::get().to(js)))
        .service(
            resource("/ui/login")
                .route(web::get().to(login_page))
                .route(web::post().to(login)),
        )
        .service(resource("/ui/logout").route(web::post().to(logout)))
        .service(resource("/ui/api/overview").route(web::get().to(overview::json)))
        .service(resource("/ui/actors").route(web::get().to(overview::actors)))
        .service(resource("/ui/api/actors").route(web::get().to(overview::actors_json)))
        .service(resource("/ui/api/jobs").route(web::get().to(jobs::list_json)))
        .service(resource("/ui/api/dlq").route(web::get().to(dlq::live)))
        .service(resource("/ui/jobs").route(web::get().to(jobs::list)))
        .service(resource("/ui/jobs/action").route(web::post().to(jobs::action)))
        .service(
            resource("/ui/jobs/bulk")
                .route(web::get().to(bulk::confirm))
                .route(web::post().to(bulk::act)),
        )
        .service(resource("/ui/jobs/{id}").route(web::get().to(jobs::detail)))
        .service(resource("/ui/jobs/{id}/file").route(web::get().to(jobs::file)))
        .service(resource("/ui/api/jobs/{id}").route(web::get().to(jobs::json)))
        .service(resource("/ui/dlq").route(web::get().to(dlq::list)))
        .service(resource("/ui/dlq/action").route(web::post().to(dlq::action)));
}

async fn css() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(CSS)
}

async fn js() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(JS)
}

/// Why a console request was not served as asked.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConsoleError {
    /// No valid session while tokens are configured: pages go to the sign-in form.
    #[error("sign in first")]
    SignIn,
    /// An API error (403, 400, 404, 503…), answered in the JSON error shape.
    #[error(transparent)]
    Api(#[from] ApiError),
}

impl actix_web::ResponseError for ConsoleError {
    fn status_code(&self) -> StatusCode {
        match self {
            ConsoleError::SignIn => StatusCode::SEE_OTHER,
            ConsoleError::Api(e) => e.status_code(),
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            ConsoleError::SignIn => HttpResponse::SeeOther()
                .insert_header((header::LOCATION, "/ui/login"))
                .finish(),
            ConsoleError::Api(e) => e.error_response(),
        }
    }
}

/// The viewer of a request: from its session cookie when tokens are configured (else
/// [`ConsoleError::SignIn`]); anonymous without tokens.
pub(crate) fn viewer(req: &HttpRequest, state: &AppState) -> Result<Viewer, ConsoleError> {
    if state.settings.api.tokens.is_empty() {
        let role = if state.settings.ui.allow_anonymous_admin {
            TokenRole::Admin
        } else {
            TokenRole::Read
        };
        return Ok(Viewer {
            name: "anonymous".into(),
            role,
            session: None,
        });
    }
    let now = chrono::Utc::now().timestamp();
    req.headers()
        .get_all(header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .find_map(|h| session::cookie_value(h, session::COOKIE))
        .and_then(|value| session::verify(value, now))
        .ok_or(ConsoleError::SignIn)
}

/// The viewer of a page that leads to a change: an admin. A read viewer gets 403 in the
/// JSON error shape.
pub(crate) fn admin_viewer(req: &HttpRequest, state: &AppState) -> Result<Viewer, ConsoleError> {
    let viewer = viewer(req, state)?;
    if !viewer.is_admin() {
        return Err(ApiError::forbidden(format!(
            "`{}` has the `read` role: the console is read-only for it",
            viewer.name
        ))
        .into());
    }
    Ok(viewer)
}

/// The viewer of a state-changing request: an admin whose form carries the CSRF token.
/// A read viewer gets 403 in the JSON error shape, a missing or wrong token 403 too.
pub(crate) fn acting_viewer(
    req: &HttpRequest,
    state: &AppState,
    form: &Form,
) -> Result<Viewer, ConsoleError> {
    let viewer = admin_viewer(req, state)?;
    let presented = form.first("csrf").unwrap_or_default();
    if !viewer.csrf_matches(presented) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "csrf_mismatch",
            "the form's CSRF token is missing or belongs to another session; reload the page",
        )
        .with_field("csrf")
        .into());
    }
    Ok(viewer)
}

/// A submitted `application/x-www-form-urlencoded` body.
pub(crate) struct Form {
    pairs: Vec<(String, String)>,
}

impl Form {
    /// Reads the body (bounded by `api.max_body_bytes`, like every POST's).
    pub(crate) async fn read(body: web::Payload, state: &AppState) -> Result<Form, ApiError> {
        let bytes = super::read_limited(body, state.settings.api.max_body_bytes).await?;
        let pairs = url::form_urlencoded::parse(&bytes).into_owned().collect();
        Ok(Form { pairs })
    }

    /// The first value of `key`.
    pub(crate) fn first(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `key` (checkboxes), without empty ones.
    pub(crate) fn all(&self, key: &str) -> Vec<String> {
        self.pairs
            .iter()
            .filter(|(k, v)| k == key && !v.is_empty())
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// An HTML answer with the console's security headers.
pub(crate) fn html(status: StatusCode, body: String) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(body)
}

/// The page of an action's outcome: what was done, per item, and the way back.
pub(crate) fn outcome_page(
    viewer: &Viewer,
    title: &str,
    lines: &[String],
    back: &str,
) -> HttpResponse {
    let mut items = String::new();
    for line in lines {
        items.push_str(&format!("<li>{}</li>", esc(line)));
    }
    let body = format!(
        "<p role=\"status\" data-testid=\"outcome\">{}</p><ul>{items}</ul><p><a href=\"{}\">Back</a></p>",
        esc(title),
        esc(back)
    );
    let page = Page {
        title: "Done",
        tab: Tab::None,
        poll: None,
        body,
    };
    html(StatusCode::OK, pages::layout(&page, Some(viewer)))
}

async fn login_page(state: web::Data<AppState>) -> HttpResponse {
    login_form(&state, None)
}

fn login_form(state: &AppState, problem: Option<&str>) -> HttpResponse {
    let note = if state.settings.api.tokens.is_empty() {
        "<p>No tokens are configured: the console needs no sign-in. <a href=\"/ui\">Open it</a>.</p>"
    } else {
        ""
    };
    let problem = problem
        .map(|p| format!("<p class=\"error\" role=\"alert\">{}</p>", esc(p)))
        .unwrap_or_default();
    let body = format!(
        "{note}{problem}<form method=\"post\" action=\"/ui/login\" class=\"login\">\
         <label for=\"token\">API token</label>\
         <input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"current-password\" required>\
         <button type=\"submit\">Sign in</button></form>"
    );
    let page = Page {
        title: "Sign in",
        tab: Tab::None,
        poll: None,
        body,
    };
    // 200 even for a refused token: the api's error middleware turns a non-JSON 4xx into
    // the JSON error shape, and the form must stay a page.
    html(StatusCode::OK, pages::layout(&page, None))
}

/// `POST /ui/login` with `token=…`: a session cookie for the token's name and role.
async fn login(body: web::Payload, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let form = Form::read(body, &state).await?;
    let presented = form.first("token").unwrap_or_default().trim();
    let Some(caller) = super::caller_with(presented, &state.settings.api.tokens) else {
        tracing::warn!("console sign-in with an unknown token");
        return Ok(login_form(&state, Some("That token is not valid.")));
    };
    tracing::info!(who = %caller.name, role = caller.role.as_str(), "console sign-in");
    let value = session::issue(&caller.name, caller.role, chrono::Utc::now().timestamp());
    let secure = if state.settings.server.public_url.starts_with("https:") {
        "; Secure"
    } else {
        ""
    };
    Ok(HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/ui"))
        .insert_header((
            header::SET_COOKIE,
            format!(
                "{}={value}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
                session::COOKIE,
                session::SESSION_TTL_S
            ),
        ))
        .finish())
}

/// `POST /ui/logout`: forgets the cookie (CSRF-checked like every POST).
async fn logout(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ConsoleError> {
    let form = Form::read(body, &state).await?;
    let viewer = viewer(&req, &state)?;
    if !viewer.csrf_matches(form.first("csrf").unwrap_or_default()) {
        return Err(
            ApiError::new(StatusCode::FORBIDDEN, "csrf_mismatch", "reload the page")
                .with_field("csrf")
                .into(),
        );
    }
    tracing::info!(who = %viewer.name, "console sign-out");
    Ok(HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/ui/login"))
        .insert_header((
            header::SET_COOKIE,
            format!(
                "{}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0",
                session::COOKIE
            ),
        ))
        .finish())
}
