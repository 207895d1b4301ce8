//! `Transfer-Encoding: chunked` bodies: a resumable validating scan, then one copy.

use super::HttpError;

/// Most trailer fields accepted after the last chunk.
const MAX_TRAILERS: usize = 16;

/// How far a chunked body got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Scan {
    /// Valid so far; resume at `pos` with `body` de-chunked bytes counted.
    Incomplete { pos: usize, body: usize },
    /// The body ends at `end` (after trailers) and holds `body` bytes.
    Complete { end: usize, body: usize },
}

/// Validate the chunked body in `buf` from `pos` (the start of a chunk-size line),
/// enforcing `max_body` as sizes are read, before any data is copied.
pub(super) fn scan(
    buf: &[u8],
    mut pos: usize,
    mut body: usize,
    max_body: usize,
) -> Result<Scan, HttpError> {
    loop {
        let line = buf.get(pos..).unwrap_or_default();
        let (size_len, size) = match httparse::parse_chunk_size(line) {
            Ok(httparse::Status::Complete(v)) => v,
            Ok(httparse::Status::Partial) => return Ok(Scan::Incomplete { pos, body }),
            Err(_) => return Err(HttpError::InvalidChunk),
        };
        if size > (max_body - body) as u64 {
            return Err(HttpError::BodyTooLarge);
        }
        // Bounded by max_body, fits in usize.
        let size = size as usize;
        let data = pos + size_len;
        if size == 0 {
            let mut trailers = [httparse::EMPTY_HEADER; MAX_TRAILERS];
            let rest = buf.get(data..).unwrap_or_default();
            return match httparse::parse_headers(rest, &mut trailers) {
                Ok(httparse::Status::Complete((n, _))) => Ok(Scan::Complete {
                    end: data + n,
                    body,
                }),
                Ok(httparse::Status::Partial) => Ok(Scan::Incomplete { pos, body }),
                Err(_) => Err(HttpError::InvalidChunk),
            };
        }
        let end = data + size;
        match buf.get(end..end + 2) {
            Some(b"\r\n") => {}
            Some(_) => return Err(HttpError::InvalidChunk),
            None => {
                // A wrong byte right after the data is an error even before the LF arrives.
                if buf.get(end).is_some_and(|&b| b != b'\r') {
                    return Err(HttpError::InvalidChunk);
                }
                return Ok(Scan::Incomplete { pos, body });
            }
        }
        body += size;
        pos = end + 2;
    }
}

/// Copy the data of a body already validated by [`scan`] (ending at `end`).
pub(super) fn collect(buf: &[u8], end: usize, body: usize) -> Result<Vec<u8>, HttpError> {
    let mut out = Vec::with_capacity(body);
    let mut pos = 0;
    while pos < end {
        let line = buf.get(pos..end).unwrap_or_default();
        let (size_len, size) = match httparse::parse_chunk_size(line) {
            Ok(httparse::Status::Complete(v)) => v,
            _ => return Err(HttpError::InvalidChunk),
        };
        if size == 0 {
            break;
        }
        let data = pos + size_len;
        let size = usize::try_from(size).map_err(|_| HttpError::InvalidChunk)?;
        let chunk = buf.get(data..data + size).ok_or(HttpError::InvalidChunk)?;
        out.extend_from_slice(chunk);
        pos = data + size + 2;
    }
    Ok(out)
}
