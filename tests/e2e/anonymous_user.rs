//! `GET /bff/user?anonymous=null`: an SPA's first look at a visitor who isn't logged
//! in answers 200 `null` instead of 401 (which a browser logs as a failed request).
//! Everything else about `/bff/user` stays: the CSRF header, the claims with a
//! session, 401 without the parameter.

use crate::harness::*;

#[tokio::test]
async fn anonymous_null_answers_null_instead_of_401() {
    let env = Env::builder().start().await;
    let url = env.url("/bff/user?anonymous=null");
    let anonymous = env.browser();
    let r = anonymous.get_with(&url, &[("x-csrf", "1")]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "null");
    assert_eq!(r.headers["cache-control"], "no-store");
    assert!(r.set_cookies().is_empty(), "{:?}", r.set_cookies());
    // Only that value; and the CSRF header is still required.
    anonymous
        .get_with(&env.url("/bff/user?anonymous=yes"), &[("x-csrf", "1")])
        .await
        .assert_error(401, "unauthenticated");
    anonymous
        .user(&env)
        .await
        .assert_error(401, "unauthenticated");
    anonymous.get(&url).await.assert_error(403, "csrf");
    // A dead session's cookie is no session either.
    let forged = Browser::new();
    forged.set_cookie(&env.gateway.origin, COOKIE, &random_key());
    assert_eq!(
        forged.get_with(&url, &[("x-csrf", "1")]).await.text(),
        "null"
    );

    // With a session: the claims, as without the parameter.
    let browser = env.browser();
    browser.login(&env, "alice", "alice", "/").await;
    let r = browser.get_with(&url, &[("x-csrf", "1")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["sub"], "alice");
    assert!(r.json()["bff:logout_url"].is_string());
}
