//! A small fixed pool of threads for argon2, off the async runtime.
//!
//! Each thread keeps argon2's working memory for its life (see
//! `hashing::with_blocks`), so memory stays at one buffer per thread however
//! many hashes run; tokio's blocking pool would grow a thread (and a buffer)
//! per concurrent call. The pool's size also bounds how many cores argon2
//! can take from cached Verify traffic.

use crate::domain::Error;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};

type Job = Box<dyn FnOnce() + Send>;

/// The priority of hashing threads on thread-priority's 0–99 scale, which it
/// maps to niceness 9 on Linux. Cached Verify calls need a few microseconds
/// of CPU each and must not queue behind argon2; hashing at a lower priority
/// takes what cached traffic leaves, and still gets about a tenth of a
/// contended core (CFS weight 137 against 1024), so fresh tokens slow down
/// under load rather than stop.
const HASHING_PRIORITY: u8 = 23;

/// Lowers the calling thread's scheduling priority; where the OS refuses,
/// hashing simply runs at normal priority.
fn lower_priority() {
    use thread_priority::{
        NormalThreadSchedulePolicy, ThreadPriority, ThreadPriorityValue, ThreadSchedulePolicy,
    };
    let lowered = ThreadPriorityValue::try_from(HASHING_PRIORITY)
        .map_err(|e| format!("{e:?}"))
        .and_then(|value| {
            thread_priority::set_thread_priority_and_policy(
                thread_priority::thread_native_id(),
                ThreadPriority::Crossplatform(value),
                ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Other),
            )
            .map_err(|e| format!("{e:?}"))
        });
    if let Err(error) = lowered {
        tracing::debug!(?error, "hashing threads keep normal priority");
    }
}

/// Threads that run CPU-bound hashing jobs.
pub struct HashPool {
    jobs: Mutex<Sender<Job>>,
}

impl std::fmt::Debug for HashPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HashPool")
    }
}

impl HashPool {
    /// Starts `threads` hashing threads (at least one). They end when the
    /// pool is dropped.
    pub fn new(threads: usize) -> Self {
        let (sender, receiver) = channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        for index in 0..threads.max(1) {
            let receiver = Arc::clone(&receiver);
            std::thread::Builder::new()
                .name(format!("keyrack-hash-{index}"))
                .spawn(move || {
                    lower_priority();
                    work(&receiver)
                })
                .expect("the OS could not start a hashing thread");
        }
        Self {
            jobs: Mutex::new(sender),
        }
    }

    /// Runs `job` on a pool thread and waits for its result.
    pub async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Error> {
        let (reply, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = reply.send(job());
        });
        self.jobs
            .lock()
            .map_err(|_| Error::Internal("hash pool lock poisoned".into()))?
            .send(job)
            .map_err(|_| Error::Internal("hash pool stopped".into()))?;
        result
            .await
            .map_err(|_| Error::Internal("a hashing job failed".into()))
    }
}

fn work(jobs: &Mutex<Receiver<Job>>) {
    loop {
        // Hold the lock only to take a job, not while running it.
        let job = match jobs.lock() {
            Ok(receiver) => receiver.recv(),
            Err(_) => return,
        };
        match job {
            Ok(job) => job(),
            Err(_) => return,
        }
    }
}
