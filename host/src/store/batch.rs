//! Batched operations: creates queued while one is being written run one after another
//! in a single redb write transaction, executed by one thread (the leader), and share its
//! commit and fsync.
//!
//! Why a leader runs the others' operations: with each operation on its own thread, every
//! operation handed redb's write lock to the next thread and slept twice (for its turn,
//! then for the durable commit); on 2 cores the hand-offs, not the writes, bounded a burst
//! of creates. Here a caller queues its operation and sleeps once, until answered; the
//! first caller to find no leader becomes it, takes the queue (at most [`MAX_OPS`]), runs
//! each operation in one transaction of the store's [`Group`](super::Group), commits (the
//! group decides the fsync), hands the lead to the next queued caller, and answers its
//! batch.
//!
//! An operation that fails before it writes ([`Txn::writing`]; a taken name, bad input)
//! gets its error and the others go on. One that fails after (only storage errors can) or
//! panics aborts the transaction: the operations that ran before it in that transaction
//! get an error ("shared a transaction with one that failed"), the panicking one's caller
//! re-raises the panic, and the rest run in a fresh transaction. A failed commit fails
//! every operation of the batch. Nobody is answered Ok before the fsync that covers it.

use std::any::Any;
use std::collections::VecDeque;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::error::{Result, StoreError};
use super::{Store, Txn};

/// Most operations one batch runs (one transaction's worth of waiting).
pub(crate) const MAX_OPS: usize = 64;

type Op = Box<dyn FnOnce(&Store, &Txn) -> Result<()> + Send>;

/// The queue of one store's batched operations.
#[derive(Default)]
pub(crate) struct Batcher {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// A caller is running a batch (or has been asked to and is waking up).
    leading: bool,
    /// Operations not yet taken by a leader, in arrival order.
    queue: VecDeque<Arc<Job>>,
}

const WAITING: u8 = 0;
const ANSWERED: u8 = 1;
const LEAD: u8 = 2;

/// One caller's operation and its answer.
struct Job {
    op: Mutex<Option<Op>>,
    answer: Mutex<Option<Answer>>,
    thread: std::thread::Thread,
    signal: AtomicU8,
}

enum Answer {
    Done(Result<()>),
    Panicked(Box<dyn Any + Send>),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The error of an operation whose transaction could not be committed, for each of the
/// batch's callers (errors are not `Clone`; kind and text carry over).
fn shared(e: &StoreError) -> StoreError {
    let io = match e {
        StoreError::Db(redb::Error::Io(io)) => std::io::Error::new(io.kind(), io.to_string()),
        e => std::io::Error::other(e.to_string()),
    };
    StoreError::Db(redb::Error::Io(io))
}

fn rolled_back() -> StoreError {
    StoreError::Db(redb::Error::Io(std::io::Error::new(
        std::io::ErrorKind::Interrupted,
        "a write shared a transaction with one that failed; nothing of it was committed",
    )))
}

impl Batcher {
    /// Operations queued and not yet taken by a leader.
    #[cfg(test)]
    pub(crate) fn queued(&self) -> usize {
        lock(&self.state).queue.len()
    }

    /// Runs `op` in a batch and returns once it is durable (or failed).
    pub(crate) fn run(&self, store: &Store, op: Op) -> Result<()> {
        let job = Arc::new(Job {
            op: Mutex::new(Some(op)),
            answer: Mutex::new(None),
            thread: std::thread::current(),
            signal: AtomicU8::new(WAITING),
        });
        let mut leads = {
            let mut st = lock(&self.state);
            st.queue.push_back(job.clone());
            !std::mem::replace(&mut st.leading, true)
        };
        loop {
            if leads {
                self.lead(store);
            }
            let signal = loop {
                match job.signal.load(Ordering::Acquire) {
                    WAITING => std::thread::park(),
                    s => break s,
                }
            };
            if signal == ANSWERED {
                break;
            }
            job.signal.store(WAITING, Ordering::Release);
            leads = true;
        }
        let answer = lock(&job.answer).take().expect("an answered job has its answer");
        match answer {
            Answer::Done(r) => r,
            Answer::Panicked(p) => resume_unwind(p),
        }
    }

    /// Runs the queue's first operations as one batch, passes the lead on, answers them.
    fn lead(&self, store: &Store) {
        let jobs: Vec<Arc<Job>> = {
            let mut st = lock(&self.state);
            let n = st.queue.len().min(MAX_OPS);
            st.queue.drain(..n).collect()
        };
        // `execute` catches the operations' panics; this catches its own, so no caller is
        // ever left waiting.
        let answers = catch_unwind(AssertUnwindSafe(|| execute(store, &jobs))).unwrap_or_else(|_| {
            jobs.iter()
                .map(|_| Answer::Done(Err(StoreError::Corrupt("a batched write failed unexpectedly".into()))))
                .collect()
        });
        {
            let mut st = lock(&self.state);
            match st.queue.front() {
                Some(next) => {
                    next.signal.store(LEAD, Ordering::Release);
                    next.thread.unpark();
                }
                None => st.leading = false,
            }
        }
        for (job, answer) in jobs.iter().zip(answers) {
            *lock(&job.answer) = Some(answer);
            job.signal.store(ANSWERED, Ordering::Release);
            job.thread.unpark();
        }
    }
}

/// Runs `jobs` in as few transactions as their failures allow; one answer per job.
fn execute(store: &Store, jobs: &[Arc<Job>]) -> Vec<Answer> {
    let mut answers: Vec<Option<Answer>> = jobs.iter().map(|_| None).collect();
    let mut next = 0;
    while next < jobs.len() {
        let txn = match store.begin_write() {
            Ok(txn) => txn,
            Err(e) => {
                for a in &mut answers[next..] {
                    *a = Some(Answer::Done(Err(shared(&e))));
                }
                break;
            }
        };
        let mut ran = Vec::new();
        let mut aborted = false;
        while next < jobs.len() && !aborted {
            let i = next;
            next += 1;
            let op = lock(&jobs[i].op).take().expect("an operation runs once");
            txn.begin_operation();
            match catch_unwind(AssertUnwindSafe(|| op(store, &txn))) {
                Ok(Ok(())) => ran.push(i),
                Ok(Err(e)) => {
                    aborted = txn.has_written();
                    answers[i] = Some(Answer::Done(Err(e)));
                }
                Err(payload) => {
                    aborted = true;
                    answers[i] = Some(Answer::Panicked(payload));
                }
            }
        }
        let outcome = if aborted {
            drop(txn);
            Err(rolled_back())
        } else {
            txn.commit()
        };
        for i in ran {
            answers[i] = Some(Answer::Done(outcome.as_ref().map(|_| ()).map_err(shared)));
        }
    }
    answers.into_iter().map(|a| a.unwrap_or_else(|| Answer::Done(Err(rolled_back())))).collect()
}
