//! End-to-end tests: the real `portcullis` binary between a real OpenID provider
//! (npm `oidc-provider`) and a real HTTP upstream, driven over HTTP.

mod harness;

mod advanced_oauth;
mod anonymous_user;
mod backchannel;
mod callback_attacks;
mod cli;
mod crash_refresh;
mod dpop;
mod exhaustion;
mod failover;
mod frontends;
mod hardening;
mod header_hygiene;
mod id_token_validation;
mod login_abuse;
mod login_flow;
mod logout_hint;
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
mod scale_out;
mod sessions;
mod store_faults;
mod token_lifecycle;
mod upstream_mtls;
mod websockets;
