//! Workers commit out of order, so every write commutes: an edit or delete that reaches
//! PostgreSQL before its message, redelivered entries, and receipts in any order all end
//! in the same rows.

use teamchat_shared::event::{
    ActorData, EditData, EventData, MessageData, ReactionData, StreamEvent,
};
use teamchat_testkit::TestEnv;
use teamchat_worker::ingest::Entry;
use teamchat_worker::store::Store;

fn entry(offset: u64, seq: u64, data: EventData) -> Entry {
    Entry {
        stream: "ingest".into(),
        id: format!("{offset}-0"),
        event: Ok(StreamEvent {
            team: "t".into(),
            offset,
            seq,
            src: String::new(),
            data,
            cost: 0,
        }),
        fields: Vec::new(),
        position: Some(("t".into(), offset)),
        deliveries: 1,
    }
}

fn message(offset: u64, seq: u64, body: &str) -> Entry {
    let data = MessageData {
        id: format!("id{seq}"),
        client_id: format!("c{seq}"),
        user: "ann".into(),
        name: None,
        body: body.into(),
        meta: None,
        ts: 1_000 + offset as i64,
        parent: None,
        mentions: Vec::new(),
        attachments: Vec::new(),
    };
    entry(offset, seq, EventData::Message(data))
}

fn edit(offset: u64, seq: u64, body: &str) -> Entry {
    entry(
        offset,
        seq,
        EventData::Edit(EditData {
            user: "ann".into(),
            body: body.into(),
            ts: 1_000 + offset as i64,
        }),
    )
}

fn delete(offset: u64, seq: u64) -> Entry {
    entry(
        offset,
        seq,
        EventData::Delete(ActorData {
            user: "ann".into(),
            ts: 1_000 + offset as i64,
        }),
    )
}

fn receipt(offset: u64, user: &str, seq: u64) -> Entry {
    entry(
        offset,
        seq,
        EventData::Receipt(ActorData {
            user: user.into(),
            ts: 0,
        }),
    )
}

type Row = (i64, Option<String>, Option<String>, Option<i64>, bool);

