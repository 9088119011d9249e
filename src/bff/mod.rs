//! The `/bff/*` endpoints: login, callback, user, logout and back-channel logout.
//!
//! Login is started by a top-level navigation to `/bff/login` and finished by the
//! provider's redirect to `/bff/callback`. A pending login lives server-side, keyed
//! by the hash of its `state`, single-use, with a TTL, bounded per browser, per client
//! network and in total (a memory bound that evicts, never a refusal: see
//! `security::limits`), and bound to the browser by a binding value the server issues
//! for that login (see [`login()`]). No endpoint here ever returns a token.

mod backchannel;
mod frontchannel;
mod login;
mod login_error;
mod user;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

pub use backchannel::backchannel_logout;
pub use frontchannel::frontchannel_logout;
pub use login::{callback, login};
pub use user::{logout, logout_post, user};

use crate::gateway::AppState;
use crate::security::limits::{ClientNetwork, client_ip, client_network};
use crate::session::SessionRecord;

/// The `/bff` router (mounted by `server::app`): the endpoints under every
/// frontend's path prefix (`""` for the single frontend). Handlers find their
/// frontend with the [`Current`](crate::gateway::Current) extractor.
pub fn router(state: AppState, prefixes: &[&str]) -> Router<AppState> {
    let rate_limit = axum::middleware::from_fn_with_state(state, login_rate_limit);
    let mut router = Router::new();
    for p in prefixes {
        router = router
            .route(
                &format!("{p}/bff/login"),
                get(login).route_layer(rate_limit.clone()),
            )
            .route(
                &format!("{p}/bff/callback"),
                get(callback).route_layer(rate_limit.clone()),
            )
            .route(&format!("{p}/bff/user"), get(user))
            .route(&format!("{p}/bff/logout"), get(logout).post(logout_post))
            .route(
                &format!("{p}/bff/backchannel-logout"),
                post(backchannel_logout),
            )
            .route(
                &format!("{p}/bff/frontchannel-logout"),
                get(frontchannel_logout),
            );
    }
    router
}

/// The router's paths: each endpoint's under each prefix (the server span's
/// `http.route`, what axum's `MatchedPath` names).
#[cfg(feature = "otel")]
pub fn paths<'a>(prefixes: &'a [&str]) -> impl Iterator<Item = String> + 'a {
    prefixes.iter().flat_map(|p| {
        crate::frontend::BFF_ENDPOINTS
            .iter()
            .map(move |e| format!("{p}/bff{e}"))
    })
}

/// Middleware on `/bff/login` and `/bff/callback`: the per-network rate limit.
pub async fn login_rate_limit(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    if let Some(peer) = crate::security::peer_ip(request.extensions()) {
        let ip = client_ip(
            peer,
            request.headers(),
            &state.gw.config.server.trusted_proxies,
        );
        let network = client_network(ip);
        if let Err(e) = state.gw.limits.check_login_network(network) {
            return e.into_response();
        }
        request.extensions_mut().insert(ClientNetwork(network));
    }
    next.run(request).await
}

/// The value `/bff/logout?sid=` must carry for this session: the provider's `sid`
/// when there is one, else a value derived from the session key. Only `/bff/user`
/// (which needs `X-CSRF`) reveals it, so a cross-site page can't log the user out.
pub fn logout_sid(record: &SessionRecord) -> String {
    match &record.sid {
        Some(sid) => sid.clone(),
        None => {
            use base64::Engine;
            let mut input = b"portcullis-logout:".to_vec();
            input.extend_from_slice(record.key.as_bytes());
            let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &input);
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&d.as_ref()[..18])
        }
    }
}
