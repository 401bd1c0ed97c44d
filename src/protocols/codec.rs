//! `tokio_util::codec` adapter over a protocol [`Session`]: cuts frames out of the byte
//! stream and decodes them. A frame that cannot be decoded (bad CRC) is yielded as an error
//! item and the stream goes on; a stream that cannot be framed (bad marker, oversize) is a
//! fatal error that closes the connection.

use bytes::{Buf, BytesMut};
use tokio_util::codec::Decoder;

use crate::protocols::DecodeReason;
use crate::protocols::{DecodeCtx, DecodeError, Decoded, FrameCut, Session};

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

pub struct SessionCodec {
    session: Box<dyn Session>,
    max_frame: usize,
}

impl SessionCodec {
    pub fn new(session: Box<dyn Session>, max_frame: usize) -> Self {
        SessionCodec { session, max_frame }
    }

    pub fn session(&self) -> &dyn Session {
        self.session.as_ref()
    }

    pub fn session_mut(&mut self) -> &mut dyn Session {
        self.session.as_mut()
    }
}

impl Decoder for SessionCodec {
    /// One frame: decoded, or the reason it could not be.
    type Item = Result<Decoded, DecodeError>;
    type Error = FrameError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Self::Item>, FrameError> {
        // Called again after every frame; a framer must not be asked to cut an empty buffer
        // (a `Skip` there would be clamped to an impossible range).
        if buf.is_empty() {
            return Ok(None);
        }
        loop {
            // The framed reader asks again after every frame, also with nothing left.
            if buf.is_empty() {
                return Ok(None);
            }
            match self.session.next_frame(buf)? {
                FrameCut::NeedMore => {
                    if buf.len() > self.max_frame {
                        let name = self.session.protocol().name();
                        return Err(DecodeError::new(
                            name,
                            DecodeReason::TooLarge,
                            0,
                            format!("no frame within {} bytes", self.max_frame),
                        )
                        .into());
                    }
                    return Ok(None);
                }
                FrameCut::Skip(n) => buf.advance(n.clamp(1, buf.len())),
                FrameCut::Frame(len) => {
                    let frame = buf.split_to(len.clamp(1, buf.len()));
                    return Ok(Some(self.session.decode(&frame, &DecodeCtx::now())));
                }
            }
            if buf.is_empty() {
                return Ok(None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::Protocol;

    #[test]
    fn an_empty_buffer_needs_more_bytes_for_every_protocol() {
        for &p in Protocol::ALL {
            for &t in p.transports() {
                let mut codec = SessionCodec::new(p.session(t), p.max_frame());
                let mut buf = BytesMut::new();
                assert!(matches!(codec.decode(&mut buf), Ok(None)), "{p} over {t:?}");
                assert_eq!(
                    p.session(t).next_frame(&[]).ok(),
                    Some(FrameCut::NeedMore),
                    "{p} over {t:?}: next_frame on nothing"
                );
            }
        }
    }
}
