//! Rate limits per user and operation (GCRA, via governor). Limits are kept per gateway:
//! a user's connections on one gateway share one budget.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use teamchat_shared::config::GatewayConfig;

/// The operations with a budget of their own.
#[derive(Clone, Copy, Debug)]
pub enum Operation {
    Send,
    Typing,
    Join,
    /// Requests to the HTTP API (history, credits).
    Http,
    /// Read receipts written (coalesced: past the budget they wait, never refused).
    Receipt,
    /// Server API requests, per key.
    Api,
}

impl Operation {
    /// The `operation` label of the rate-limit metric.
    pub fn label(self) -> &'static str {
        match self {
            Operation::Send => "send",
            Operation::Typing => "typing",
            Operation::Join => "join",
            Operation::Http => "http",
            Operation::Receipt => "receipt",
            Operation::Api => "api",
        }
    }
}

pub struct RateLimits {
    send: DefaultKeyedRateLimiter<String>,
    typing: DefaultKeyedRateLimiter<String>,
    join: DefaultKeyedRateLimiter<String>,
    http: DefaultKeyedRateLimiter<String>,
    receipt: DefaultKeyedRateLimiter<String>,
    api: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
}

/// `per_minute` sustained, with bursts of a quarter of it (at least one).
fn quota(per_minute: u32) -> Quota {
    let rate = NonZeroU32::new(per_minute.max(1)).expect("positive");
    let burst = NonZeroU32::new((per_minute / 4).max(1)).expect("positive");
    Quota::per_minute(rate).allow_burst(burst)
}

impl RateLimits {
    pub fn new(config: &GatewayConfig) -> Self {
        Self {
            send: RateLimiter::dashmap(quota(config.rate_send_per_min)),
            typing: RateLimiter::dashmap(quota(config.rate_typing_per_min)),
            join: RateLimiter::dashmap(quota(config.rate_join_per_min)),
            http: RateLimiter::dashmap(quota(config.rate_http_per_min)),
            receipt: RateLimiter::dashmap(quota(config.rate_receipt_per_min)),
            api: RateLimiter::dashmap(quota(config.rate_api_per_min)),
            clock: DefaultClock::default(),
        }
    }

    /// Takes one unit of the user's budget, or says how long until one is free.
    pub fn check(&self, operation: Operation, user: &str) -> Result<(), Duration> {
        let limiter = match operation {
            Operation::Send => &self.send,
            Operation::Typing => &self.typing,
            Operation::Join => &self.join,
            Operation::Http => &self.http,
            Operation::Receipt => &self.receipt,
            Operation::Api => &self.api,
        };
        limiter
            .check_key(&user.to_owned())
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Forgets users whose budget is full again, so memory follows active users.
    pub fn forget_idle(&self) {
        self.send.retain_recent();
        self.typing.retain_recent();
        self.join.retain_recent();
        self.http.retain_recent();
        self.receipt.retain_recent();
        self.api.retain_recent();
    }
}
