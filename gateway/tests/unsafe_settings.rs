//! Secrets cannot be defaulted: outside `DEV_MODE` a gateway refuses to start with a short
//! `JWT_SECRET` or one shipped in the repository, and `DEV_MODE`, which mints tokens for
//! anyone, listens on loopback only unless `DEV_MODE_PUBLIC` says otherwise.

use teamchat_gateway::{Gateway, SHIPPED_SECRETS};
use teamchat_testkit::TestEnv;

/// Every `${JWT_SECRET:-default}` in the scripts and compose.yaml.
fn defaults_in_the_repository() -> Vec<String> {
    let mut found = Vec::new();
    for file in ["scripts/run", "compose.yaml"] {
        let text =
            std::fs::read_to_string(format!("{}/../{file}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        for (at, _) in text.match_indices("JWT_SECRET:-") {
            let rest = &text[at + "JWT_SECRET:-".len()..];
            found.push(rest.split('}').next().unwrap().to_owned());
        }
    }
    found
}

async fn starts(env: &TestEnv, args: &[&str]) -> Result<(), String> {
    match Gateway::start(env.gateway_config(args)).await {
        Ok(gateway) => {
            gateway.stop().await;
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_or_shipped_secret_is_refused_outside_dev_mode() {
    let env = TestEnv::new().await;
    let shipped = defaults_in_the_repository();
    assert!(!shipped.is_empty(), "scripts/run has a development default");
    for default in &shipped {
        assert!(
            SHIPPED_SECRETS.contains(&default.as_str()),
            "{default} is refused"
        );
    }
    let short = format!("--jwt-secret={}", "s".repeat(31));
    let err = starts(&env, &[&short]).await.unwrap_err();
    assert!(err.contains("32 bytes"), "{err}");
    // A shipped default is refused whatever its length.
    let padded = "p".repeat(40);
    for secret in SHIPPED_SECRETS.iter().copied().chain([padded.as_str()]) {
        let arg = format!("--jwt-secret={secret}");
        let outcome = starts(&env, &[&arg]).await;
        assert_eq!(outcome.is_ok(), secret == padded, "{secret}: {outcome:?}");
    }
    // In development both are allowed.
    starts(&env, &[&short, "--dev-mode"]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_listens_on_loopback_unless_told_otherwise() {
    let env = TestEnv::new().await;
    let err = starts(&env, &["--dev-mode", "--listen=0.0.0.0:0"])
        .await
        .unwrap_err();
    assert!(err.contains("DEV_MODE_PUBLIC"), "{err}");
    starts(
        &env,
        &["--dev-mode", "--listen=0.0.0.0:0", "--dev-mode-public"],
    )
    .await
    .unwrap();
    starts(&env, &["--listen=0.0.0.0:0"]).await.unwrap();
}

/// Tokens need a key: no secret and no public key is refused, in development too; a
/// public key needs no secret, but cannot be combined with `DEV_MODE` (which mints HS256
/// tokens); a public key that is not one is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_for_tokens_is_required() {
    let env = TestEnv::new().await;
    for args in [&["--jwt-secret="][..], &["--jwt-secret=", "--dev-mode"]] {
        let err = starts(&env, args).await.unwrap_err();
        assert!(err.contains("JWT_SECRET"), "{err}");
    }
    let public = format!(
        "--jwt-public-key={}/tests/keys/ed-public.pem",
        env!("CARGO_MANIFEST_DIR")
    );
    starts(&env, &["--jwt-secret=", &public]).await.unwrap();
    let err = starts(&env, &[&public, "--dev-mode"]).await.unwrap_err();
    assert!(err.contains("DEV_MODE"), "{err}");
    let err = starts(
        &env,
        &["--jwt-public-key=-----BEGIN PUBLIC KEY-----\nnot a key"],
    )
    .await
    .unwrap_err();
    assert!(err.contains("JWT_PUBLIC_KEY"), "{err}");
}
