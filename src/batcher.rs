//! Natural batching for calls that SQS accepts in batches (send, delete, change
//! visibility): a request that arrives while the batcher is idle goes out at once, and
//! requests that arrive while calls are in flight are grouped into the next ones. So a
//! lone request pays no waiting time, and load turns into full batches by itself.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};

/// How a batcher groups requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatcherConfig {
    /// Most items per call.
    pub max_batch: usize,
    /// Most calls running at once; while they run, the next batch gathers.
    pub max_in_flight: usize,
    /// Requests that may wait; beyond it callers wait (or `try_submit` refuses).
    pub capacity: usize,
}

/// A handle to a running batcher; cheap to clone.
pub(crate) struct Batcher<T, R> {
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
    pub(crate) fn spawn<F, Fut>(config: BatcherConfig, call: F) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<R>> + Send + 'static,
    {
        let BatcherConfig {
            max_batch,
            max_in_flight,
            capacity,
        } = config;
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
    pub(crate) fn try_submit(&self, item: T) -> Option<oneshot::Receiver<R>> {
        let (reply, answer) = oneshot::channel();
        self.tx.try_send((item, reply)).ok()?;
        Some(answer)
    }

    /// Queues one item and waits for its result; `None` if the batcher is gone.
    pub(crate) async fn submit(&self, item: T) -> Option<R> {
        let (reply, answer) = oneshot::channel();
        self.tx.send((item, reply)).await.ok()?;
        answer.await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    /// A batcher whose calls take 100 ms and record the size of each batch.
    fn recording(
        max_batch: usize,
        max_in_flight: usize,
    ) -> (Batcher<u32, u32>, Arc<Mutex<Vec<usize>>>) {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let config = BatcherConfig {
            max_batch,
            max_in_flight,
            capacity: 1024,
        };
        let batcher = Batcher::spawn(config, move |items: Vec<u32>| {
            let seen = seen.clone();
            async move {
                seen.lock().map(|mut s| s.push(items.len())).ok();
                tokio::time::sleep(Duration::from_millis(100)).await;
                items.into_iter().map(|i| i * 2).collect()
            }
        });
        (batcher, sizes)
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_request_goes_out_at_once_and_gets_its_own_answer() {
        let (batcher, sizes) = recording(10, 1);
        let started = tokio::time::Instant::now();
        assert_eq!(batcher.submit(21).await, Some(42));
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(100),
            "no waiting for company"
        );
        assert_eq!(*sizes.lock().unwrap(), vec![1]);
    }

    #[tokio::test(start_paused = true)]
    async fn requests_arriving_during_a_call_form_the_next_batch_capped_at_max_batch() {
        let (batcher, sizes) = recording(10, 1);
        let answers = futures_util::future::join_all((0..25).map(|i| batcher.submit(i))).await;
        assert_eq!(answers, (0..25).map(|i| Some(i * 2)).collect::<Vec<_>>());
        let sizes = sizes.lock().unwrap().clone();
        assert_eq!(sizes.iter().sum::<usize>(), 25);
        assert!(sizes.iter().all(|s| *s <= 10), "{sizes:?}");
        assert!(sizes.len() <= 4, "requests were grouped: {sizes:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn try_submit_keeps_the_order_of_the_calls() {
        let (batcher, _) = recording(3, 1);
        let receivers: Vec<_> = (0..7).filter_map(|i| batcher.try_submit(i)).collect();
        let mut answers = Vec::new();
        for receiver in receivers {
            answers.push(receiver.await.ok());
        }
        assert_eq!(answers, (0..7).map(|i| Some(i * 2)).collect::<Vec<_>>());
    }
}
