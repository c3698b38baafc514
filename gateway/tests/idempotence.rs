//! A repeated `client_id` is one message: the first ack again, no second `message:new`, one
//! row in PostgreSQL.

mod common;

use std::time::Duration;

use teamchat_testkit::{Client, TestEnv, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_client_id_is_one_message_even_across_gateways() {
    let env = TestEnv::new().await;
    let (g1, g2) = common::two_gateways(&env).await;
    let token = env.token("alice", &["t"]);
    let mut first = Client::connect(g1.addr(), &token).await;
    let mut second = Client::connect(g2.addr(), &token).await; // the same user, elsewhere
    let mut watcher = Client::connect(g2.addr(), &env.token("bob", &["t"])).await;
    for c in [&mut first, &mut second, &mut watcher] {
        c.join("t").await;
    }

    let ack = first.send_message("t", "same", "once").await;
    let again = first.send_message("t", "same", "once").await;
    assert_eq!(again, ack, "the first ack again");
    // alice's other connection gets the message like anyone else, then retries it.
    assert_eq!(second.expect("message:new").await["id"], ack["id"]);
    let from_elsewhere = second
        .send_message("t", "same", "once, retried elsewhere")
        .await;
    for field in ["seq", "id", "offset", "ts", "client_id"] {
        assert_eq!(from_elsewhere[field], ack[field], "{field}");
    }
    assert_eq!(watcher.expect("message:new").await["id"], ack["id"]);
    // The same client_id from another user is another message.
    let other = watcher.send_message("t", "same", "bob's").await;
    assert_eq!(other["seq"], 2);
    assert_eq!(first.expect("message:new").await["seq"], 2);
    assert_eq!(second.expect("message:new").await["seq"], 2);

    // Nothing else was sent for the retries: the watcher's next frame is the marker.
    let marker = first.send_message("t", "marker", "after").await;
    let got = watcher.expect("message:new").await;
    assert_eq!(
        (got["offset"].clone(), got["seq"].clone()),
        (marker["offset"].clone(), 3.into())
    );

    let stop = common::worker(&env, "w1");
    let pg = env.pg().await;
    let rows: Vec<(String, i64, String)> =
        eventually(Duration::from_secs(20), "3 synced rows", || async {
            let rows: Vec<(String, i64, String)> =
                sqlx::query_as("SELECT user_id, seq, client_id FROM messages ORDER BY seq")
                    .fetch_all(&pg)
                    .await
                    .ok()?;
            (rows.len() >= 3).then_some(rows)
        })
        .await;
    assert_eq!(
        rows,
        vec![
            ("alice".into(), 1, "same".into()),
            ("bob".into(), 2, "same".into()),
            ("alice".into(), 3, "marker".into())
        ]
    );
    stop.cancel();
}
