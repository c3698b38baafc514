//! gzip for HTTP answers the client accepts it for (`Accept-Encoding`): whole answers of at
//! least 1 KiB (history pages, the server API, metrics), and SSE streams, each chunk
//! flushed so an event is never held back.

use std::io::Write;

use bytes::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;
use hyper::header::{
    ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_TYPE, HeaderMap, HeaderValue, VARY,
};
use hyper::{Request, Response};

use super::Body;

/// Smaller answers cost more to compress than they save on the wire.
pub const THRESHOLD: usize = 1_024;

/// Whether the request accepts gzip (`gzip` or `*` listed without `q=0`).
pub fn accepts_gzip<B>(req: &Request<B>) -> bool {
    req.headers()
        .get_all(ACCEPT_ENCODING)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|item| {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or_default().trim();
            let refused = parts.any(|param| {
                let param = param.trim().replace(' ', "");
                param == "q=0" || param == "q=0.0" || param == "q=0.00" || param == "q=0.000"
            });
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !refused
        })
}

/// Whether the answer is text worth compressing.
fn compressible(headers: &HeaderMap) -> bool {
    if headers.contains_key(CONTENT_ENCODING) {
        return false;
    }
    headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|kind| {
            kind.starts_with("application/json")
                || kind.starts_with("text/")
                || kind.starts_with("application/javascript")
        })
}

/// The answer gzipped when the client accepts it and it is large enough; as it was
/// otherwise.
pub fn whole(response: Response<Body>, accepts: bool) -> Response<Body> {
    use http_body_util::BodyExt;
    let size = hyper::body::Body::size_hint(response.body())
        .exact()
        .unwrap_or(0) as usize;
    if !accepts || size < THRESHOLD || !compressible(response.headers()) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    // A `Full` body is ready at once.
    let Some(Ok(frame)) = futures_util::FutureExt::now_or_never(body.collect()) else {
        unreachable!("a whole body is collected at once");
    };
    let plain = frame.to_bytes();
    let mut encoder = GzEncoder::new(Vec::with_capacity(plain.len() / 4), Compression::fast());
    let gzipped = encoder
        .write_all(&plain)
        .and_then(|()| encoder.finish())
        .expect("gzip into memory does not fail");
    parts
        .headers
        .insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    parts
        .headers
        .append(VARY, HeaderValue::from_static("accept-encoding"));
    parts.headers.remove(hyper::header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(gzipped))
}

/// A stream's gzip state: each chunk is compressed and flushed, so what it carries can be
/// decoded as soon as it arrives.
pub struct StreamGzip(GzEncoder<Vec<u8>>);

impl Default for StreamGzip {
    fn default() -> Self {
        StreamGzip(GzEncoder::new(Vec::new(), Compression::fast()))
    }
}

impl StreamGzip {
    pub fn chunk(&mut self, plain: &[u8]) -> Bytes {
        // Writing to and flushing into memory does not fail.
        let _ = self.0.write_all(plain);
        let _ = self.0.flush();
        Bytes::from(std::mem::take(self.0.get_mut()))
    }

    /// The stream's last chunk, with the gzip trailer.
    pub fn last(&mut self, plain: &[u8]) -> Bytes {
        let _ = self.0.write_all(plain);
        let _ = self.0.try_finish();
        Bytes::from(std::mem::take(self.0.get_mut()))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    /// Each chunk of a stream decodes as soon as it arrives; the last one ends the gzip
    /// stream cleanly.
    #[test]
    fn stream_chunks_decode_as_they_come() {
        let mut gzip = StreamGzip::default();
        let mut wire = gzip.chunk(b"event: a\ndata: {}\n\n").to_vec();
        let mut decoder = flate2::write::GzDecoder::new(Vec::new());
        decoder.write_all(&wire).unwrap();
        decoder.flush().unwrap();
        assert_eq!(decoder.get_ref().as_slice(), b"event: a\ndata: {}\n\n");
        wire.extend_from_slice(&gzip.last(b": bye\n\n"));
        let mut whole = String::new();
        flate2::read::GzDecoder::new(&wire[..])
            .read_to_string(&mut whole)
            .unwrap();
        assert_eq!(whole, "event: a\ndata: {}\n\n: bye\n\n");
    }

    #[test]
    fn accept_encoding_is_read_with_its_weights() {
        let accepts = |value: &str| {
            let req = Request::builder()
                .header(ACCEPT_ENCODING, value)
                .body(())
                .unwrap();
            accepts_gzip(&req)
        };
        assert!(accepts("gzip"));
        assert!(accepts("br, GZIP;q=0.5"));
        assert!(accepts("*"));
        assert!(!accepts("gzip;q=0"));
        assert!(!accepts("gzip; q=0.000"));
        assert!(!accepts("br, deflate"));
        assert!(!accepts("identity"));
    }
}
