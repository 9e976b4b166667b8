//! Reading a stream of `tag + length + body` frames from a buffer that fills
//! over time.
//!
//! A proxy forwards almost every frame untouched. [`Scanner`] therefore hands
//! out whole frames only for the few tags the caller asks for, and for any
//! other frame reports its tag and lets its body pass in pieces as the bytes
//! arrive, so a frame of any size moves through a small buffer.

use thiserror::Error;

use crate::HEADER_LEN;

/// A malformed frame header.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    /// The length field is below 4, the size of the length itself.
    #[error("invalid message length {len} for message type {tag:?}")]
    BadLength { tag: char, len: u32 },
    /// The length field is above the configured limit.
    #[error("message type {tag:?} of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { tag: char, len: u64, max: u64 },
}

/// What [`Scanner::next`] found at the current position.
#[derive(Debug, PartialEq, Eq)]
pub enum Scanned<'a> {
    /// A whole frame with a tag the caller asked to see; `body` excludes the header.
    Frame { tag: u8, body: &'a [u8] },
    /// A frame the caller does not inspect began here; its body passes through.
    Start { tag: u8 },
    /// More of the body of the last `Start` frame.
    Body,
}

/// Whether a connection between requests has buffered enough to begin the
/// next one (see [`Scanner::next_request`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextRequest {
    /// Read more: at least `want` bytes must be buffered (a whole header,
    /// or the whole of a frame the caller reads whole).
    NeedMore { want: usize },
    /// The frame with this tag can be forwarded now: [`Scanner::next`] with
    /// the same `whole` answer consumes at least one byte of it.
    Ready { tag: u8 },
}

/// Walks frames across reads. Cheap to keep per connection direction: two words.
#[derive(Debug, Clone)]
pub struct Scanner {
    /// Bytes of the current pass-through frame not yet seen.
    skip: usize,
    /// Largest accepted frame, header included.
    max_len: usize,
}

impl Scanner {
    /// A scanner that rejects frames longer than `max_len` bytes (header included).
    pub fn new(max_len: usize) -> Self {
        Scanner { skip: 0, max_len }
    }

    /// True when the scanner stands at a frame boundary.
    pub fn at_boundary(&self) -> bool {
        self.skip == 0
    }

    /// Looks at `buf[pos..]` and returns what starts there and the position
    /// after it, or `Ok(None)` when more bytes are needed. `whole(tag)`
    /// selects the frames returned as [`Scanned::Frame`]; the caller must keep
    /// reading until such a frame is complete (its size is bounded by
    /// `max_len`).
    #[inline]
    pub fn next<'a>(
        &mut self,
        buf: &'a [u8],
        pos: usize,
        whole: impl Fn(u8) -> bool,
    ) -> Result<Option<(Scanned<'a>, usize)>, FrameError> {
        let avail = buf.len().saturating_sub(pos);
        if self.skip > 0 {
            if avail == 0 {
                return Ok(None);
            }
            let n = self.skip.min(avail);
            self.skip -= n;
            return Ok(Some((Scanned::Body, pos + n)));
        }
        let Some(total) = self.frame_len(&buf[pos..])? else {
            return Ok(None);
        };
        let tag = buf[pos];
        if whole(tag) {
            if avail < total {
                return Ok(None);
            }
            let body = &buf[pos + HEADER_LEN..pos + total];
            return Ok(Some((Scanned::Frame { tag, body }, pos + total)));
        }
        let n = total.min(avail);
        self.skip = total - n;
        Ok(Some((Scanned::Start { tag }, pos + n)))
    }

    /// Whether the request that starts at `buf[0]` can begin. `whole` says,
    /// from the frame's bytes as far as they arrived, whether the caller
    /// reads that frame whole; such a frame is ready only once complete.
    ///
    /// A proxy that takes a server connection only for a ready request, and
    /// reads the socket otherwise, can never hold a connection without
    /// moving a byte: a frame it must see whole is never half-forwarded.
    #[inline]
    pub fn next_request(
        &self,
        buf: &[u8],
        whole: impl FnOnce(&[u8]) -> bool,
    ) -> Result<NextRequest, FrameError> {
        debug_assert!(self.at_boundary(), "next_request inside a frame");
        let Some(total) = self.frame_len(buf)? else {
            return Ok(NextRequest::NeedMore { want: HEADER_LEN });
        };
        if buf.len() < total && whole(buf) {
            return Ok(NextRequest::NeedMore { want: total });
        }
        Ok(NextRequest::Ready { tag: buf[0] })
    }

    /// The total length (header included) of the frame starting at `buf[0]`,
    /// once its header is complete.
    #[inline]
    pub fn frame_len(&self, buf: &[u8]) -> Result<Option<usize>, FrameError> {
        frame_len(buf, self.max_len)
    }
}

