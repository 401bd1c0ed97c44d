//! A connection's queue of commands to write: bounded, one producer (the session registry's
//! entry for the connection) and one consumer (the connection task).
//!
//! Not a tokio `mpsc`: that channel allocates a cache-padded channel and a first block of 32
//! slots when it is created, about 1 KiB held by every silent tracker for commands that are
//! rare. This queue is one small allocation, and holds no buffer while it is empty.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};

use super::sessions::Outbound;

struct Shared {
    state: Mutex<State>,
}

struct State {
    queue: VecDeque<Box<Outbound>>,
    /// The consumer waiting in [`CommandRx::recv`]: woken when a command is queued or the
    /// producer is gone. A waker and not a `Notify`, so that the connection's future (what a
    /// silent tracker costs) holds a pointer while it waits, not a waiter node.
    waker: Option<Waker>,
    /// The producer was dropped (the connection was replaced or unregistered).
    sender_gone: bool,
    /// The consumer was dropped (the connection ended).
    receiver_gone: bool,
}

/// Why [`CommandTx::try_send`] did not queue the command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrySendError {
    /// The queue holds its bound already.
    Full,
    /// The connection is gone.
    Closed,
}

/// A bounded queue of `cap` commands.
pub fn channel(cap: usize) -> (CommandTx, CommandRx) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            waker: None,
            sender_gone: false,
            receiver_gone: false,
        }),
    });
    (
        CommandTx {
            shared: shared.clone(),
            cap,
        },
        CommandRx { shared },
    )
}

/// The producing end; dropping it ends the consumer's [`CommandRx::recv`] once drained.
pub struct CommandTx {
    shared: Arc<Shared>,
    cap: usize,
}

impl CommandTx {
    /// Queue a command without waiting.
    pub fn try_send(&self, cmd: Box<Outbound>) -> Result<(), TrySendError> {
        let waker = {
            let mut s = self.shared.state.lock().expect("not poisoned");
            if s.receiver_gone {
                return Err(TrySendError::Closed);
            }
            if s.queue.len() >= self.cap {
                return Err(TrySendError::Full);
            }
            s.queue.push_back(cmd);
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }
}

impl Drop for CommandTx {
    fn drop(&mut self) {
        let waker = {
            let mut s = self.shared.state.lock().expect("not poisoned");
            s.sender_gone = true;
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The consuming end, owned by the connection task.
pub struct CommandRx {
    shared: Arc<Shared>,
}

impl CommandRx {
    /// The next command; `None` once the producer is gone and the queue is drained.
    /// Cancel-safe: a command is only taken when this returns it.
    pub async fn recv(&mut self) -> Option<Box<Outbound>> {
        std::future::poll_fn(|cx| {
            let mut s = self.shared.state.lock().expect("not poisoned");
            if let Some(cmd) = s.queue.pop_front() {
                if s.queue.is_empty() {
                    // Back to no buffer while idle.
                    s.queue = VecDeque::new();
                }
                return Poll::Ready(Some(cmd));
            }
            if s.sender_gone {
                return Poll::Ready(None);
            }
            // Registered under the lock that `try_send` queues under: no wakeup is lost.
            match &mut s.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await
    }
}

impl Drop for CommandRx {
    fn drop(&mut self) {
        let mut s = self.shared.state.lock().expect("not poisoned");
        s.receiver_gone = true;
        s.waker = None;
        s.queue.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::protocols::{CommandBody, DeviceCommand};

    fn cmd(id: i64) -> Box<Outbound> {
        Box::new(Outbound::new(
            id,
            DeviceCommand {
                seq: id as u32,
                body: CommandBody::EngineStop,
            },
        ))
    }

    #[tokio::test]
    async fn commands_arrive_in_order_up_to_the_bound() {
        let (tx, mut rx) = channel(2);
        tx.try_send(cmd(1)).unwrap();
        tx.try_send(cmd(2)).unwrap();
        assert_eq!(tx.try_send(cmd(3)).unwrap_err(), TrySendError::Full);
        assert_eq!(rx.recv().await.unwrap().id, 1);
        tx.try_send(cmd(4)).unwrap();
        assert_eq!(rx.recv().await.unwrap().id, 2);
        assert_eq!(rx.recv().await.unwrap().id, 4);
        assert_eq!(
            rx.shared.state.lock().unwrap().queue.capacity(),
            0,
            "an emptied queue keeps no buffer"
        );
    }

    #[tokio::test]
    async fn a_waiting_consumer_is_woken_by_a_command_and_by_the_producer_leaving() {
        let (tx, mut rx) = channel(8);
        let waiter = tokio::spawn(async move {
            let first = rx.recv().await.map(|c| c.id);
            let end = rx.recv().await.map(|c| c.id);
            (first, end)
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.try_send(cmd(7)).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(tx);
        let got = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("consumer woken")
            .unwrap();
        assert_eq!(got, (Some(7), None));
    }

    #[tokio::test]
    async fn queued_commands_are_delivered_before_the_end() {
        let (tx, mut rx) = channel(8);
        tx.try_send(cmd(1)).unwrap();
        drop(tx);
        assert_eq!(rx.recv().await.unwrap().id, 1);
        assert!(rx.recv().await.is_none());
    }

    #[tokio::test]
    async fn a_dropped_wait_loses_no_command() {
        let (tx, mut rx) = channel(8);
        // The consumer gives up waiting (a select! on another branch), then comes back.
        assert!(tokio::time::timeout(Duration::from_millis(10), rx.recv())
            .await
            .is_err());
        tx.try_send(cmd(5)).unwrap();
        assert_eq!(rx.recv().await.unwrap().id, 5);
    }

    #[test]
    fn sending_to_a_gone_connection_is_closed() {
        let (tx, rx) = channel(8);
        drop(rx);
        assert_eq!(tx.try_send(cmd(1)).unwrap_err(), TrySendError::Closed);
    }
}
