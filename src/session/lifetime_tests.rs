//! A session lives no longer than its refresh token when the provider says how long
//! that is (`refresh_expires_in`): at login and after every refresh
//! (draft-ietf-oauth-browser-based-apps, BFF section).

use super::*;

fn tokens() -> Tokens {
    Tokens {
        access_token: "AT".into(),
        token_type: "Bearer".into(),
        access_expires_at: None,
        access_issued_at: None,
        refresh_token: Some("RT".into()),
        id_token: None,
        scope: None,
        dpop_key: None,
    }
}

fn new_session(refresh_expires_at: Option<i64>) -> NewSession {
    NewSession {
        frontend: String::new(),
        sub: "alice".into(),
        sid: None,
        claims: Default::default(),
        tokens: tokens(),
        refresh_expires_at,
    }
}

#[tokio::test]
async fn the_refresh_tokens_lifetime_caps_the_session() {
    let config = crate::config::SessionConfig {
        keys: vec![crate::config::Secret::new(cipher::generate_key())],
        ..Default::default()
    };
    let absolute = secs(config.absolute_timeout);
    let cipher = TokenCipher::from_config(&config.keys).unwrap();
    let sessions = Sessions::new(Store::Memory(MemoryStore::new()), cipher, &config);
    let now = now_secs();

    // Without a refresh lifetime: the absolute timeout.
    let (_, plain) = sessions.create(new_session(None)).await.unwrap();
    assert!((plain.expires_at - (now + absolute)).abs() <= 2);

    // A refresh token for 60 s: the session ends with it, well before the absolute timeout.
    let (_, capped) = sessions.create(new_session(Some(now + 60))).await.unwrap();
    assert_eq!(capped.expires_at, now + 60);

    // A refresh that says the new refresh token lives 30 s: the session shrinks to it;
    // one that says longer than the session has left changes nothing.
    let shorter = sessions.with_tokens(&plain, &tokens(), Some(now + 30));
    assert_eq!(shorter.expires_at, now + 30);
    let longer = sessions.with_tokens(&capped, &tokens(), Some(now + 10 * absolute));
    assert_eq!(longer.expires_at, capped.expires_at);

    // A refresh token already past its end: the session is gone at the next load.
    let (id, _) = sessions.create(new_session(Some(now - 1))).await.unwrap();
    assert!(sessions.load(&id, "").await.unwrap().is_none());
}
