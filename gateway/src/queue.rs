//! The queue every room has (its commands and published events): many senders, one
//! receiver, optionally bounded, and small, because there are as many rooms as teams with
//! members here. (A connection's send queue is the same shape, inside its `Outlet`.)
//!
//! tokio's channels allocate their first block of 32 slots (and a bounded one its
//! semaphore) up front: ≈1.2 KB per channel, measured, more than a whole idle
//! connection's budget. This one is a `VecDeque` behind a mutex (≈100 bytes while
//! empty) that gives back its buffer once drained: most rooms are quiet most of the time. flume has the same shape but is
//! built here with its spin-lock feature (enabled by sqlx), which sleeps a runtime thread
//! under contention.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

struct Shared<T> {
    items: Mutex<VecDeque<T>>,
    capacity: usize,
    receiver_waker: AtomicWaker,
    senders: AtomicUsize,
    receiver_gone: AtomicBool,
}

/// Why `try_send` did not queue the item.
#[derive(Debug, PartialEq, Eq)]
pub enum TrySendError {
    /// The queue holds `capacity` items.
    Full,
    /// The receiver is gone.
    Closed,
}

pub struct Sender<T>(Arc<Shared<T>>);

pub struct Receiver<T>(Arc<Shared<T>>);

/// A queue holding at most `capacity` items.
pub fn bounded<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        items: Mutex::new(VecDeque::new()),
        capacity,
        receiver_waker: AtomicWaker::new(),
        senders: AtomicUsize::new(1),
        receiver_gone: AtomicBool::new(false),
    });
    (Sender(shared.clone()), Receiver(shared))
}

/// A queue without a bound (for commands whose senders must not be refused).
pub fn unbounded<T>() -> (Sender<T>, Receiver<T>) {
    bounded(usize::MAX)
}

impl<T> Sender<T> {
    pub fn try_send(&self, item: T) -> Result<(), TrySendError> {
        self.try_send_within(item, self.0.capacity)
    }

    /// Queues the item only while fewer than `limit` items (of any kind) are queued: one
    /// queue carries both items that must not be refused and items that may be.
    pub fn try_send_within(&self, item: T, limit: usize) -> Result<(), TrySendError> {
        if self.0.receiver_gone.load(Ordering::Acquire) {
            return Err(TrySendError::Closed);
        }
        {
            let mut items = self.0.items.lock().expect("queue lock");
            if items.len() >= limit.min(self.0.capacity) {
                return Err(TrySendError::Full);
            }
            items.push_back(item);
        }
        self.0.receiver_waker.wake();
        Ok(())
    }

    /// Free slots.
    pub fn capacity(&self) -> usize {
        let queued = self.0.items.lock().expect("queue lock").len();
        self.0.capacity.saturating_sub(queued)
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.0.senders.fetch_add(1, Ordering::Relaxed);
        Sender(self.0.clone())
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if self.0.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.receiver_waker.wake();
        }
    }
}

impl<T> Receiver<T> {
    /// The next item; `None` once every sender is gone and the queue is empty. (This and
    /// `recv_many` return `poll_fn`s: a room holds their futures while it waits, and an
    /// `async fn`'s future would hold its arguments twice.)
    pub fn recv(&mut self) -> impl Future<Output = Option<T>> + '_ {
        poll_fn(move |cx| self.poll_take(cx, VecDeque::pop_front).map(Option::flatten))
    }

    /// Waits for an item, then takes it and up to `limit - 1` more that are queued; 0 once
    /// every sender is gone and the queue is empty.
    pub fn recv_many<'a>(
        &'a mut self,
        buf: &'a mut Vec<T>,
        limit: usize,
    ) -> impl Future<Output = usize> + 'a {
        poll_fn(move |cx| {
            let taken = self.poll_take(cx, |items| {
                let count = items.len().min(limit.max(1));
                buf.extend(items.drain(..count));
                count
            });
            taken.map(|count| count.unwrap_or(0))
        })
    }

    /// Ready with what `take` takes once an item is queued, or with `None` once every
    /// sender is gone and the queue is empty.
    fn poll_take<R>(
        &self,
        cx: &mut Context<'_>,
        take: impl FnOnce(&mut VecDeque<T>) -> R,
    ) -> Poll<Option<R>> {
        let mut items = self.0.items.lock().expect("queue lock");
        if items.is_empty() {
            drop(items);
            self.0.receiver_waker.register(cx.waker());
            // Checked again after registering: an item or the last sender's drop may have
            // come in between. Senders first: with none left, nothing can follow.
            let no_senders = self.0.senders.load(Ordering::Acquire) == 0;
            items = self.0.items.lock().expect("queue lock");
            if items.is_empty() {
                return if no_senders {
                    Poll::Ready(None)
                } else {
                    Poll::Pending
                };
            }
        }
        let taken = take(&mut items);
        release_if_empty(&mut items);
        Poll::Ready(Some(taken))
    }

    pub fn try_recv(&mut self) -> Option<T> {
        let mut items = self.0.items.lock().expect("queue lock");
        let item = items.pop_front();
        release_if_empty(&mut items);
        item
    }

    pub fn is_empty(&self) -> bool {
        self.0.items.lock().expect("queue lock").is_empty()
    }
}

