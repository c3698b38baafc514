//! The Redis key schema. Every key and channel an event touches carries its team's shard as
//! a hash tag (`{s<N>}`), so the append script's keys always live in one cluster slot.

/// Builds key names under a prefix (`tc` by default; tests use their own to isolate).
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
    shards: u32,
}

impl Keys {
    pub fn new(prefix: impl Into<String>, shards: u32) -> Self {
        assert!(shards > 0, "shard count must be positive");
        Self {
            prefix: prefix.into(),
            shards,
        }
    }

    pub fn shards(&self) -> u32 {
        self.shards
    }

    /// The team's shard: FNV-1a of the team id, modulo the shard count. Stable across
    /// processes and versions, since every gateway and worker must agree on it.
    pub fn shard_of(&self, team: &str) -> u32 {
        let mut hash: u32 = 0x811c_9dc5;
        for byte in team.as_bytes() {
            hash ^= u32::from(*byte);
            hash = hash.wrapping_mul(0x0100_0193);
        }
        hash % self.shards
    }

    fn team_key(&self, team: &str, suffix: &str) -> String {
        format!(
            "{}:{{s{}}}:team:{}:{}",
            self.prefix,
            self.shard_of(team),
            team,
            suffix
        )
    }

    /// The team's durable event stream; entry ids are `<offset>-0`.
    pub fn team_events(&self, team: &str) -> String {
        self.team_key(team, "events")
    }

    /// A SCAN pattern matching every team stream under this prefix.
    pub fn team_events_pattern(&self) -> String {
        format!("{}:{{s*}}:team:*:events", self.prefix)
    }

    /// The team of a team-stream key (see `team_events`).
    pub fn team_of_events_key<'a>(&self, key: &'a str) -> Option<&'a str> {
        let rest = key
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(":{s")?;
        let (_, rest) = rest.split_once("}:team:")?;
        rest.strip_suffix(":events")
    }

    /// The team's meta hash: `epoch`, `offset` (last durable event), `seq` (last message).
    pub fn team_meta(&self, team: &str) -> String {
        self.team_key(team, "meta")
    }

    /// Author and id of the newest messages by seq (checks edits and deletes; older ones are
    /// looked up in PostgreSQL); `~` marks deleted.
    pub fn team_messages(&self, team: &str) -> String {
        self.team_key(team, "messages")
    }

    /// Each user's read receipt: the seq read up to.
    pub fn team_receipts(&self, team: &str) -> String {
        self.team_key(team, "receipts")
    }

    /// The set of the team's pinned message seqs.
    pub fn team_pins(&self, team: &str) -> String {
        self.team_key(team, "pins")
    }

    /// A message's reactions: `user \t emoji` -> 1, `\t emoji` -> how many, `#` -> how many
    /// distinct emojis (scripts/append.lua). The script derives the key of another seq from
    /// this one (same hash tag, so the same cluster slot).
    pub fn message_reactions(&self, team: &str, seq: u64) -> String {
        self.team_key(team, &format!("reactions:{seq}"))
    }

    /// The pub/sub channel the team's events are published on.
    pub fn team_channel(&self, team: &str) -> String {
        self.team_key(team, "ch")
    }

    /// Remembers the ack of a `message:send` for 24 h, keyed by user and `client_id`.
    pub fn dedupe(&self, team: &str, user: &str, client_id: &str) -> String {
        // Both hex-encoded: ids may hold `:`, and with the user as it is, team `a` and user
        // `dedupe:b` would share the key of team `a:dedupe` and user `b` (on one shard).
        // Hex digits spell none of the other suffixes, so no key of one team can be a key
        // of another.
        self.team_key(team, &format!("dedupe:{}:{}", hex(user), hex(client_id)))
    }

    /// Marks a deleted message older than the messages hash holds, for 24 h (until the
    /// worker stored the delete and PostgreSQL shows it).
    pub fn tombstone(&self, team: &str, seq: u64) -> String {
        self.team_key(team, &format!("deleted:{seq}"))
    }

    /// The channel every gateway listens on for what the server API asks of connections
    /// (disconnect a user, notify a user). Hash-tagged like the rest, for a cluster.
    pub fn control(&self) -> String {
        format!("{}:{{ctl}}:control", self.prefix)
    }

    /// When `user` was last removed from the team by the server API (ms): their tokens
    /// issued before it no longer let them join or read the team.
    pub fn team_removed(&self, team: &str, user: &str) -> String {
        self.team_key(team, &format!("removed:{}", hex(user)))
    }

    /// The team's presence: sessions (hash), their expiry (zset), users' session counts (hash).
    pub fn presence(&self, team: &str) -> [String; 3] {
        [
            self.team_key(team, "presence:sessions"),
            self.team_key(team, "presence:expiry"),
            self.team_key(team, "presence:users"),
        ]
    }

    /// A user's open connections across gateways (zset of sessions by expiry).
    pub fn user_connections(&self, user: &str) -> String {
        format!("{}:{{u:{}}}:conns", self.prefix, user)
    }

    /// Before when (ms) the user's tokens were revoked by the server API (in the user's
    /// slot, so the connection-limit script reads it with the connections zset).
    pub fn user_revoked(&self, user: &str) -> String {
        format!("{}:{{u:{}}}:revoked", self.prefix, user)
    }

    /// Credits used per user on this shard (a user's total is the sum over shards).
    pub fn user_credits(&self, shard: u32) -> String {
        format!("{}:{{s{}}}:credits:users", self.prefix, shard)
    }

    /// The shard's lineage: the replication id of the node that gave out its teams'
    /// counters and their generation (`scripts/lineage.lua`).
    pub fn shard_lineage(&self, shard: u32) -> String {
        format!("{}:{{s{}}}:lineage", self.prefix, shard)
    }

    /// The shard's ingest stream, read by the workers' consumer group.
    pub fn ingest(&self, shard: u32) -> String {
        format!("{}:{{s{}}}:ingest", self.prefix, shard)
    }

    /// All ingest streams, shard 0 first.
    pub fn all_ingest(&self) -> Vec<String> {
        (0..self.shards).map(|s| self.ingest(s)).collect()
    }

    /// The team a channel name belongs to, if it is one of ours.
    pub fn team_of_channel<'a>(&self, channel: &'a str) -> Option<&'a str> {
        let rest = channel
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(":{s")?;
        let (_, rest) = rest.split_once("}:team:")?;
        rest.strip_suffix(":ch")
    }
}