async fn rows(store: &Store) -> (Vec<Row>, Vec<(String, i64)>, i64) {
    let messages =
        sqlx::query_as("SELECT seq, id, body, edited_at, deleted FROM messages ORDER BY seq")
            .fetch_all(store.pool())
            .await
            .unwrap();
    let receipts = sqlx::query_as("SELECT user_id, seq FROM receipts ORDER BY user_id")
        .fetch_all(store.pool())
        .await
        .unwrap();
    let watermark = sqlx::query_scalar("SELECT synced_offset FROM team_sync WHERE team = 't'")
        .fetch_one(store.pool())
        .await
        .unwrap();
    (messages, receipts, watermark)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_order_of_batches_gives_the_same_rows() {
    // Offsets: 1 msg#1, 2 msg#2, 3 edit#1, 4 edit#1 again, 5 delete#2, 6 receipt ben 2,
    // 7 receipt cy 1, 8 msg#3.
    let all = || {
        vec![
            message(1, 1, "one"),
            message(2, 2, "two"),
            edit(3, 1, "one'"),
            edit(4, 1, "one''"),
            delete(5, 2),
            receipt(6, "ben", 2),
            receipt(7, "cy", 1),
            message(8, 3, "three"),
        ]
    };
    let expected: Vec<Row> = vec![
        (
            1,
            Some("id1".into()),
            Some("one''".into()),
            Some(1_004),
            false,
        ),
        (2, Some("id2".into()), Some(String::new()), None, true),
        (3, Some("id3".into()), Some("three".into()), None, false),
    ];
    // In order, one batch; reversed, one entry per batch; interleaved with redeliveries.
    let orders: Vec<Vec<Vec<usize>>> = vec![
        vec![(0..8).collect()],
        (0..8).rev().map(|i| vec![i]).collect(),
        vec![vec![4, 2], vec![7, 3, 5], vec![1, 0, 6], vec![2, 4, 0]],
    ];
    for batches in orders {
        let env = TestEnv::new().await;
        let store = Store::connect(&env.database_url, 3, None).await.unwrap();
        for batch in &batches {
            let entries: Vec<Entry> = {
                let mut pool = all();
                batch
                    .iter()
                    .map(|i| std::mem::replace(&mut pool[*i], receipt(0, "x", 0)))
                    .collect()
            };
            store.write_batch(&entries).await.unwrap();
        }
        let (messages, receipts, watermark) = rows(&store).await;
        assert_eq!(messages, expected, "batches {batches:?}");
        assert_eq!(
            receipts,
            vec![("ben".to_owned(), 2), ("cy".to_owned(), 1)],
            "batches {batches:?}"
        );
        assert_eq!(watermark, 8, "batches {batches:?}");
    }
}

/// A thread's counters count each reply once, when it is first stored, whatever the
/// order of batches and however often an entry is redelivered; a deleted reply counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thread_counters_count_each_reply_once_in_any_order() {
    let reply = |offset: u64, seq: u64| {
        let Ok(mut event) = message(offset, seq, "reply").event else {
            unreachable!()
        };
        if let EventData::Message(data) = &mut event.data {
            data.parent = Some(1);
        }
        Entry {
            event: Ok(event),
            ..message(offset, seq, "reply")
        }
    };
    // Offsets: 1 msg#1, 2 reply#2 to 1, 3 reply#3 to 1, 4 delete#3.
    let all = || vec![message(1, 1, "top"), reply(2, 2), reply(3, 3), delete(4, 3)];
    let orders: Vec<Vec<Vec<usize>>> = vec![
        vec![(0..4).collect()],
        (0..4).rev().map(|i| vec![i]).collect(),
        vec![vec![2, 3], vec![1], vec![1, 2], vec![0, 1]],
    ];
    for batches in orders {
        let env = TestEnv::new().await;
        let store = Store::connect(&env.database_url, 3, None).await.unwrap();
        for batch in &batches {
            let mut pool: Vec<Option<Entry>> = all().into_iter().map(Some).collect();
            let entries: Vec<Entry> = batch.iter().filter_map(|i| pool[*i].take()).collect();
            store.write_batch(&entries).await.unwrap();
        }
        let thread: (i64, i64) = sqlx::query_as(
            "SELECT reply_count, last_reply_ts FROM threads WHERE team = 't' AND parent = 1",
        )
        .fetch_one(store.pool())
        .await
        .unwrap();
        assert_eq!(thread, (2, 1_003), "batches {batches:?}");
        let parents: Vec<Option<i64>> =
            sqlx::query_scalar("SELECT parent FROM messages ORDER BY seq")
                .fetch_all(store.pool())
                .await
                .unwrap();
        assert_eq!(parents, [None, Some(1), Some(1)], "batches {batches:?}");
    }
}

/// Pins and unpins apply in offset order whatever order they are committed in, before
/// their message is stored too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_newest_pin_or_unpin_wins_in_any_order() {
    let pin = |offset: u64, on: bool| {
        let actor = ActorData {
            user: "ann".into(),
            ts: 1_000 + offset as i64,
        };
        entry(
            offset,
            1,
            if on {
                EventData::Pin(actor)
            } else {
                EventData::Unpin(actor)
            },
        )
    };
    // Offsets: 1 msg#1, 2 pin, 3 unpin, 4 pin.
    let all = || {
        vec![
            message(1, 1, "top"),
            pin(2, true),
            pin(3, false),
            pin(4, true),
        ]
    };
    let orders: Vec<Vec<Vec<usize>>> = vec![
        vec![(0..4).collect()],
        (0..4).rev().map(|i| vec![i]).collect(),
        vec![vec![3], vec![2, 1], vec![0, 3]],
    ];
    for batches in orders {
        let env = TestEnv::new().await;
        let store = Store::connect(&env.database_url, 3, None).await.unwrap();
        for batch in &batches {
            let mut pool: Vec<Option<Entry>> = all().into_iter().map(Some).collect();
            let entries: Vec<Entry> = batch.iter().filter_map(|i| pool[*i].take()).collect();
            store.write_batch(&entries).await.unwrap();
        }
        let row: (bool, Option<i64>, Option<String>) = sqlx::query_as(
            "SELECT pinned, pinned_at, body FROM messages WHERE team = 't' AND seq = 1",
        )
        .fetch_one(store.pool())
        .await
        .unwrap();
        assert_eq!(
            row,
            (true, Some(1_004), Some("top".into())),
            "batches {batches:?}"
        );
    }
}

