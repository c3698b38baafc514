//! WebSocket permessage-deflate (RFC 7692), when `WS_DEFLATE` is on: the negotiation at
//! the upgrade, and messages compressed and inflated whole. No context takeover either
//! way: every message starts from an empty window, so a connection keeps no compression
//! state (an idle one costs nothing more), a fan-out frame is compressed once for all its
//! recipients, and one compressor and one inflater per runtime thread serve every
//! connection (≈ 312 KiB and 43 KiB, reset per message).

use std::cell::RefCell;

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// Messages under this many bytes go out as they are (as HTTP answers: `http::compress`).
pub const THRESHOLD: usize = 1_024;

/// The answer to an accepted offer: both sides without context takeover.
const ACCEPTED: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
/// The same, for an offer that named `server_max_window_bits=15` (it must be echoed).
const ACCEPTED_15: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=15";

/// The empty stored block a sync flush ends with: taken off by the sender, put back by the
/// receiver (RFC 7692 §7.2.1, §7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

thread_local! {
    static DEFLATER: RefCell<Compress> = RefCell::new(Compress::new(Compression::fast(), false));
    static INFLATER: RefCell<Decompress> = RefCell::new(Decompress::new(false));
}

/// The `Sec-WebSocket-Extensions` answer to the client's offers (each header value may
/// hold several, in order of preference): the first acceptable permessage-deflate offer,
/// or `None` (the connection then goes uncompressed).
pub fn negotiate<'a>(offers: impl IntoIterator<Item = &'a str>) -> Option<&'static str> {
    offers
        .into_iter()
        .flat_map(|value| split_unquoted(value, ','))
        .find_map(accept)
}

/// One offer: accepted unless it has a parameter this server cannot honour, an unknown
/// one, or one twice (RFC 7692 §5, §7.1).
fn accept(offer: &str) -> Option<&'static str> {
    let mut items = split_unquoted(offer, ';');
    if !items
        .next()?
        .trim()
        .eq_ignore_ascii_case("permessage-deflate")
    {
        return None;
    }
    let (mut seen, mut server_bits) = (0u8, false);
    for item in items {
        let (name, value) = match item.split_once('=') {
            Some((name, value)) => (name.trim(), Some(unquote(value.trim())?)),
            None => (item.trim(), None),
        };
        let bit = match (name.to_ascii_lowercase().as_str(), value) {
            ("server_no_context_takeover", None) => 1,
            ("client_no_context_takeover", None) => 2,
            // The client may use any window: the inflater takes the largest.
            ("client_max_window_bits", None) => 4,
            ("client_max_window_bits", Some(bits)) if window_bits(bits) => 4,
            // The compressor's window is 32 KiB: only 15 can be honoured.
            ("server_max_window_bits", Some("15")) => {
                server_bits = true;
                8
            }
            _ => return None,
        };
        if seen & bit != 0 {
            return None;
        }
        seen |= bit;
    }
    Some(if server_bits { ACCEPTED_15 } else { ACCEPTED })
}

/// 8 to 15, decimal, without a leading zero (RFC 7692 §7.1.2).
fn window_bits(value: &str) -> bool {
    matches!(value.as_bytes(), [b'8'..=b'9'] | [b'1', b'0'..=b'5'])
}

/// A token, or a quoted string holding a token (RFC 6455 §9.1).
fn unquote(value: &str) -> Option<&str> {
    let value = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value);
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    (!value.is_empty() && value.bytes().all(token)).then_some(value)
}

/// Splits at `separator` outside quoted strings.
fn split_unquoted(value: &str, separator: char) -> impl Iterator<Item = &str> {
    let (mut quoted, mut escaped) = (false, false);
    value.split(move |c: char| {
        if escaped {
            escaped = false;
            return false;
        }
        match c {
            '\\' if quoted => {
                escaped = true;
                false
            }
            '"' => {
                quoted = !quoted;
                false
            }
            c => c == separator && !quoted,
        }
    })
}

/// A message's payload compressed from an empty window, without the sync flush's tail;
/// `None` under `THRESHOLD` or when it would not be smaller (it then goes as it is: the
/// RSV1 bit is per message).
pub fn deflate(payload: &[u8]) -> Option<Bytes> {
    if payload.len() < THRESHOLD {
        return None;
    }
    DEFLATER.with_borrow_mut(|compressor| {
        compressor.reset();
        let mut out = Vec::with_capacity(payload.len() / 2 + 64);
        loop {
            let taken = compressor.total_in() as usize;
            compressor
                .compress_vec(&payload[taken..], &mut out, FlushCompress::Sync)
                .ok()?;
            // All taken and room left over: the flush is complete.
            if compressor.total_in() as usize == payload.len() && out.len() < out.capacity() {
                break;
            }
            if out.len() >= payload.len() {
                return None;
            }
            out.reserve(out.capacity());
        }
        out.truncate(out.len().checked_sub(TAIL.len())?);
        (out.len() < payload.len()).then(|| Bytes::from(out))
    })
}

/// Why a compressed message was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum InflateError {
    /// It inflates past the limit (1009): a zip bomb costs `limit` bytes at most.
    TooLarge,
    /// Not a deflate stream (1007).
    Corrupt,
}