/// A drained queue gives its buffer back (the next item allocates one again).
fn release_if_empty<T>(items: &mut VecDeque<T>) {
    if items.is_empty() && items.capacity() > 0 {
        *items = VecDeque::new();
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.0.receiver_gone.store(true, Ordering::Release);
        // What was queued goes now, not when the last sender does.
        self.0.items.lock().expect("queue lock").clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_at_most_its_capacity_and_frees_slots_as_items_are_taken() {
        let (tx, mut rx) = bounded(2);
        assert_eq!(tx.capacity(), 2);
        tx.try_send(1).unwrap();
        tx.clone().try_send(2).unwrap();
        assert_eq!(tx.try_send(3), Err(TrySendError::Full));
        assert_eq!(tx.capacity(), 0);
        assert_eq!(rx.try_recv(), Some(1));
        tx.try_send(3).unwrap();
        assert_eq!(
            (rx.try_recv(), rx.try_recv(), rx.try_recv()),
            (Some(2), Some(3), None)
        );
        assert!(rx.is_empty());
    }

    #[test]
    fn a_sender_learns_that_the_receiver_is_gone() {
        let (tx, rx) = bounded(2);
        drop(rx);
        assert_eq!(tx.try_send(1), Err(TrySendError::Closed));
    }

    #[tokio::test]
    async fn the_receiver_is_woken_by_an_item_and_ends_when_the_last_sender_goes() {
        let (tx, mut rx) = bounded(4);
        let second = tx.clone();
        let receiving = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(item) = rx.recv().await {
                got.push(item);
            }
            got
        });
        tokio::task::yield_now().await;
        tx.try_send(1).unwrap();
        drop(tx);
        second.try_send(2).unwrap();
        drop(second);
        assert_eq!(receiving.await.unwrap(), [1, 2]);
    }

    #[tokio::test]
    async fn recv_many_takes_what_is_queued_up_to_its_limit() {
        let (tx, mut rx) = unbounded();
        for n in 0..5 {
            tx.try_send(n).unwrap();
        }
        let mut got = Vec::new();
        assert_eq!(rx.recv_many(&mut got, 3).await, 3);
        assert_eq!(rx.recv_many(&mut got, 3).await, 2);
        assert_eq!(got, [0, 1, 2, 3, 4]);
        drop(tx);
        assert_eq!(rx.recv_many(&mut got, 3).await, 0);
    }

    #[test]
    fn a_drained_queue_gives_back_a_bursts_memory() {
        let (tx, mut rx) = bounded(100);
        for n in 0..50 {
            tx.try_send(n).unwrap();
        }
        while rx.try_recv().is_some() {}
        assert_eq!(rx.0.items.lock().unwrap().capacity(), 0);
    }

    #[test]
    fn a_limited_send_counts_every_queued_item() {
        let (tx, mut rx) = unbounded();
        tx.try_send(1).unwrap();
        tx.try_send_within(2, 2).unwrap();
        assert_eq!(tx.try_send_within(3, 2), Err(TrySendError::Full));
        // Unlimited items still go in.
        tx.try_send(4).unwrap();
        let got: Vec<_> = std::iter::from_fn(|| rx.try_recv()).collect();
        assert_eq!(got, [1, 2, 4]);
    }
}
