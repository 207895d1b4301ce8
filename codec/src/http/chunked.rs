//! `Transfer-Encoding: chunked` bodies: a resumable validating scan, then one copy.

use super::HttpError;

/// Most trailer fields accepted after the last chunk.
const MAX_TRAILERS: usize = 16;

/// Longest chunk-size line (size, extensions, CRLF). Extensions are ignored, so this is
/// generous; without it a line that never ends would be buffered (and rescanned on
/// every read) without limit.
pub(super) const MAX_CHUNK_LINE: usize = 4096;

/// At most `limit + 1` bytes of `bytes`.
fn bounded(bytes: &[u8], limit: usize) -> &[u8] {
    &bytes[..bytes.len().min(limit.saturating_add(1))]
}

/// How far a chunked body got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Scan {
    /// Valid so far; resume at `pos` with `body` de-chunked bytes and `ext` bytes of
    /// chunk extensions counted.
    Incomplete { pos: usize, body: usize, ext: usize },
    /// The body ends at `end` (after trailers) and holds `body` bytes.
    Complete { end: usize, body: usize },
}

/// Validate the chunked body in `buf` from `pos` (the start of a chunk-size line),
/// enforcing `max_body` as sizes are read, before any data is copied. Framing beyond
/// the data is bounded too: each chunk-size line by [`MAX_CHUNK_LINE`], all their
/// extensions together (`ext` counted so far) and the trailers each by `max_head`.
pub(super) fn scan(
    buf: &[u8],
    mut pos: usize,
    mut body: usize,
    mut ext: usize,
    limits: super::Limits,
) -> Result<Scan, HttpError> {
    loop {
        // Parsers look at no more than the limit allows (plus one byte, to tell "too
        // long" from "not yet"): the verdict then depends on those bytes alone, never
        // on how much more a read happened to bring.
        let line = bounded(buf.get(pos..).unwrap_or_default(), MAX_CHUNK_LINE);
        let (size_len, size) = match httparse::parse_chunk_size(line) {
            Ok(httparse::Status::Complete(v)) => v,
            Ok(httparse::Status::Partial) if line.len() > MAX_CHUNK_LINE => {
                return Err(HttpError::ChunkLineTooLong)
            }
            Ok(httparse::Status::Partial) => return Ok(Scan::Incomplete { pos, body, ext }),
            Err(_) => return Err(HttpError::InvalidChunk),
        };
        if size_len > MAX_CHUNK_LINE {
            return Err(HttpError::ChunkLineTooLong);
        }
        // What follows the hex digits before the CRLF: whitespace and extensions.
        let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        ext += size_len.saturating_sub(digits + 2);
        if ext > limits.max_head {
            return Err(HttpError::ChunkLineTooLong);
        }
        if size > (limits.max_body - body) as u64 {
            return Err(HttpError::BodyTooLarge);
        }
        // Bounded by max_body, fits in usize.
        let size = size as usize;
        let data = pos + size_len;
        if size == 0 {
            let mut trailers = [httparse::EMPTY_HEADER; MAX_TRAILERS];
            let rest = bounded(buf.get(data..).unwrap_or_default(), limits.max_head);
            return match httparse::parse_headers(rest, &mut trailers) {
                Ok(httparse::Status::Complete((n, _))) if n > limits.max_head => {
                    Err(HttpError::TrailersTooLarge)
                }
                Ok(httparse::Status::Complete((n, _))) => Ok(Scan::Complete {
                    end: data + n,
                    body,
                }),
                Ok(httparse::Status::Partial) if rest.len() > limits.max_head => {
                    Err(HttpError::TrailersTooLarge)
                }
                // Resumes at the last chunk's line: its extensions are counted again.
                Ok(httparse::Status::Partial) => Ok(Scan::Incomplete {
                    pos,
                    body,
                    ext: ext - size_len.saturating_sub(digits + 2),
                }),
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
                // Resumes at this chunk's line: its extensions are counted again.
                let ext = ext - size_len.saturating_sub(digits + 2);
                return Ok(Scan::Incomplete { pos, body, ext });
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
