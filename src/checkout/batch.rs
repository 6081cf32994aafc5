//! Group commit: at most one batch in flight per key (a product), per instance.
//!
//! A job for a key with no batch in flight starts one at once (no timer: a quiet product is
//! a batch of one). Jobs that arrive while it runs wait in the key's queue and go together
//! into the next batch, at most `max` at a time (jobs whose caller gave up ride along
//! without taking a place: the batch leaves them out at once). A key's queue holds at most
//! `limit` jobs; past it a job is handed back at once ([`Full`]). Each job gets its own
//! answer. A batch runs
//! in its own task: a client that gives up does not cancel the transaction its job is in
//! (the batch can see that it gave up, [`Pending::gave_up`], and leave its job out), and a
//! panicking batch fails only its own jobs (their callers see `None`).

use std::{
    collections::{HashMap, VecDeque},
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
};

use tokio::sync::oneshot;

type Runner<J, A> =
    Arc<dyn Fn(i64, Vec<Pending<J, A>>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// A job in a batch, with the way back to the one who waits for it.
pub struct Pending<J, A> {
    pub job: J,
    reply: oneshot::Sender<A>,
}

impl<J, A> Pending<J, A> {
    /// Whether nobody waits for this job's answer any more (its request ended).
    pub fn gave_up(&self) -> bool {
        self.reply.is_closed()
    }

    pub fn answer(self, answer: A) {
        let _ = self.reply.send(answer);
    }
}

/// Waiting jobs per key; a key is present exactly while a worker runs for it.
type Queues<J, A> = Arc<Mutex<HashMap<i64, VecDeque<Pending<J, A>>>>>;

pub struct Batcher<J, A> {
    queues: Queues<J, A>,
    max: usize,
    /// Most jobs waiting per key.
    limit: usize,
    run: Runner<J, A>,
}

/// A job refused because its key's queue is full, handed back to its caller.
#[derive(Debug)]
pub struct Full<J>(pub J);

impl<J, A> Clone for Batcher<J, A> {
    fn clone(&self) -> Self {
        Self {
            queues: self.queues.clone(),
            max: self.max,
            limit: self.limit,
            run: self.run.clone(),
        }
    }
}

impl<J: Send + 'static, A: Send + 'static> Batcher<J, A> {
    /// `run` executes one batch of a key and answers each of its jobs; at most `max` jobs
    /// a batch, `limit` waiting per key.
    pub fn new<F, Fut>(max: usize, limit: usize, run: F) -> Self
    where
        F: Fn(i64, Vec<Pending<J, A>>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Self {
            queues: Arc::default(),
            max: max.max(1),
            limit: limit.max(1),
            run: Arc::new(move |key, jobs| Box::pin(run(key, jobs))),
        }
    }

    /// How many jobs of `key` wait for its next batch (not counting the one in flight).
    pub fn queued(&self, key: i64) -> usize {
        self.queues
            .lock()
            .map(|q| q.get(&key).map_or(0, VecDeque::len))
            .unwrap_or(0)
    }

    /// Queues `job` for `key` and waits for its answer: `Ok(None)` if its batch failed
    /// without answering (a panic), `Err` with the job when the key's queue is full.
    pub async fn submit(&self, key: i64, job: J) -> Result<Option<A>, Full<J>> {
        let (reply, rx) = oneshot::channel();
        let pending = Pending { job, reply };
        let start_worker = {
            let Ok(mut queues) = self.queues.lock() else {
                return Ok(None);
            };
            match queues.get_mut(&key) {
                Some(queue) if queue.len() >= self.limit => return Err(Full(pending.job)),
                Some(queue) => {
                    queue.push_back(pending);
                    false
                }
                None => {
                    queues.insert(key, VecDeque::from([pending]));
                    true
                }
            }
        };
        if start_worker {
            tokio::spawn(self.clone().work(key));
        }
        Ok(rx.await.ok())
    }

    /// Runs the key's batches one after another until its queue is empty.
    async fn work(self, key: i64) {
        loop {
            let batch: Vec<Pending<J, A>> = {
                let Ok(mut queues) = self.queues.lock() else {
                    return;
                };
                let Some(queue) = queues.get_mut(&key) else {
                    return;
                };
                if queue.is_empty() {
                    queues.remove(&key);
                    return;
                }
                // `max` jobs still awaited, and the given-up ones between them.
                let mut awaited = 0;
                let n = queue
                    .iter()
                    .take_while(|p| {
                        let fits = awaited < self.max;
                        if fits && !p.gave_up() {
                            awaited += 1;
                        }
                        fits
                    })
                    .count();
                queue.drain(..n).collect()
            };
            metrics::histogram!("checkout_batch_size").record(batch.len() as f64);
            // In a task of its own: a panic there drops its replies and ends nothing else.
            let _ = tokio::spawn((self.run)(key, batch)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::{AtomicUsize, Ordering},
        time::Duration,
    };

    use tokio::sync::Notify;

    use super::*;

    #[tokio::test]
    async fn an_idle_key_runs_at_once_and_jobs_arriving_meanwhile_share_the_next_batch() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let release = Arc::new(Notify::new());
        let (s, r) = (sizes.clone(), release.clone());
        let batcher = Batcher::new(3, 100, move |_key, jobs: Vec<Pending<u32, u32>>| {
            let (s, r) = (s.clone(), r.clone());
            async move {
                s.lock().unwrap().push(jobs.len());
                if jobs[0].job == 0 {
                    r.notified().await; // the first batch stays in flight
                }
                for p in jobs {
                    let answer = p.job * 10;
                    p.answer(answer);
                }
            }
        });
        let first = tokio::spawn({
            let b = batcher.clone();
            async move { b.submit(1, 0).await.unwrap() }
        });
        while sizes.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let later = submitted(&batcher, 1..=5);
        until_queued(&batcher, 5).await;
        release.notify_one();
        assert_eq!(first.await.unwrap(), Some(0));
        for (j, handle) in (1..=5).zip(later) {
            assert_eq!(handle.await.unwrap(), Some(j * 10));
        }
        assert_eq!(*sizes.lock().unwrap(), [1, 3, 2]);
        assert!(batcher.queues.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn keys_do_not_wait_for_each_other() {
        let running = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(Notify::new());
        let (c, r) = (running.clone(), release.clone());
        let batcher = Batcher::new(8, 100, move |key, jobs: Vec<Pending<u32, u32>>| {
            let (c, r) = (c.clone(), r.clone());
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                if key == 1 {
                    r.notified().await;
                }
                for p in jobs {
                    let answer = p.job;
                    p.answer(answer);
                }
            }
        });
        let blocked = tokio::spawn({
            let b = batcher.clone();
            async move { b.submit(1, 7).await.unwrap() }
        });
        assert_eq!(batcher.submit(2, 9).await.unwrap(), Some(9));
        release.notify_one();
        assert_eq!(blocked.await.unwrap(), Some(7));
    }

    #[tokio::test]
    async fn a_panicking_batch_fails_only_its_jobs() {
        let batcher = Batcher::new(8, 100, |_key, jobs: Vec<Pending<u32, u32>>| async move {
            assert!(jobs[0].job != 13, "unlucky");
            for p in jobs {
                let answer = p.job;
                p.answer(answer);
            }
        });
        assert_eq!(batcher.submit(1, 13).await.unwrap(), None);
        assert_eq!(batcher.submit(1, 14).await.unwrap(), Some(14));
    }

    #[tokio::test]
    async fn a_batch_sees_who_gave_up() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let release = Arc::new(Notify::new());
        let (s, r) = (seen.clone(), release.clone());
        let batcher = Batcher::new(8, 100, move |_key, jobs: Vec<Pending<u32, u32>>| {
            let (s, r) = (s.clone(), r.clone());
            async move {
                r.notified().await;
                for p in jobs {
                    s.lock().unwrap().push((p.job, p.gave_up()));
                    let answer = p.job;
                    p.answer(answer);
                }
            }
        });
        let impatient = tokio::time::timeout(Duration::from_millis(20), batcher.submit(1, 5));
        assert!(impatient.await.is_err());
        release.notify_one();
        while seen.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(*seen.lock().unwrap(), [(5, true)]);
    }

    type Sizes = Arc<Mutex<Vec<usize>>>;

    /// A batcher whose first batch (job 0) stays in flight until `release`; returns it
    /// with the sizes of the batches it ran.
    fn held(max: usize, limit: usize) -> (Batcher<u32, u32>, Arc<Notify>, Sizes) {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let release = Arc::new(Notify::new());
        let (s, r) = (sizes.clone(), release.clone());
        let batcher = Batcher::new(max, limit, move |_key, jobs: Vec<Pending<u32, u32>>| {
            let (s, r) = (s.clone(), r.clone());
            async move {
                s.lock().unwrap().push(jobs.len());
                if jobs[0].job == 0 {
                    r.notified().await;
                }
                for p in jobs {
                    let answer = p.job;
                    p.answer(answer);
                }
            }
        });
        (batcher, release, sizes)
    }

    /// `jobs` submitted for key 1, each from a task of its own.
    fn submitted(
        batcher: &Batcher<u32, u32>,
        jobs: std::ops::RangeInclusive<u32>,
    ) -> Vec<tokio::task::JoinHandle<Option<u32>>> {
        jobs.map(|j| {
            let b = batcher.clone();
            tokio::spawn(async move { b.submit(1, j).await.unwrap() })
        })
        .collect()
    }

    /// Until `n` jobs wait in key 1's queue.
    async fn until_queued(batcher: &Batcher<u32, u32>, n: usize) {
        while batcher.queued(1) < n {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    async fn in_flight(batcher: &Batcher<u32, u32>) -> tokio::task::JoinHandle<Option<u32>> {
        let b = batcher.clone();
        let first = tokio::spawn(async move { b.submit(1, 0).await.unwrap() });
        while batcher.queues.lock().unwrap().get(&1).is_none() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        first
    }

    #[tokio::test]
    async fn a_full_queue_hands_the_job_back_at_once() {
        let (batcher, release, _) = held(8, 2);
        let first = in_flight(&batcher).await;
        let waiting = submitted(&batcher, 1..=2);
        until_queued(&batcher, 2).await;
        match batcher.submit(1, 3).await {
            Err(Full(job)) => assert_eq!(job, 3),
            other => panic!("{other:?}"),
        }
        // Another key is not affected.
        assert_eq!(batcher.submit(2, 4).await.unwrap(), Some(4));
        release.notify_one();
        assert_eq!(first.await.unwrap(), Some(0));
        for (j, w) in (1..=2).zip(waiting) {
            assert_eq!(w.await.unwrap(), Some(j));
        }
    }

    #[tokio::test]
    async fn jobs_whose_callers_gave_up_take_no_place_in_a_batch() {
        let (batcher, release, sizes) = held(2, 100);
        let first = in_flight(&batcher).await;
        // Three callers give up while they wait, then two still wait.
        for j in 1..=3 {
            let b = batcher.clone();
            let gone =
                tokio::time::timeout(
                    Duration::from_millis(5),
                    async move { b.submit(1, j).await },
                );
            assert!(gone.await.is_err());
        }
        let waiting = submitted(&batcher, 4..=5);
        until_queued(&batcher, 5).await;
        release.notify_one();
        first.await.unwrap();
        for (j, w) in (4..=5).zip(waiting) {
            assert_eq!(w.await.unwrap(), Some(j));
        }
        // The second batch carried the three given-up jobs and both waiting ones.
        assert_eq!(*sizes.lock().unwrap(), [1, 5]);
    }
}
