//! gRPC callers get Portcullis's own refusals in a form they read.
//!
//! A gRPC client decides a call's outcome from `grpc-status`, not from the HTTP status:
//! a contract JSON error alone (a 504 `upstream_timeout`, a 401) reaches it as an
//! undecodable message. So when the request is gRPC (`Content-Type: application/grpc…`),
//! an error Portcullis answers on a proxied route keeps its HTTP status and JSON body and
//! also carries `grpc-status` and `grpc-message` (the contract's error code) in its
//! headers — a "trailers-only" answer. The code follows gRPC's HTTP-to-gRPC mapping
//! (`doc/http-grpc-status-mapping.md`): 401 `UNAUTHENTICATED`, 403 `PERMISSION_DENIED`,
//! 404 `UNIMPLEMENTED`, 429/502/503/504 `UNAVAILABLE`, 400 `INTERNAL`, else `UNKNOWN`.
//! Answers from the upstream itself pass untouched (its trailers stream back).

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::error::{ApiError, ErrorCode};

/// Is this a gRPC request (`application/grpc`, `application/grpc+proto`, …)?
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(|ct| {
        let ct = ct.as_bytes();
        ct.len() >= 16
            && ct[..16].eq_ignore_ascii_case(b"application/grpc")
            && matches!(ct.get(16), None | Some(b'+' | b';'))
    })
}

/// The contract error as an answer a gRPC client reads (see the module docs).
pub fn error_response(e: ApiError) -> Response {
    let mut response = e.into_response();
    let code = grpc_code(response.status());
    let message = response
        .extensions()
        .get::<ErrorCode>()
        .map_or("error", |c| c.0);
    let headers = response.headers_mut();
    headers.insert("grpc-status", HeaderValue::from_static(code));
    headers.insert(
        "grpc-message",
        HeaderValue::from_str(message).unwrap_or(HeaderValue::from_static("error")),
    );
    response
}

fn grpc_code(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "13",
        401 => "16",
        403 => "7",
        404 => "12",
        429 | 502 | 503 | 504 => "14",
        _ => "2",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_requests_are_recognised() {
        let ct = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(v));
            is_grpc(&h)
        };
        assert!(ct("application/grpc"));
        assert!(ct("application/grpc+proto"));
        assert!(ct("Application/GRPC;charset=x"));
        assert!(!ct("application/grpc-web"));
        assert!(!ct("application/grpcx"));
        assert!(!ct("application/json"));
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn errors_carry_a_grpc_status() {
        let r = error_response(ApiError::UpstreamTimeout);
        assert_eq!(r.status(), 504);
        assert_eq!(r.headers()["grpc-status"], "14");
        assert_eq!(r.headers()["grpc-message"], "upstream_timeout");
        let r = error_response(ApiError::Unauthenticated);
        assert_eq!(r.headers()["grpc-status"], "16");
    }
}