/// The total length (header included) of the frame at the start of `buf`, or
/// `Ok(None)` while the header is incomplete.
#[inline]
pub fn frame_len(buf: &[u8], max_len: usize) -> Result<Option<usize>, FrameError> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let tag = header[0];
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    if len < 4 {
        return Err(FrameError::BadLength {
            tag: char::from(tag),
            len,
        });
    }
    // u32 always fits in usize on the 32- and 64-bit targets pgwake builds for.
    let total = usize::try_from(len).map_or(usize::MAX, |l| l.saturating_add(1));
    if total > max_len {
        return Err(FrameError::TooLarge {
            tag: char::from(tag),
            len: u64::from(len) + 1,
            max: u64::try_from(max_len).unwrap_or(u64::MAX),
        });
    }
    Ok(Some(total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&u32::try_from(body.len() + 4).unwrap().to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    /// Feeds `stream` in the given chunk sizes and records what the scanner reports.
    fn scan_chunked(stream: &[u8], chunks: &[usize], whole: u8) -> Vec<(u8, Option<Vec<u8>>)> {
        let mut scanner = Scanner::new(1 << 20);
        let mut buf: Vec<u8> = Vec::new();
        let mut out = Vec::new();
        let mut fed = 0;
        let mut chunk_iter = chunks.iter().cycle();
        while fed < stream.len() {
            let n = (*chunk_iter.next().unwrap()).max(1).min(stream.len() - fed);
            buf.extend_from_slice(&stream[fed..fed + n]);
            fed += n;
            let mut pos = 0;
            while let Some((item, next)) = scanner.next(&buf, pos, |t| t == whole).unwrap() {
                match item {
                    Scanned::Frame { tag, body } => out.push((tag, Some(body.to_vec()))),
                    Scanned::Start { tag } => out.push((tag, None)),
                    Scanned::Body => {}
                }
                pos = next;
            }
            buf.drain(..pos);
        }
        assert!(scanner.at_boundary());
        assert!(buf.is_empty());
        out
    }

    #[test]
    fn whole_and_passing_frames() {
        let mut stream = frame(b'D', &[7; 100]);
        stream.extend(frame(b'Z', b"I"));
        let got = scan_chunked(&stream, &[3], b'Z');
        assert_eq!(got, vec![(b'D', None), (b'Z', Some(b"I".to_vec()))]);
    }

    #[test]
    fn rejects_short_and_huge_lengths() {
        let scanner = Scanner::new(1000);
        assert!(matches!(
            scanner.frame_len(&[b'Q', 0, 0, 0, 3]),
            Err(FrameError::BadLength { .. })
        ));
        assert!(matches!(
            scanner.frame_len(&[b'Q', 0x40, 0, 0, 0]),
            Err(FrameError::TooLarge { .. })
        ));
        assert_eq!(scanner.frame_len(&[b'Q', 0, 0]), Ok(None));
    }

    proptest! {
        #[test]
        fn any_chunking_sees_every_frame(
            frames in proptest::collection::vec((prop::sample::select(vec![b'D', b'Z', b'C', b'S']), proptest::collection::vec(any::<u8>(), 0..300)), 0..20),
            chunks in proptest::collection::vec(1usize..64, 1..8),
        ) {
            let mut stream = Vec::new();
            for (tag, body) in &frames {
                stream.extend(frame(*tag, body));
            }
            let got = scan_chunked(&stream, &chunks, b'S');
            let want: Vec<_> = frames
                .iter()
                .map(|(t, b)| (*t, (*t == b'S').then(|| b.clone())))
                .collect();
            prop_assert_eq!(got, want);
        }
    }
}
