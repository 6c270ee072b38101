//! Natural batching for calls that SQS accepts in batches (send, delete, change
//! visibility): a request that arrives while the batcher is idle goes out at once, and
//! requests that arrive while calls are in flight are grouped into the next ones. So a
//! lone request pays no waiting time, and load turns into full batches by itself.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};

/// A handle to a running batcher; cheap to clone.
pub struct Batcher<T, R> {
    tx: mpsc::Sender<(T, oneshot::Sender<R>)>,
}

impl<T, R> Clone for Batcher<T, R> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

impl<T: Send + 'static, R: Send + 'static> Batcher<T, R> {
    /// Starts the batching task on the current tokio runtime. `call` gets up to
    /// `max_batch` items and must return one result per item, in order; at most
    /// `max_in_flight` calls run at once. The request channel is bounded, so callers
    /// wait when `capacity` requests are queued.
    pub fn spawn<F, Fut>(max_batch: usize, max_in_flight: usize, capacity: usize, call: F) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<R>> + Send + 'static,
    {
        let (tx, mut rx) = mpsc::channel::<(T, oneshot::Sender<R>)>(capacity);
        let call = Arc::new(call);
        let slots = Arc::new(Semaphore::new(max_in_flight.max(1)));
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                // Wait for a free call slot before collecting, so everything that arrived
                // meanwhile joins this batch.
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    break;
                };
                let mut batch = vec![first];
                while batch.len() < max_batch {
                    match rx.try_recv() {
                        Ok(item) => batch.push(item),
                        Err(_) => break,
                    }
                }
                let call = call.clone();
                tokio::spawn(async move {
                    let (items, replies): (Vec<T>, Vec<oneshot::Sender<R>>) =
                        batch.into_iter().unzip();
                    let results = call(items).await;
                    for (reply, result) in replies.into_iter().zip(results) {
                        let _ = reply.send(result);
                    }
                    drop(permit);
                });
            }
        });
        Self { tx }
    }

    /// Queues one item without waiting, so items queue in exactly the order of the calls
    /// (FIFO sends rely on it). `None` when the queue is full or the batcher gone.
    pub fn try_submit(&self, item: T) -> Option<oneshot::Receiver<R>> {
        let (reply, answer) = oneshot::channel();
        self.tx.try_send((item, reply)).ok()?;
        Some(answer)
    }

    /// Queues one item and waits for its result; `None` if the batcher is gone.
    pub async fn submit(&self, item: T) -> Option<R> {
        let (reply, answer) = oneshot::channel();
        self.tx.send((item, reply)).await.ok()?;
        answer.await.ok()
    }
}
