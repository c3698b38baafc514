-- Credit (usage) tracking: one ledger row per charged event, exactly once (keyed by the
-- event's place in its team stream), and each user's balance, updated in the same
-- transaction as the ledger.
CREATE TABLE credit_ledger (
    team     text   NOT NULL,
    "offset" bigint NOT NULL,
    user_id  text   NOT NULL,
    kind     text   NOT NULL,
    cost     bigint NOT NULL,
    PRIMARY KEY (team, "offset")
);

CREATE TABLE credit_balances (
    user_id text   PRIMARY KEY,
    used    bigint NOT NULL
);
