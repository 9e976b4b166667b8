//! A model of how a pgwake session frames a client's bytes, shared by the
//! property test and the fuzz target: bytes arrive in reads cut anywhere;
//! between requests the session waits (reading) until
//! [`Scanner::next_request`] says the next one can begin, then takes a
//! server connection and forwards with [`Scanner::next`]; at any frame
//! boundary it may give the connection back.
//!
//! The checks are the session's promises: every frame is forwarded exactly
//! once and in order, byte for byte; a request that was called ready always
//! moves at least one byte (a session never attaches and releases without
//! reading, the loop that once froze pgwake); memory stays within one frame.

use pgwake_protocol::{NextRequest, Scanned, Scanner, HEADER_LEN};

/// Which client frames the session reads whole, decided from the frame's
/// bytes as far as they arrived, like the proxy's own rule in transaction
/// mode: Parse, Bind, Describe and Close always; a Query while its first
/// byte is unknown or could start `PREPARE`, `EXECUTE` or `DEALLOCATE`.
pub fn read_whole_at(frame: &[u8]) -> bool {
    match frame.first() {
        Some(b'Q') => match frame.get(HEADER_LEN) {
            None => true,
            Some(b) => matches!(b | 0x20, b'p' | b'e' | b'd'),
        },
        Some(b'P' | b'B' | b'D' | b'C') => true,
        _ => false,
    }
}

/// What went wrong, if anything.
#[derive(Debug, PartialEq, Eq)]
pub enum Broken {
    /// A request called ready moved no byte.
    Stalled { at: usize },
    /// The stream ended and frames were lost, duplicated, reordered or changed.
    Mismatch,
    /// More bytes buffered than one frame needs.
    Overbuffered { buffered: usize },
    /// A malformed header (the input was built well-formed).
    Malformed,
}

/// Feeds `stream` (well-formed frames) to the session model, cut after each
/// offset in `cuts` (sorted or not; out-of-range ones ignored); `release`
/// says, turn by turn, whether the session gives its connection back at a
/// boundary. Returns the frames forwarded, each as its full bytes.
pub fn forward(
    stream: &[u8],
    cuts: &[usize],
    release: &[bool],
    max_len: usize,
) -> Result<Vec<Vec<u8>>, Broken> {
    forward_with(stream, cuts, release, max_len, read_whole_at)
}

/// [`forward`], with `ready_whole` in place of the relay's rule when the
/// session decides whether a request can begin (to show what a session
/// whose two rules differ would do).
pub fn forward_with(
    stream: &[u8],
    cuts: &[usize],
    release: &[bool],
    max_len: usize,
    ready_whole: fn(&[u8]) -> bool,
) -> Result<Vec<Vec<u8>>, Broken> {
    let mut ends: Vec<usize> = cuts
        .iter()
        .copied()
        .filter(|&c| c > 0 && c < stream.len())
        .collect();
    ends.push(stream.len());
    ends.sort_unstable();
    ends.dedup();
    let mut reads = ends.into_iter();

    let mut scanner = Scanner::new(max_len);
    let mut buf: Vec<u8> = Vec::new();
    let mut fed = 0;
    let mut frames: Vec<Vec<u8>> = Vec::new();
    let mut current: Option<Vec<u8>> = None;
    let mut attached = false;
    // Bytes moved since the connection was taken.
    let mut moved = false;
    let mut turns = release.iter().copied().cycle();
    // Each turn reads or moves a byte: more turns than that is a spin.
    let mut budget = 4 * (stream.len() + 16);
    let mut read = |buf: &mut Vec<u8>, fed: &mut usize| -> bool {
        match reads.next() {
            Some(end) => {
                buf.extend_from_slice(&stream[*fed..end]);
                *fed = end;
                true
            }
            None => false,
        }
    };
    loop {
        budget = budget.checked_sub(1).ok_or(Broken::Stalled { at: fed })?;
        if !attached {
            match scanner.next_request(&buf, ready_whole) {
                Err(_) => return Err(Broken::Malformed),
                Ok(NextRequest::NeedMore { want }) => {
                    if want <= buf.len() {
                        return Err(Broken::Stalled { at: fed });
                    }
                    if !read(&mut buf, &mut fed) {
                        break;
                    }
                    continue;
                }
                Ok(NextRequest::Ready { .. }) => {
                    attached = true;
                    moved = false;
                }
            }
        }
        // Attached: forward what is buffered, as the relay does.
        let mut pos = 0;
        loop {
            let whole = read_whole_at(&buf[pos..]);
            let step = scanner
                .next(&buf, pos, |_| whole)
                .map_err(|_| Broken::Malformed)?;
            let Some((item, next)) = step else { break };
            match item {
                Scanned::Frame { .. } => frames.push(buf[pos..next].to_vec()),
                Scanned::Start { .. } => {
                    let f = buf[pos..next].to_vec();
                    if scanner.at_boundary() {
                        frames.push(f);
                    } else {
                        current = Some(f);
                    }
                }
                Scanned::Body => {
                    let f = current.as_mut().ok_or(Broken::Mismatch)?;
                    f.extend_from_slice(&buf[pos..next]);
                    if scanner.at_boundary() {
                        frames.push(current.take().ok_or(Broken::Mismatch)?);
                    }
                }
            }
            pos = next;
        }
        buf.drain(..pos);
        moved |= pos > 0;
        if buf.len() > max_len.max(HEADER_LEN) {
            return Err(Broken::Overbuffered {
                buffered: buf.len(),
            });
        }
        if scanner.at_boundary() && turns.next().unwrap_or(true) {
            // Released: the request was answered; back to waiting. A
            // connection taken and given back without moving a byte would
            // be taken again at once: a spin.
            if !moved {
                return Err(Broken::Stalled { at: fed });
            }
            attached = false;
            continue;
        }
        if !read(&mut buf, &mut fed) {
            break;
        }
    }
    if !buf.is_empty() || current.is_some() || fed != stream.len() {
        return Err(Broken::Mismatch);
    }
    Ok(frames)
}
