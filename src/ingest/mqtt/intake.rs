//! The driver's hand-off to the processor, as a pure buffer with a rule.
//!
//! The driver must keep polling rumqttc's event loop whatever the processor is doing: the
//! same poll reads the broker's PUBLISHes and writes our PUBACKs and PINGREQs, so a driver
//! that waits for the processor while the processor waits for its PUBACKs to be written
//! deadlocks (the #21 stall: 858 of 900 queued messages pushed by Mosquitto 2.0.11 at once,
//! 312 PUBACKs written, then nothing). MQTT 3.1.1 has no receive window the client can set,
//! so what the broker pushes is held here, up to `cap`. Past it, messages are abandoned (no
//! PUBACK) and, once everything held has been handed over, the driver reconnects: the broker
//! redelivers every unacknowledged message of the persistent session, so nothing is lost and
//! memory stays bounded whatever the broker's in-flight and queue settings.

use std::collections::VecDeque;

/// What became of an offered message.
#[derive(Debug, PartialEq, Eq)]
pub enum Offered {
    Held,
    /// Not kept and not to be acked: the broker redelivers it after the resync.
    Abandoned,
}

pub struct Intake<T> {
    held: VecDeque<T>,
    cap: usize,
    /// Messages were abandoned since the last (re)connection.
    resync: bool,
}

impl<T> Intake<T> {
    pub fn new(cap: usize) -> Self {
        Intake {
            held: VecDeque::new(),
            cap,
            resync: false,
        }
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Messages are being abandoned until the next (re)connection.
    pub fn resyncing(&self) -> bool {
        self.resync
    }

    /// A message from the broker. Once one was abandoned, later ones are too (until the
    /// resync), so the buffer only shrinks and the resync comes.
    pub fn offer(&mut self, m: T) -> Offered {
        if self.resync || self.held.len() >= self.cap {
            self.resync = true;
            return Offered::Abandoned;
        }
        self.held.push_back(m);
        Offered::Held
    }

    /// Hand held messages over, oldest first, while `send` accepts them (it gives a message
    /// back when it cannot take it). Returns how many went.
    pub fn forward(&mut self, mut send: impl FnMut(T) -> Result<(), T>) -> usize {
        let mut n = 0;
        while let Some(m) = self.held.pop_front() {
            match send(m) {
                Ok(()) => n += 1,
                Err(m) => {
                    self.held.push_front(m);
                    break;
                }
            }
        }
        n
    }

    /// True (once) when the driver should reconnect to get the abandoned messages back:
    /// messages were abandoned, nothing is held and the processor's queue is empty.
    pub fn take_resync(&mut self, queue_empty: bool) -> bool {
        if self.resync && self.held.is_empty() && queue_empty {
            self.resync = false;
            return true;
        }
        false
    }

    /// The connection is gone: the broker redelivers whatever was held (never acked), so it
    /// is dropped rather than committed twice. Returns how many.
    pub fn connection_lost(&mut self) -> usize {
        self.resync = false;
        let n = self.held.len();
        self.held.clear();
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_forwarded_in_order_as_the_queue_has_room() {
        let mut i = Intake::new(10);
        for m in 0..5 {
            assert_eq!(i.offer(m), Offered::Held);
        }
        let mut got = Vec::new();
        let n = i.forward(|m| {
            if got.len() == 3 {
                return Err(m);
            }
            got.push(m);
            Ok(())
        });
        assert_eq!((n, got.as_slice(), i.len()), (3, &[0, 1, 2][..], 2));
        let n = i.forward(|m| {
            got.push(m);
            Ok(())
        });
        assert_eq!((n, got.as_slice()), (2, &[0, 1, 2, 3, 4][..]));
        assert!(i.is_empty());
        assert!(!i.take_resync(true), "nothing was abandoned");
    }

    #[test]
    fn past_the_cap_messages_are_abandoned_until_a_resync_after_the_drain() {
        let mut i = Intake::new(2);
        assert_eq!(i.offer(1), Offered::Held);
        assert_eq!(i.offer(2), Offered::Held);
        assert_eq!(i.offer(3), Offered::Abandoned);
        let mut room = 1;
        let n = i.forward(|m| {
            if room == 0 {
                return Err(m);
            }
            room -= 1;
            Ok(())
        });
        assert_eq!(n, 1);
        // Room again, but abandoning goes on so that the buffer drains and the resync comes.
        assert_eq!(i.offer(4), Offered::Abandoned);
        assert!(!i.take_resync(true), "a message is still held");
        assert_eq!(i.forward(|_| Ok(())), 1);
        assert!(!i.take_resync(false), "the processor's queue is not empty");
        assert!(i.take_resync(true));
        assert!(!i.take_resync(true), "once");
        assert_eq!(
            i.offer(5),
            Offered::Held,
            "after the resync messages are kept again"
        );
    }

    #[test]
    fn a_lost_connection_drops_what_is_held_and_the_pending_resync() {
        let mut i = Intake::new(1);
        i.offer(1);
        assert_eq!(i.offer(2), Offered::Abandoned);
        assert_eq!(i.connection_lost(), 1);
        assert!(i.is_empty());
        assert!(!i.take_resync(true), "the reconnection already redelivers");
        assert_eq!(i.offer(3), Offered::Held);
    }
}
