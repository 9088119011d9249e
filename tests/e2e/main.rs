//! End-to-end tests: the real `portcullis` binary between a real OpenID provider
//! (npm `oidc-provider`) and a real HTTP upstream, driven over HTTP.

mod harness;

mod advanced_oauth;
mod backchannel;
mod callback_attacks;
mod cli;
mod dpop;
mod entra;
mod exhaustion;
mod frontchannel;
mod frontends;
mod hardening;
mod header_hygiene;
mod landing;
mod login_abuse;
mod login_flow;
mod operator_errors;
mod ops;
#[cfg(feature = "otel")]
mod otel;
mod path_confinement;
mod process_faults;
mod provider_shapes;
mod proxying;
mod real_providers;
mod redis_faults;
mod scale_out;
mod sessions;
mod token_lifecycle;
mod upstream_mtls;