/// Which of `slices` a key (a session id, a team) falls in: the same every time within a
/// process (not across processes, unlike `Keys::shard_of`). Spreads periodic work over a
/// period.
pub fn slice_of(key: &str, slices: u64) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    hasher.finish() % slices
}

fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Every key a team's events and users touch, with what it is the key of.
    fn keys_of(
        keys: &Keys,
        team: &str,
        user: &str,
        client_id: &str,
        seq: u64,
    ) -> Vec<(String, String)> {
        let mut all = vec![
            (keys.team_events(team), format!("events {team}")),
            (keys.team_meta(team), format!("meta {team}")),
            (keys.team_messages(team), format!("messages {team}")),
            (keys.team_receipts(team), format!("receipts {team}")),
            (keys.team_channel(team), format!("channel {team}")),
            (
                keys.dedupe(team, user, client_id),
                format!("dedupe {team} {user} {client_id}"),
            ),
            (keys.tombstone(team, seq), format!("tombstone {team} {seq}")),
            (keys.user_connections(user), format!("connections {user}")),
            (keys.user_revoked(user), format!("revoked {user}")),
            (
                keys.team_removed(team, user),
                format!("removed {team} {user}"),
            ),
        ];
        for (n, key) in keys.presence(team).into_iter().enumerate() {
            all.push((key, format!("presence{n} {team}")));
        }
        all
    }

    /// Ids of the contract's alphabet made of the words keys are made of, joined by `:`:
    /// where two things sharing a key would be found if they could.
    fn id() -> impl Strategy<Value = String> {
        let word = prop::sample::select(vec![
            "a", "b", "1", "2", "dedupe", "deleted", "presence", "sessions", "meta", "events",
            "messages", "receipts", "ch", "team", "62", "ab", "removed", "revoked", "conns",
        ]);
        prop::collection::vec(word, 1..4).prop_map(|words| words.join(":"))
    }

    proptest! {
        /// Ids of the contract's alphabet (`:` included) never make two things share a key,
        /// even with every team on one shard.
        #[test]
        fn no_two_things_share_a_key(
            a in id(), b in id(), user_a in id(), user_b in id(),
            client_a in id(), client_b in id(), seq_a in 0u64..3, seq_b in 0u64..3,
            shifted in any::<bool>(),
        ) {
            // Half the cases move words from one team's name into the other's user (team
            // `a` and user `x:u` against team `a:x` and user `u`), where keys would meet.
            let (b, user_a, client_b) = if shifted {
                (format!("{a}:{b}"), format!("{b}:{user_b}"), client_a.clone())
            } else {
                (b, user_a, client_b)
            };
            let keys = Keys::new("tc", 1);
            let mut seen = std::collections::HashMap::new();
            for (key, what) in keys_of(&keys, &a, &user_a, &client_a, seq_a)
                .into_iter()
                .chain(keys_of(&keys, &b, &user_b, &client_b, seq_b))
            {
                if let Some(other) = seen.insert(key.clone(), what.clone()) {
                    prop_assert_eq!(&other, &what, "{} is the key of both", key);
                }
            }
        }
    }

    #[test]
    fn a_team_and_a_user_named_with_colons_do_not_share_a_dedupe_key() {
        let keys = Keys::new("tc", 1);
        assert_ne!(
            keys.dedupe("acme", "dedupe:bob", "c"),
            keys.dedupe("acme:dedupe", "bob", "c")
        );
    }

    #[test]
    fn keys_of_a_team_share_one_hash_tag() {
        let keys = Keys::new("tc", 16);
        let tag = format!("{{s{}}}", keys.shard_of("acme"));
        for key in [
            keys.team_events("acme"),
            keys.team_meta("acme"),
            keys.team_channel("acme"),
            keys.dedupe("acme", "u1", "c:1"),
            keys.team_messages("acme"),
            keys.team_receipts("acme"),
            keys.ingest(keys.shard_of("acme")),
        ] {
            assert!(key.contains(&tag), "{key} lacks {tag}");
        }
    }

    #[test]
    fn channel_maps_back_to_its_team() {
        let keys = Keys::new("t-9", 16);
        let channel = keys.team_channel("a:b.c");
        assert_eq!(keys.team_of_channel(&channel), Some("a:b.c"));
        assert_eq!(keys.team_of_channel("other:{s1}:team:x:ch"), None);
        assert_eq!(
            keys.team_of_events_key(&keys.team_events("a:b.c")),
            Some("a:b.c")
        );
    }

    #[test]
    fn shards_spread_teams() {
        let keys = Keys::new("tc", 16);
        let used: std::collections::HashSet<u32> = (0..200)
            .map(|i| keys.shard_of(&format!("team{i}")))
            .collect();
        assert_eq!(used.len(), 16);
    }
}
