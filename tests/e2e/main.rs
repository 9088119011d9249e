//! End-to-end tests: the real `portcullis` binary between a real OpenID provider
//! (npm `oidc-provider`) and a real HTTP upstream, driven over HTTP.

mod harness;

mod access_rules;
mod advanced_oauth;
mod anonymous_user;
mod backchannel;
mod callback_attacks;
mod cli;
mod crash_refresh;
mod dpop;
mod entra;
mod exhaustion;
mod failover;
mod frontchannel;
mod frontends;
mod grpc;
mod hardening;
mod header_hygiene;
mod id_token_validation;
mod landing;
mod login_abuse;
mod login_flow;
mod logout_hint;
mod operator_errors;
mod ops;
#[cfg(feature = "otel")]
mod otel;
mod overload;
mod path_confinement;
mod process_faults;
mod provider_shapes;
mod proxying;
mod real_providers;
mod redis_faults;
mod route_tokens;
mod scale_out;
mod sessions;
mod sse;
mod step_up;
mod store_faults;
mod token_lifecycle;
mod upstream_mtls;
mod websockets;
