//! The queue every room has (its commands and published events): many senders, one
//! receiver, and small, because there are as many rooms as teams with members here.
//! Only some items count toward its bound: published events, which a room that fell
//! behind reads from the stream instead; commands are never refused, and a join storm's
//! commands do not crowd out the events. (A connection's send queue is the same shape,
//! inside its `Outlet`.)
//!
//! tokio's channels allocate their first block of 32 slots (and a bounded one its
//! semaphore) up front: ≈1.2 KB per channel, measured, more than a whole idle
//! connection's budget. This one is a `VecDeque` behind a mutex (≈100 bytes while
//! empty) that gives back its buffer once drained: most rooms are quiet most of the time.
//! flume has the same shape but is built here with its spin-lock feature (enabled by
//! sqlx), which sleeps a runtime thread under contention.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

struct Queued<T> {
    items: VecDeque<T>,
    /// How many of `items` count toward the bound.
    counted: usize,
}

struct Shared<T> {
    queued: Mutex<Queued<T>>,
    bound: usize,
    counts: fn(&T) -> bool,
    receiver_waker: AtomicWaker,
    senders: AtomicUsize,
    receiver_gone: AtomicBool,
}

/// Why `try_send` did not queue the item.
#[derive(Debug, PartialEq, Eq)]
pub enum TrySendError {
    /// The queue holds `bound` items that count.
    Full,
    /// The receiver is gone.
    Closed,
}

pub struct Sender<T>(Arc<Shared<T>>);

pub struct Receiver<T>(Arc<Shared<T>>);

/// A queue holding at most `bound` items for which `counts` is true, and any number of
/// the others.
pub fn channel<T>(bound: usize, counts: fn(&T) -> bool) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        queued: Mutex::new(Queued {
            items: VecDeque::new(),
            counted: 0,
        }),
        bound,
        counts,
        receiver_waker: AtomicWaker::new(),
        senders: AtomicUsize::new(1),
        receiver_gone: AtomicBool::new(false),
    });
    (Sender(shared.clone()), Receiver(shared))
}

impl<T> Sender<T> {
    pub fn try_send(&self, item: T) -> Result<(), TrySendError> {
        if self.0.receiver_gone.load(Ordering::Acquire) {
            return Err(TrySendError::Closed);
        }
        {
            let counts = (self.0.counts)(&item);
            let mut queued = self.0.queued.lock().expect("queue lock");
            if counts && queued.counted >= self.0.bound {
                return Err(TrySendError::Full);
            }
            queued.items.push_back(item);
            queued.counted += usize::from(counts);
        }
        self.0.receiver_waker.wake();
        Ok(())
    }
}

impl<T> Sender<T> {
    /// The receiver is gone (its task ended).
    pub fn is_closed(&self) -> bool {
        self.0.receiver_gone.load(Ordering::Acquire)
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
        poll_fn(move |cx| {
            self.poll_take(cx, 1, |item| Some(item))
                .map(Option::flatten)
        })
    }

    /// Waits for an item, then takes it and up to `limit - 1` more that are queued; 0 once
    /// every sender is gone and the queue is empty.
    pub fn recv_many<'a>(
        &'a mut self,
        buf: &'a mut Vec<T>,
        limit: usize,
    ) -> impl Future<Output = usize> + 'a {
        poll_fn(move |cx| {
            let before = buf.len();
            let taken = self.poll_take(cx, limit, |item| buf.push(item));
            taken.map(|taken| taken.map_or(0, |_| buf.len() - before))
        })
    }

    /// Once an item is queued, hands up to `limit` items to `take` (returning its last
    /// answer); `None` once every sender is gone and the queue is empty.
    fn poll_take<R>(
        &self,
        cx: &mut Context<'_>,
        limit: usize,
        mut take: impl FnMut(T) -> R,
    ) -> Poll<Option<R>> {
        let mut queued = self.0.queued.lock().expect("queue lock");
        if queued.items.is_empty() {
            drop(queued);
            self.0.receiver_waker.register(cx.waker());
            // Checked again after registering: an item or the last sender's drop may have
            // come in between. Senders first: with none left, nothing can follow.
            let no_senders = self.0.senders.load(Ordering::Acquire) == 0;
            queued = self.0.queued.lock().expect("queue lock");
            if queued.items.is_empty() {
                return if no_senders {
                    Poll::Ready(None)
                } else {
                    Poll::Pending
                };
            }
        }
        let mut answer = None;
        for _ in 0..limit.max(1) {
            let Some(item) = queued.items.pop_front() else {
                break;
            };
            queued.counted -= usize::from((self.0.counts)(&item));
            answer = Some(take(item));
        }
        // A drained queue gives its buffer back (the next item allocates one again).
        if queued.items.is_empty() && queued.items.capacity() > 0 {
            queued.items = VecDeque::new();
        }
        Poll::Ready(answer)
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.0.receiver_gone.store(true, Ordering::Release);
        // What was queued goes now, not when the last sender does.
        let mut queued = self.0.queued.lock().expect("queue lock");
        queued.items.clear();
        queued.counted = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(_: &u32) -> bool {
        true
    }

    fn odd(n: &u32) -> bool {
        n % 2 == 1
    }

    async fn take_all(rx: &mut Receiver<u32>) -> Vec<u32> {
        let mut got = Vec::new();
        rx.recv_many(&mut got, usize::MAX).await;
        got
    }

    #[tokio::test]
    async fn holds_at_most_its_bound_and_frees_places_as_items_are_taken() {
        let (tx, mut rx) = channel(2, all);
        tx.try_send(1).unwrap();
        tx.clone().try_send(2).unwrap();
        assert_eq!(tx.try_send(3), Err(TrySendError::Full));
        assert_eq!(rx.recv().await, Some(1));
        tx.try_send(3).unwrap();
        assert_eq!(take_all(&mut rx).await, [2, 3]);
    }

    #[tokio::test]
    async fn only_the_items_that_count_are_bounded() {
        let (tx, mut rx) = channel(1, odd);
        tx.try_send(1).unwrap();
        assert_eq!(tx.try_send(3), Err(TrySendError::Full));
        // Items that do not count go in whatever is queued.
        tx.try_send(2).unwrap();
        tx.try_send(4).unwrap();
        assert_eq!(take_all(&mut rx).await, [1, 2, 4]);
        tx.try_send(3).unwrap();
        assert_eq!(tx.try_send(5), Err(TrySendError::Full));
    }

    #[test]
    fn a_sender_learns_that_the_receiver_is_gone() {
        let (tx, rx) = channel(2, all);
        drop(rx);
        assert_eq!(tx.try_send(1), Err(TrySendError::Closed));
    }

    #[tokio::test]
    async fn the_receiver_is_woken_by_an_item_and_ends_when_the_last_sender_goes() {
        let (tx, mut rx) = channel(4, all);
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
        let (tx, mut rx) = channel(usize::MAX, all);
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

    #[tokio::test]
    async fn a_drained_queue_gives_back_its_buffer() {
        let (tx, mut rx) = channel(100, all);
        for n in 0..50 {
            tx.try_send(n).unwrap();
        }
        assert_eq!(take_all(&mut rx).await.len(), 50);
        assert_eq!(rx.0.queued.lock().unwrap().items.capacity(), 0);
    }
}