/// A compressed message inflated (from an empty window: the client was told not to take
/// context over), never past `limit` bytes.
pub fn inflate(compressed: &[u8], limit: usize) -> Result<Vec<u8>, InflateError> {
    INFLATER.with_borrow_mut(|inflater| {
        inflater.reset(false);
        // (Not `clamp`: with a limit under 255 its bounds would cross.)
        let start = compressed
            .len()
            .saturating_mul(4)
            .max(256)
            .min(limit.saturating_add(1));
        let mut out = Vec::with_capacity(start);
        for mut input in [compressed, &TAIL[..]] {
            loop {
                let (read, written) = (inflater.total_in(), inflater.total_out());
                let status = inflater
                    .decompress_vec(input, &mut out, FlushDecompress::None)
                    .map_err(|_| InflateError::Corrupt)?;
                input = &input[(inflater.total_in() - read) as usize..];
                if out.len() > limit {
                    return Err(InflateError::TooLarge);
                }
                // A final block ends the message: what follows it is not read.
                if status == Status::StreamEnd {
                    return Ok(out);
                }
                if out.len() == out.capacity() {
                    // Grown as needed, never past one byte over the limit.
                    out.reserve_exact(out.len().min(limit + 1 - out.len()));
                } else if input.is_empty() {
                    break;
                } else if inflater.total_in() == read && inflater.total_out() == written {
                    return Err(InflateError::Corrupt);
                }
            }
        }
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_are_accepted_or_declined_by_their_parameters() {
        let answer = |offers: &[&str]| negotiate(offers.iter().copied());
        for offer in [
            "permessage-deflate",
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate; client_max_window_bits=10",
            "permessage-deflate; client_max_window_bits=\"12\"",
            "Permessage-Deflate; server_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; foo, permessage-deflate",
            "x-webkit-deflate-frame, permessage-deflate",
        ] {
            assert_eq!(answer(&[offer]), Some(ACCEPTED), "{offer}");
        }
        assert_eq!(
            answer(&["permessage-deflate; bar", "permessage-deflate"]),
            Some(ACCEPTED)
        );
        assert_eq!(
            answer(&["permessage-deflate; server_max_window_bits=15"]),
            Some(ACCEPTED_15)
        );
        for offer in [
            "",
            "x-webkit-deflate-frame",
            "permessage-deflate; foo",
            "permessage-deflate; server_max_window_bits=10",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; client_max_window_bits=16",
            "permessage-deflate; client_max_window_bits=08",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "x; p=\"a, permessage-deflate\"",
        ] {
            assert_eq!(answer(&[offer]), None, "{offer}");
        }
    }

    fn prose(len: usize) -> Vec<u8> {
        b"the quick brown fox jumps over the lazy dog. "
            .iter()
            .copied()
            .cycle()
            .take(len)
            .collect()
    }

    #[test]
    fn messages_round_trip_each_from_an_empty_window() {
        assert_eq!(deflate(&prose(THRESHOLD - 1)), None);
        // Several in a row, each inflated alone: nothing is carried from one to the next.
        for len in [THRESHOLD, 4_096, 100_000] {
            let message = prose(len);
            let compressed = deflate(&message).expect("prose compresses");
            assert!(compressed.len() < len / 4, "{len} → {}", compressed.len());
            assert_eq!(inflate(&compressed, len).unwrap(), message);
        }
        let noise: Vec<u8> = (0..4_096).map(|_| rand::random::<u8>()).collect();
        assert_eq!(deflate(&noise), None, "incompressible: sent as it is");
    }

    #[test]
    fn inflating_stops_at_the_limit() {
        let message = prose(10_000);
        let compressed = deflate(&message).unwrap();
        assert_eq!(inflate(&compressed, 10_000).unwrap(), message);
        assert_eq!(inflate(&compressed, 9_999), Err(InflateError::TooLarge));
        // 16 MiB of zeros in ≈ 16 KiB: refused after 64 KiB, not inflated whole.
        let bomb = vec![0u8; 16 << 20];
        let mut compressor = Compress::new(Compression::best(), false);
        let mut compressed = Vec::with_capacity(1 << 20);
        compressor
            .compress_vec(&bomb, &mut compressed, FlushCompress::Sync)
            .unwrap();
        assert!(compressed.len() < 64 << 10);
        assert_eq!(inflate(&compressed, 64 << 10), Err(InflateError::TooLarge));
        assert_eq!(inflate(&[0xff; 32], 1 << 20), Err(InflateError::Corrupt));
        assert_eq!(inflate(&[], 1 << 20), Ok(Vec::new()));
    }

    #[test]
    fn a_final_block_ends_the_message() {
        let message = prose(2_000);
        let mut compressor = Compress::new(Compression::default(), false);
        let mut compressed = Vec::with_capacity(4_096);
        compressor
            .compress_vec(&message, &mut compressed, FlushCompress::Finish)
            .unwrap();
        assert_eq!(inflate(&compressed, 1 << 20).unwrap(), message);
    }
}
