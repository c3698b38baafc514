//! Tokens signed with a private key (RS256, ES256, EdDSA) and verified with its public half
//! (`JWT_PUBLIC_KEY`) or a JWKS document (`JWKS_FILE`, reloaded when it changes); HS256
//! tokens refused then (no algorithm confusion); `iss` and `aud` checked when configured.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use teamchat_testkit::client::{Auth, open};
use teamchat_testkit::{Client, TestEnv, eventually, http_get, now};

fn keys_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/keys")
}

fn key_file(name: &str) -> String {
    keys_dir().join(name).display().to_string()
}

fn claims(user: &str) -> Value {
    json!({"sub": user, "teams": ["t"], "exp": now() + 3600})
}

/// Signs `claims` with the private key in `tests/keys/<file>`.
fn sign(alg: Algorithm, file: &str, kid: Option<&str>, claims: &Value) -> String {
    let pem = std::fs::read(keys_dir().join(file)).unwrap();
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
        _ => unreachable!("the tests sign with these only"),
    }
    .unwrap();
    let header = Header {
        kid: kid.map(str::to_owned),
        ..Header::new(alg)
    };
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

/// Whether the gateway lets the token in: the welcome, or the close code.
async fn admitted(addr: SocketAddr, token: &str) -> Result<(), u16> {
    let (mut ws, _) = open(addr, Auth::Query(token), Some("teamchat.v1.json"))
        .await
        .expect("upgrade");
    let first = tokio::time::timeout(
        Duration::from_secs(5),
        futures_util::StreamExt::next(&mut ws),
    )
    .await
    .expect("a first frame");
    match first {
        Some(Ok(teamchat_testkit::tokio_tungstenite::tungstenite::Message::Text(text))) => {
            let frame: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(frame["type"], "session:welcome");
            Ok(())
        }
        Some(Ok(teamchat_testkit::tokio_tungstenite::tungstenite::Message::Close(Some(close)))) => {
            Err(u16::from(close.code))
        }
        other => panic!("neither a welcome nor a close: {other:?}"),
    }
}

/// With an RSA public key: RS256 tokens are accepted on the WebSocket and for history;
/// HS256 tokens (even signed with the configured secret) and tokens of another key type
/// are refused 4001.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_key_accepts_its_own_tokens_only() {
    let env = TestEnv::new().await;
    let flag = format!("--jwt-public-key={}", key_file("rsa-public.pem"));
    let g = common::gateway(&env, &[&flag]).await;

    let rs256 = sign(Algorithm::RS256, "rsa-private.pem", None, &claims("ann"));
    let mut ann = Client::connect(g.addr(), &rs256).await;
    ann.join("t").await;
    let bearer = format!("Bearer {rs256}");
    let (status, _) = http_get(
        g.addr(),
        "/v1/teams/t/messages",
        &[("authorization", bearer.as_str())],
    )
    .await;
    assert_eq!(status, 200);

    // The secret the gateway was also given signs nothing once a public key is set.
    let hs256 = env.token("ann", &["t"]);
    assert_eq!(admitted(g.addr(), &hs256).await, Err(4001));
    let bearer = format!("Bearer {hs256}");
    let (status, _) = http_get(
        g.addr(),
        "/v1/teams/t/messages",
        &[("authorization", bearer.as_str())],
    )
    .await;
    assert_eq!(status, 401);
    // HS256 signed with the public key's PEM as the secret: the classic confusion.
    let pem = std::fs::read(keys_dir().join("rsa-public.pem")).unwrap();
    let confused = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims("ann"),
        &EncodingKey::from_secret(&pem),
    )
    .unwrap();
    assert_eq!(admitted(g.addr(), &confused).await, Err(4001));
    let eddsa = sign(Algorithm::EdDSA, "ed-private.pem", None, &claims("ann"));
    assert_eq!(admitted(g.addr(), &eddsa).await, Err(4001));
    // Verified, then found expired: 4003, as with HS256.
    let expired = sign(
        Algorithm::RS256,
        "rsa-private.pem",
        None,
        &json!({"sub": "ann", "teams": ["t"], "exp": now() - 120}),
    );
    assert_eq!(admitted(g.addr(), &expired).await, Err(4003));
}

/// EdDSA and ES256 public keys, one given as the PEM itself rather than a path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eddsa_and_es256_keys() {
    let env = TestEnv::new().await;
    let pem = std::fs::read_to_string(keys_dir().join("ed-public.pem")).unwrap();
    let inline = format!("--jwt-public-key={pem}");
    let ed = common::gateway(&env, &[&inline]).await;
    let eddsa = sign(Algorithm::EdDSA, "ed-private.pem", None, &claims("ann"));
    assert_eq!(admitted(ed.addr(), &eddsa).await, Ok(()));
    let es256 = sign(Algorithm::ES256, "ec-private.pem", None, &claims("ann"));
    assert_eq!(admitted(ed.addr(), &es256).await, Err(4001));

    let flag = format!("--jwt-public-key={}", key_file("ec-public.pem"));
    let ec = common::gateway(&env, &[&flag]).await;
    assert_eq!(admitted(ec.addr(), &es256).await, Ok(()));
    assert_eq!(admitted(ec.addr(), &eddsa).await, Err(4001));
}