/// Each user's reactions apply in offset order and each message's counts are recounted
/// from them, whatever order (or concurrency) the batches are committed in, redelivered
/// entries included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reaction_counts_end_the_same_in_any_order() {
    let react = |offset: u64, user: &str, emoji: &str, add: bool| {
        let data = ReactionData {
            user: user.into(),
            emoji: emoji.into(),
            ts: 1_000 + offset as i64,
        };
        entry(
            offset,
            1,
            if add {
                EventData::React(data)
            } else {
                EventData::Unreact(data)
            },
        )
    };
    let all = || {
        vec![
            message(1, 1, "top"),
            react(2, "ann", "👍", true),
            react(3, "ben", "👍", true),
            react(4, "ann", "👍", false),
            react(5, "ben", "🎉", true),
            react(6, "ann", "👍", true),
            react(7, "carl", "🎉", true),
            react(8, "carl", "👀", true),
            react(9, "carl", "👀", false),
        ]
    };
    let orders: Vec<Vec<Vec<usize>>> = vec![
        vec![(0..9).collect()],
        (0..9).rev().map(|i| vec![i]).collect(),
        vec![
            vec![6, 8],
            vec![3, 1],
            vec![0, 5, 6],
            vec![2, 4, 7],
            vec![1, 2],
        ],
    ];
    let expected = vec![
        ("👍".to_owned(), 2, 2),
        ("🎉".to_owned(), 2, 5),
        ("👀".to_owned(), 0, 8),
    ];
    let counts = |store: &Store| {
        let pool = store.pool().clone();
        async move {
            sqlx::query_as::<_, (String, i64, i64)>(
                "SELECT emoji, count, first_offset FROM reaction_counts
                 WHERE team = 't' AND seq = 1 ORDER BY count DESC, first_offset, emoji",
            )
            .fetch_all(&pool)
            .await
            .unwrap()
        }
    };
    for batches in orders {
        let env = TestEnv::new().await;
        let store = Store::connect(&env.database_url, 3, None).await.unwrap();
        for batch in &batches {
            let entries: Vec<Entry> = batch.iter().map(|i| all().swap_remove(*i)).collect();
            store.write_batch(&entries).await.unwrap();
        }
        assert_eq!(counts(&store).await, expected, "batches {batches:?}");
    }
    // Two batches at once on two connections.
    let env = TestEnv::new().await;
    let store = Store::connect(&env.database_url, 3, None).await.unwrap();
    let (first, second): (Vec<Entry>, Vec<Entry>) = all()
        .into_iter()
        .partition(|e| e.id.starts_with(['1', '3', '5', '7', '9']));
    let (a, b) = tokio::join!(store.write_batch(&first), store.write_batch(&second));
    a.unwrap();
    b.unwrap();
    assert_eq!(counts(&store).await, expected);
}

