//! Errors a request can meet: the codes of `error` / `room:error` and the frame body that
//! carries them.

use serde::Serialize;

use super::server::ServerFrame;

/// Error codes of `error` / `room:error`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    UnknownType,
    Forbidden,
    NotJoined,
    TooManyRooms,
    RateLimited,
    TooLarge,
    QuotaExceeded,
    NotFound,
    Unavailable,
}

/// A request that could not be carried out: answered with `error` or `room:error`.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestError {
    pub code: ErrorCode,
    pub message: String,
    pub rid: Option<String>,
    pub team: Option<String>,
    /// `room:join`/`room:leave` are answered with `room:error`, everything else with `error`.
    pub room: bool,
    /// With `rate_limited`: when the request would be accepted.
    pub retry_after_ms: Option<u64>,
}

/// The longest error `message`, in bytes: a message may quote what the client sent (an
/// unknown `type`, a field that did not parse), and no reply echoes unbounded input.
pub const MAX_MESSAGE: usize = 200;

/// The append script's refusals, each the error code of the same name.
impl From<teamchat_shared::append::Refusal> for ErrorCode {
    fn from(refusal: teamchat_shared::append::Refusal) -> Self {
        use teamchat_shared::append::Refusal;
        match refusal {
            Refusal::NotFound => Self::NotFound,
            Refusal::Forbidden => Self::Forbidden,
            Refusal::QuotaExceeded => Self::QuotaExceeded,
            Refusal::TooLarge => Self::TooLarge,
            Refusal::BadRequest => Self::BadRequest,
        }
    }
}

impl RequestError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.len() > MAX_MESSAGE {
            let mut end = MAX_MESSAGE - '…'.len_utf8();
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push('…');
        }
        Self {
            code,
            message,
            rid: None,
            team: None,
            room: false,
            retry_after_ms: None,
        }
    }

    /// The error concerns this team.
    pub fn in_team(self, team: &str) -> Self {
        Self {
            team: Some(team.to_owned()),
            ..self
        }
    }

    /// The error answers `room:join` / `room:leave`: it goes out as `room:error`.
    pub fn in_room(self) -> Self {
        Self { room: true, ..self }
    }

    pub fn into_frame(self) -> ServerFrame {
        let body = ErrorBody {
            code: self.code,
            message: self.message,
            rid: self.rid,
            team: self.team,
            retry_after_ms: self.retry_after_ms,
        };
        if self.room {
            ServerFrame::RoomError(body)
        } else {
            ServerFrame::Error(body)
        }
    }
}

/// The body of `error` / `room:error`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}