/// `JWT_ISSUER` and `JWT_AUDIENCE`: a token must carry both (`aud` as a string or in a
/// list); a mismatch or an absence is refused 4001.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_and_audience_are_checked() {
    let env = TestEnv::new().await;
    let flag = format!("--jwt-public-key={}", key_file("rsa-public.pem"));
    let g = common::gateway(
        &env,
        &[
            &flag,
            "--jwt-issuer=https://auth.example",
            "--jwt-audience=chat",
        ],
    )
    .await;
    let with = |iss: Option<&str>, aud: Option<Value>| {
        let mut claims = claims("ann");
        if let Some(iss) = iss {
            claims["iss"] = json!(iss);
        }
        if let Some(aud) = aud {
            claims["aud"] = aud;
        }
        sign(Algorithm::RS256, "rsa-private.pem", None, &claims)
    };
    let cases = [
        (
            with(Some("https://auth.example"), Some(json!("chat"))),
            Ok(()),
        ),
        (
            with(
                Some("https://auth.example"),
                Some(json!(["billing", "chat"])),
            ),
            Ok(()),
        ),
        (
            with(Some("https://evil.example"), Some(json!("chat"))),
            Err(4001),
        ),
        (
            with(Some("https://auth.example"), Some(json!("billing"))),
            Err(4001),
        ),
        (with(None, Some(json!("chat"))), Err(4001)),
        (with(Some("https://auth.example"), None), Err(4001)),
    ];
    for (n, (token, expected)) in cases.into_iter().enumerate() {
        assert_eq!(admitted(g.addr(), &token).await, expected, "case {n}");
    }
}

/// A JWKS document: `kid` picks the key (RSA, EC, Ed25519); a symmetric key in it is
/// skipped, an unknown `kid` refused; the file is read again when it changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_keys_are_picked_by_kid_and_reloaded() {
    let env = TestEnv::new().await;
    let full = std::fs::read_to_string(keys_dir().join("jwks.json")).unwrap();
    let mut only_ed: Value = serde_json::from_str(&full).unwrap();
    only_ed["keys"]
        .as_array_mut()
        .unwrap()
        .retain(|key| key["kid"] == "ed-1");
    let path = std::env::temp_dir().join(format!("teamchat-jwks-{}.json", uuid::Uuid::now_v7()));
    std::fs::write(&path, serde_json::to_vec(&only_ed).unwrap()).unwrap();
    let flag = format!("--jwks-file={}", path.display());
    let g = common::gateway(&env, &[&flag]).await;

    let rs256 = sign(
        Algorithm::RS256,
        "rsa-private.pem",
        Some("rsa-1"),
        &claims("ann"),
    );
    let eddsa = sign(
        Algorithm::EdDSA,
        "ed-private.pem",
        Some("ed-1"),
        &claims("ann"),
    );
    assert_eq!(admitted(g.addr(), &eddsa).await, Ok(()));
    assert_eq!(admitted(g.addr(), &rs256).await, Err(4001));

    std::fs::write(&path, &full).unwrap();
    eventually(
        Duration::from_secs(10),
        "the JWKS file to be read again",
        || async { admitted(g.addr(), &rs256).await.ok() },
    )
    .await;
    let es256 = sign(
        Algorithm::ES256,
        "ec-private.pem",
        Some("ec-1"),
        &claims("ann"),
    );
    assert_eq!(admitted(g.addr(), &es256).await, Ok(()));
    assert_eq!(admitted(g.addr(), &eddsa).await, Ok(()));
    // A key picked by its kid verifies its own signatures only.
    let mislabelled = sign(
        Algorithm::EdDSA,
        "ed-private.pem",
        Some("rsa-1"),
        &claims("ann"),
    );
    assert_eq!(admitted(g.addr(), &mislabelled).await, Err(4001));
    let unknown = sign(
        Algorithm::EdDSA,
        "ed-private.pem",
        Some("nobody"),
        &claims("ann"),
    );
    assert_eq!(admitted(g.addr(), &unknown).await, Err(4001));
    // The symmetric key listed in the document is not used.
    let secret = jsonwebtoken::encode(
        &Header {
            kid: Some("secret-1".into()),
            ..Header::new(Algorithm::HS256)
        },
        &claims("ann"),
        &EncodingKey::from_secret(b"a-secret-of-at-least-thirty-two-bytes!!"),
    )
    .unwrap();
    assert_eq!(admitted(g.addr(), &secret).await, Err(4001));
    let _ = std::fs::remove_file(&path);
}
