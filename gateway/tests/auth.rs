//! Tokens: where they are taken from, and the close codes of bad ones.

mod common;

use serde_json::json;
use teamchat_testkit::client::{self, Auth};
use teamchat_testkit::{Client, TestEnv, now, sign, sign_with};

async fn close_code_for(addr: std::net::SocketAddr, auth: Auth<'_>) -> u16 {
    let (mut ws, _) = client::open(addr, auth, None)
        .await
        .expect("the upgrade succeeds even for a bad token");
    let (code, frames) = client::close_code(&mut ws).await;
    assert!(frames.is_empty(), "no frame before the close: {frames:?}");
    code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_close_with_the_documented_codes() {
    let env = TestEnv::new().await;
    let g = common::gateway(&env, &[]).await;
    let claims = json!({"sub": "u1", "teams": ["t"], "exp": now() + 600});
    let expired = sign(&json!({"sub": "u1", "teams": ["t"], "exp": now() - 3600}));
    let wrong_signature = sign_with(&claims, "not-the-secret");
    let no_teams = sign(&json!({"sub": "u1", "exp": now() + 600}));
    let bad_sub = sign(&json!({"sub": "u 1", "teams": [], "exp": now() + 600}));

    assert_eq!(close_code_for(g.addr(), Auth::None).await, 4001, "missing");
    assert_eq!(
        close_code_for(g.addr(), Auth::Query("not.a.jwt")).await,
        4001,
        "malformed"
    );
    assert_eq!(
        close_code_for(g.addr(), Auth::Query(&wrong_signature)).await,
        4001,
        "wrong signature"
    );
    assert_eq!(
        close_code_for(g.addr(), Auth::Query(&no_teams)).await,
        4001,
        "claims missing"
    );
    assert_eq!(
        close_code_for(g.addr(), Auth::Query(&bad_sub)).await,
        4001,
        "bad user id"
    );
    assert_eq!(
        close_code_for(g.addr(), Auth::Query(&expired)).await,
        4003,
        "expired"
    );
    assert_eq!(
        close_code_for(g.addr(), Auth::Header(&expired)).await,
        4003,
        "expired, header"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_read_from_query_header_or_cookie() {
    let env = TestEnv::new().await;
    let g = common::gateway(
        &env,
        &["--allowed-origins=https://app.example,https://other.example"],
    )
    .await;
    let token = env.token("u1", &["t"]);
    for auth in [
        Auth::Query(&token),
        Auth::Header(&token),
        Auth::Cookie(&token, Some("https://other.example")),
    ] {
        let client = Client::connect_as(g.addr(), auth, false).await;
        assert_eq!(client.welcome["user"], "u1", "{auth:?}");
        assert_eq!(client.welcome["heartbeat_ms"], 25000);
        assert_eq!(client.welcome["max_frame"], 1048576);
        assert!(
            client.welcome["session"]
                .as_str()
                .is_some_and(|s| !s.is_empty())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_first_token_source_counts() {
    let env = TestEnv::new().await;
    let g = common::gateway(&env, &[]).await;
    let good = env.token("u1", &["t"]);
    // A bad query token is not rescued by a good header token.
    let url = format!("ws://{}/ws?token=bad", g.addr());
    let mut request = teamchat_testkit::tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url).unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {good}").parse().unwrap());
    let (mut ws, _) = teamchat_testkit::tokio_tungstenite::connect_async(request)
        .await
        .unwrap();
    assert_eq!(client::close_code(&mut ws).await.0, 4001);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_tokens_need_an_allowed_origin() {
    let env = TestEnv::new().await;
    let g = common::gateway(&env, &["--allowed-origins=https://app.example"]).await;
    let token = env.token("u1", &["t"]);
    for origin in [None, Some("https://evil.example")] {
        let error = client::open(g.addr(), Auth::Cookie(&token, origin), None)
            .await
            .unwrap_err();
        match error {
            teamchat_testkit::tokio_tungstenite::tungstenite::Error::Http(response) => {
                assert_eq!(response.status(), 403)
            }
            other => panic!("expected HTTP 403, got {other:?}"),
        }
    }
    // On the HTTP API a request a browser marks as from another site uses the cookie only
    // from an allowed origin (a cross-site page cannot spend the user's request budget).
    let cookie = format!("tc_token={token}");
    let cases: [(&[(&str, &str)], u16); 5] = [
        (&[("origin", "https://evil.example")], 403),
        (&[("sec-fetch-site", "cross-site")], 403),
        (&[("origin", "https://app.example")], 200),
        (&[("sec-fetch-site", "same-origin")], 200),
        (&[], 200),
    ];
    for (marks, expected) in cases {
        let mut headers = vec![("cookie", cookie.as_str())];
        headers.extend_from_slice(marks);
        let (status, _) =
            teamchat_testkit::http_get(g.addr(), "/v1/teams/t/messages", &headers).await;
        assert_eq!(status, expected, "history with {marks:?}");
    }
    // A header token is not Origin-checked.
    let (mut ws, _) = client::open(g.addr(), Auth::Header(&token), None)
        .await
        .unwrap();
    use futures_util::StreamExt;
    let welcome = ws.next().await.unwrap().unwrap();
    assert!(welcome.to_text().unwrap().contains("session:welcome"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_a_team_not_in_the_token_is_forbidden_unless_staff() {
    let env = TestEnv::new().await;
    let g = common::gateway(&env, &[]).await;
    let mut member = Client::connect(g.addr(), &env.token("u1", &["mine"])).await;
    member
        .send(json!({"type":"room:join","team":"theirs","rid":"j1"}))
        .await;
    let error = member.expect("room:error").await;
    assert_eq!(error["code"], "forbidden");
    assert_eq!(error["team"], "theirs");
    assert_eq!(error["rid"], "j1");

    // Staff may join and read any team, but not send there.
    let staff = sign(&json!({"sub": "boss", "teams": [], "role": "staff", "exp": now() + 600}));
    let mut staff = Client::connect(g.addr(), &staff).await;
    staff.join("theirs").await;
    staff
        .send(json!({"type":"message:send","team":"theirs","client_id":"x","body":"b"}))
        .await;
    assert_eq!(staff.expect("error").await["code"], "forbidden");
}