/// The unread counts the worker keeps per block of seqs give what counting the messages
/// themselves gives, at read positions in, at the edges of and across both block levels,
/// whatever the order of batches (deletes before their message, redelivered entries).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_counts_match_the_messages_in_any_order() {
    // Sparse seqs over several 256-seq and 65,536-seq blocks.
    let seqs: Vec<u64> = [1, 2, 255, 256, 257, 511, 512, 1_000, 65_535, 65_536, 65_537]
        .into_iter()
        .chain((0..40).map(|n| 66_000 + n * 97))
        .chain([131_071, 131_072, 200_000, 200_001])
        .collect();
    let users = ["ann", "ben", "carl"];
    let all = || {
        let mut entries = Vec::new();
        for (n, seq) in seqs.iter().enumerate() {
            let user = users[n % 3];
            let mentions: Vec<String> = match n % 4 {
                0 => vec!["ben".into()],
                1 => vec!["ann".into(), "ben".into()],
                2 => vec![user.into()],
                _ => vec![],
            };
            let data = MessageData {
                id: format!("id{seq}"),
                client_id: format!("c{seq}"),
                user: user.into(),
                name: None,
                body: "b".into(),
                meta: None,
                ts: 1,
                parent: None,
                mentions,
                attachments: Vec::new(),
            };
            entries.push(entry(n as u64 + 1, *seq, EventData::Message(data)));
        }
        // Every fifth message deleted, after it.
        let deleted: Vec<u64> = seqs.iter().step_by(5).copied().collect();
        for (n, seq) in deleted.iter().enumerate() {
            entries.push(delete((seqs.len() + n) as u64 + 1, *seq));
        }
        entries
    };
    let count = all().len();
    let orders: Vec<Vec<Vec<usize>>> = vec![
        vec![(0..count).collect()],
        // Deletes first (placeholders), then the messages, some twice.
        vec![
            (seqs.len()..count).collect(),
            (0..seqs.len()).collect(),
            (0..10).collect(),
        ],
        (0..count)
            .rev()
            .collect::<Vec<_>>()
            .chunks(7)
            .map(<[usize]>::to_vec)
            .collect(),
    ];
    let reads = [
        0, 1, 2, 255, 256, 300, 65_535, 65_536, 66_100, 131_072, 199_999,
    ];
    for batches in orders {
        let env = TestEnv::new().await;
        let store = Store::connect(&env.database_url, 3, None).await.unwrap();
        for batch in &batches {
            let entries: Vec<Entry> = batch.iter().map(|i| all().swap_remove(*i)).collect();
            store.write_batch(&entries).await.unwrap();
        }
        for user in users {
            for read in reads {
                sqlx::query(
                    r#"INSERT INTO receipts (team, user_id, seq, "offset") VALUES ('t', $1, $2, 0)
                       ON CONFLICT (team, user_id) DO UPDATE SET seq = EXCLUDED.seq"#,
                )
                .bind(user)
                .bind(read as i64)
                .execute(store.pool())
                .await
                .unwrap();
                let counted =
                    teamchat_shared::db::unread::counts(store.pool(), user, &["t".into()])
                        .await
                        .unwrap();
                let (unread, mentions): (i64, i64) = sqlx::query_as(
                    "SELECT (SELECT max(seq) FROM messages WHERE team = 't') - $2
                            - count(*) FILTER (WHERE deleted OR user_id = $1),
                            count(*) FILTER (WHERE NOT deleted AND user_id <> $1 AND $1 = ANY (mentions))
                     FROM messages WHERE team = 't' AND seq > $2",
                )
                .bind(user)
                .bind(read as i64)
                .fetch_one(store.pool())
                .await
                .unwrap();
                assert_eq!(
                    (counted[0].unread, counted[0].mentions),
                    (unread.max(0), mentions),
                    "{user} read up to {read}, batches {batches:?}"
                );
            }
        }
    }
}

/// A replay marks a team synced through an offset; offsets a worker synced past it (they
/// waited for the gap the replay filled) then follow on, and nothing is left waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_waiting_past_a_replayed_range_follow_on_from_it() {
    let env = TestEnv::new().await;
    let store = Store::connect(&env.database_url, 3, None).await.unwrap();
    store
        .write_batch(&[message(5, 5, "five"), message(6, 6, "six")])
        .await
        .unwrap();
    assert_eq!(rows(&store).await.2, 0, "5 and 6 wait for 1..=4");

    store.mark_synced_through("t", 4).await.unwrap();
    let (watermark, waiting): (i64, bool) =
        sqlx::query_as("SELECT synced_offset, waiting FROM team_sync WHERE team = 't'")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!((watermark, waiting), (6, false));
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM synced_ahead")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(left, 0);
}
