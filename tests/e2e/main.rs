//! End-to-end tests: the real `portcullis` binary between a real OpenID provider
//! (npm `oidc-provider`) and a real HTTP upstream, driven over HTTP.

mod harness;

mod backchannel;
mod callback_attacks;
mod cli;
mod login_flow;
mod proxying;
mod scale_out;
mod sessions;
mod token_lifecycle;
