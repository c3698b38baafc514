//! The opening of a connection after the upgrade: the socket taken from hyper (with any
//! bytes it already read), authentication, the per-user connection limit (4029), the
//! registry of this gateway's connections, and `session:welcome`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use fastwebsockets::Role;
use hyper::upgrade::Upgraded;
use teamchat_shared::metrics as m;
use tokio::time::Instant;
use tracing::warn;

use super::auth::{AuthError, Claims};
use super::linger::linger;
use super::{CLOSE_GRACE, NEXT_CONN_ID, Reader, Session, Teams};
use crate::AppState;
use crate::broker::ConnectionOpen;
use crate::outlet::{ConnectionSlot, Outbound, Outlet, QueueLimits};
use crate::protocol::{Encoding, ServerFrame};
use crate::room::Who;
use crate::transport::{self, ReadHalf};

/// The opening: `None` when the connection was refused (and closed).
pub(super) async fn open(
    state: Arc<AppState>,
    upgraded: Upgraded,
    auth: Result<Claims, AuthError>,
    encoding: Encoding,
    deflate: bool,
    slot: Option<ConnectionSlot>,
) -> Option<(Session, Reader)> {
    let Some((read, write, early)) = transport::split(upgraded) else {
        warn!("upgraded connection is neither a TCP nor a TLS stream");
        return None;
    };
    // Bytes the client sent right after its handshake may already sit in hyper's buffer:
    // they are copied into the frame reader's buffer (a slice would keep hyper's whole
    // read buffer alive for the connection's lifetime).
    let limits = QueueLimits {
        frames: u32::try_from(state.config.send_queue.max(2)).unwrap_or(u32::MAX),
        bytes: state.config.send_queue_bytes,
        stall_ms: state.config.write_timeout_ms.max(1),
    };
    let outlet = Outlet::new(write, encoding, deflate, limits, slot);

    let claims = match auth {
        Ok(claims) => claims,
        Err(error) => {
            metrics::counter!(m::AUTH_FAILURES, "reason" => error.label()).increment(1);
            // The queue is new: there is room.
            let _ = outlet.try_send(Outbound::close(error.close_code(), error.reason()));
            let_close(outlet).await;
            linger(&mut reader(read, &early, state.config.max_frame, deflate)).await;
            return None;
        }
    };

    let conn_id = NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed);
    let session_id: Arc<str> = uuid::Uuid::now_v7().simple().to_string().into();
    let user: Arc<str> = claims.sub.as_str().into();
    let ttl = state.config.presence_ttl_ms;
    let limit = state.config.max_connections_per_user;
    let refused = match state
        .broker
        .connection_open(&user, &session_id, limit, ttl, claims.issued_ms())
        .await
    {
        Ok(ConnectionOpen::Opened) => None,
        Ok(ConnectionOpen::OverLimit) => Some((4029, "too many connections")),
        Ok(ConnectionOpen::Revoked) => {
            metrics::counter!(m::AUTH_FAILURES, "reason" => AuthError::Revoked.label())
                .increment(1);
            Some((4001, AuthError::Revoked.reason()))
        }
        // The limit protects; it is not worth refusing service while Redis is away (a
        // revoked token is refused at its first join, which needs Redis).
        Err(e) => {
            warn!(error = %e, "connection limit not checked: Redis unavailable");
            None
        }
    };
    if let Some((code, reason)) = refused {
        let _ = outlet.try_send(Outbound::close(code, reason));
        let_close(outlet).await;
        linger(&mut reader(read, &early, state.config.max_frame, deflate)).await;
        return None;
    }
    state
        .connections
        .register(session_id.clone(), user.clone(), outlet.clone());
    // A shutdown that began before this registration did not see it.
    if state.shutdown.is_cancelled() {
        outlet.shut_down();
    }
    let welcome = ServerFrame::Welcome {
        user: claims.sub.clone(),
        session: session_id.to_string(),
        heartbeat_ms: state.config.heartbeat_ms,
        max_frame: state.config.max_frame,
    };
    let _ = outlet.try_send(Outbound::own(welcome));
    metrics::counter!(m::CONNECTS).increment(1);
    metrics::gauge!(m::CONNECTIONS).increment(1.0);

    let who = Arc::new(Who {
        session: session_id,
        user,
        name: claims.name.clone(),
    });
    let mut session = Session {
        state,
        claims: Box::new(claims),
        who,
        conn_id,
        encoding,
        outlet,
        joined: Teams::default(),
        typing: Teams::default(),
        expires_at: Instant::now(),
        violations: Vec::new(),
        close_with: None,
        receipts: None,
    };
    session.expires_at = session.token_deadline(session.claims.exp);
    let ws = reader(read, &early, session.state.config.max_frame, deflate);
    drop(early);
    Some((session, ws))
}

/// The frame reader of a connection, starting with the bytes hyper read past the handshake.
fn reader(read: ReadHalf, early: &[u8], max_frame: usize, deflate: bool) -> Reader {
    let (mut ws, _) = fastwebsockets::after_handshake_split(read, tokio::io::sink(), Role::Server);
    ws.push_buffered(early);
    // (A compressed message's frames are bounded as they come; inflated, the message is
    // bounded again in `on_frame`.)
    ws.set_max_message_size(max_frame + 1);
    ws.set_deflate(deflate);
    // Pings are answered in `on_frame`, so that read_frame returns them and they count as
    // traffic for the heartbeat.
    ws.set_auto_pong(false);
    ws
}

/// Gives the close a moment to be written (a peer that never reads cannot hold it).
pub(super) async fn let_close(outlet: Outlet) {
    if tokio::time::timeout(CLOSE_GRACE, outlet.ended())
        .await
        .is_err()
    {
        outlet.abandon();
    }
}
