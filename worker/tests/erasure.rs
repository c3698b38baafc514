//! `teamchat-worker erase`: the server API's erasure from the command line, against a
//! live gateway and a running worker.

use serde_json::{Value, json};
use teamchat_gateway::Gateway;
use teamchat_testkit::{Client, TestEnv};
use tokio_util::sync::CancellationToken;

/// Runs `teamchat-worker erase` with `args` and answers its exit status, stdout and stderr.
async fn erase(env: &TestEnv, args: &[&str]) -> (bool, String, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_teamchat-worker"))
        .args(env.worker_args("eraser"))
        .arg("erase")
        .args(args)
        .output()
        .await
        .unwrap();
    (
        output.status.success(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `erase --user U --team T` forgets the user's texts in that team only; without
/// `--team`, in every team they wrote in — synced or not yet; members see the deletes,
/// and a replay afterwards does not bring the texts back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erase_forgets_a_users_texts_in_one_team_or_all() {
    let env = TestEnv::new().await;
    let gateway = Gateway::start(env.gateway_config(&[])).await.unwrap();
    let mut ann = Client::connect(gateway.addr(), &env.token("ann", &["t", "u"])).await;
    let mut ben = Client::connect(gateway.addr(), &env.token("ben", &["t"])).await;
    ann.join("t").await;
    ann.join("u").await;
    ben.join("t").await;
    ann.send_message("u", "u1", "secret in u").await;
    ann.send_message("t", "a1", "secret one").await;
    ann.send(json!({"type":"message:edit","team":"t","seq":1,"body":"secret edit"}))
        .await;
    ann.expect("message:ack").await;
    ann.send_message("t", "a2", "secret two").await;
    ben.send(json!({"type":"message:send","team":"t","client_id":"b1","body":"ben stays"}))
        .await;
    ben.until("message:ack").await;

    let stop = CancellationToken::new();
    tokio::spawn(teamchat_worker::run(env.worker_config("w1"), stop.clone()));

    let pg = env.pg().await;
    let secrets = |sql: &'static str| {
        let pg = pg.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pg)
                .await
                .unwrap()
        }
    };
    let in_messages = "SELECT count(*) FROM messages WHERE body LIKE '%secret%'";
    let in_archive = "SELECT count(*) FROM events WHERE data::text LIKE '%secret%'";

    // One team: u's text goes, t's stays.
    let (ok, out, err) = erase(&env, &["--user", "ann", "--team", "u"]).await;
    assert!(ok, "{err}");
    let answer: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        answer,
        json!({"user":"ann","teams":[{"team":"u","deleted":1,"scrubbed":true}]})
    );
    assert_eq!(secrets(in_messages).await, 2);

    // Every team she wrote in: t is found, u has nothing left to delete.
    let (ok, out, err) = erase(&env, &["--user", "ann"]).await;
    assert!(ok, "{err}");
    let answer: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        answer["teams"],
        json!([{"team":"t","deleted":2,"scrubbed":true},{"team":"u","deleted":0,"scrubbed":true}])
    );
    let mut gone = vec![
        ben.until("message:deleted").await["seq"].as_u64().unwrap(),
        ben.until("message:deleted").await["seq"].as_u64().unwrap(),
    ];
    gone.sort_unstable();
    assert_eq!(gone, [1, 2]);
    assert_eq!(
        (secrets(in_messages).await, secrets(in_archive).await),
        (0, 0)
    );

    let keys = env.keys();
    for stream in [
        keys.team_events("t"),
        keys.team_events("u"),
        keys.ingest(keys.shard_of("t")),
        keys.ingest(keys.shard_of("u")),
    ] {
        assert!(
            !env.stream_text(&stream).await.contains("secret"),
            "{stream}"
        );
    }

    // A replay rebuilds the rows from the stream and the archive: no text comes back,
    // and the other member's message is still there.
    stop.cancel();
    teamchat_worker::replay::replay(&env.worker_config("replayer"), None, None)
        .await
        .unwrap();
    assert_eq!(
        (secrets(in_messages).await, secrets(in_archive).await),
        (0, 0)
    );
    let ben_stays: i64 =
        sqlx::query_scalar("SELECT count(*) FROM messages WHERE body = 'ben stays'")
            .fetch_one(&pg)
            .await
            .unwrap();
    assert_eq!(ben_stays, 1);

    // A user id that cannot be one is refused before anything is touched.
    let (ok, _, err) = erase(&env, &["--user", "bad id"]).await;
    assert!(!ok && err.contains("not a user id"), "{err}");
}

/// With no worker to sync the deletes, erase says so and fails instead of scrubbing rows
/// a worker would write back; run again with a worker, it finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erase_without_a_running_worker_says_so() {
    let env = TestEnv::new().await;
    let gateway = Gateway::start(env.gateway_config(&[])).await.unwrap();
    let mut ann = Client::connect(gateway.addr(), &env.token("ann", &["t"])).await;
    ann.join("t").await;
    ann.send_message("t", "a1", "secret").await;

    let (ok, out, err) = erase(&env, &["--user", "ann", "--wait", "1s"]).await;
    assert!(!ok && err.contains("run erase again"), "{err}");
    let answer: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        answer["teams"],
        json!([{"team":"t","deleted":1,"scrubbed":false}])
    );

    let stop = CancellationToken::new();
    tokio::spawn(teamchat_worker::run(env.worker_config("w1"), stop.clone()));
    let (ok, out, err) = erase(&env, &["--user", "ann"]).await;
    assert!(ok, "{err}");
    let answer: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        answer["teams"],
        json!([{"team":"t","deleted":0,"scrubbed":true}])
    );
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE body LIKE '%secret%'")
        .fetch_one(&env.pg().await)
        .await
        .unwrap();
    assert_eq!(left, 0);
    stop.cancel();
}
