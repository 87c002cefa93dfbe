//! Batched operations: a namespace's frequent writes (creates, updates, deletes and
//! restores, audited reveals and unseals, test records) queued while one is being written
//! run one after another in a single redb write transaction, executed by one thread (the
//! leader), and share its commit and fsync.
//!
//! Why a leader runs the others' operations: with each operation on its own thread, every
//! operation handed redb's write lock to the next thread and slept twice (for its turn,
//! then for the durable commit); on 2 cores the hand-offs, not the writes, bounded a burst
//! of writes. Here a caller queues its operation and sleeps once, until answered; the
//! first caller to find no leader becomes it, takes the queue (at most [`MAX_OPS`]), runs
//! each operation in one transaction of the store's [`Group`](super::Group), commits (the
//! group decides the fsync), hands the lead to the next queued caller, and answers its
//! batch.
//!
//! While the leader runs, callers keep queueing: it takes those too (up to [`MAX_OPS`]),
//! so the batch absorbs arrivals instead of committing one operation alone.
//!
//! An operation that fails before it writes ([`Txn::writing`]; a taken name, bad input)
//! is answered with its error once its transaction's fate is known. One that fails after
//! (only storage errors can) or panics aborts the transaction: it alone gets its error
//! (a panic is re-raised in its caller's thread), and the operations that ran before it
//! run again in a fresh transaction (nothing of theirs was stored; an operation is a
//! `FnMut` for that). A failed commit fails every operation run in that transaction.
//! Nobody is answered Ok before the fsync that covers it.
//!
//! An operation runs on the leader's thread while it holds the group's turn: it may use
//! only the transaction it is given (a `begin_write` or another batched write inside it
//! would wait for itself), and not the caller's thread-locals.

use std::any::Any;
use std::collections::VecDeque;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::error::{Result, StoreError};
use super::{Store, Txn};

/// Most operations one batch runs (one transaction's worth of waiting).
pub(crate) const MAX_OPS: usize = 64;

type Op = Box<dyn FnMut(&Store, &Txn) -> Result<()> + Send>;

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

/// The error of a transaction that could not begin or commit, for each operation in it
/// (errors are not `Clone`; kind and text carry over, without a second "database:").
fn shared(e: &StoreError) -> StoreError {
    let io = match e {
        StoreError::Db(redb::Error::Io(io)) => std::io::Error::new(io.kind(), io.to_string()),
        StoreError::Db(inner) => std::io::Error::other(inner.to_string()),
        e => std::io::Error::other(e.to_string()),
    };
    StoreError::Db(redb::Error::Io(io))
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

    /// Runs a batch from the queue (its first operation is the leader's own), passes the
    /// lead on, answers the batch.
    fn lead(&self, store: &Store) {
        let taken = Mutex::new(Vec::new());
        // `execute` catches the operations' panics; this catches its own, so no caller is
        // ever left waiting (not knowing whether the commit happened, it says so).
        let answered = catch_unwind(AssertUnwindSafe(|| self.execute(store, &taken))).unwrap_or_else(|_| {
            let unknown = || std::io::Error::other("a batched write failed unexpectedly; it may or may not be stored");
            lock(&taken).iter().map(|job: &Arc<Job>| (job.clone(), Answer::Done(Err(StoreError::Db(redb::Error::Io(unknown())))))).collect()
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
        for (job, answer) in answered {
            // Its operation (and what it holds) goes before its caller wakes.
            drop(lock(&job.op).take());
            *lock(&job.answer) = Some(answer);
            job.signal.store(ANSWERED, Ordering::Release);
            job.thread.unpark();
        }
    }

    /// The next operation to run: one to run again, else the queue's next while the batch
    /// has room. Every job taken from the queue is listed in `taken`.
    fn next(&self, again: &mut VecDeque<Arc<Job>>, taken: &Mutex<Vec<Arc<Job>>>) -> Option<Arc<Job>> {
        if let Some(job) = again.pop_front() {
            return Some(job);
        }
        let mut taken = lock(taken);
        if taken.len() >= MAX_OPS {
            return None;
        }
        let job = lock(&self.state).queue.pop_front()?;
        taken.push(job.clone());
        Some(job)
    }

    /// Runs operations from the queue in one transaction (a fresh one after each abort,
    /// for the operations to run again) and commits it; returns one answer for every job
    /// it took. Arrivals after the commit wait for the next leader, so nobody waits for
    /// more than the commit that covers it.
    fn execute(&self, store: &Store, taken: &Mutex<Vec<Arc<Job>>>) -> Vec<(Arc<Job>, Answer)> {
        let mut answered = Vec::new();
        let mut again = VecDeque::new();
        while let Some(first) = self.next(&mut again, taken) {
            let txn = match store.begin_write() {
                Ok(txn) => txn,
                Err(e) => {
                    for job in std::iter::once(first).chain(again.drain(..)) {
                        answered.push((job, Answer::Done(Err(shared(&e)))));
                    }
                    break;
                }
            };
            // Operations run in this transaction, with their refusals.
            let mut ran: Vec<(Arc<Job>, Result<()>)> = Vec::new();
            let mut aborted = false;
            let mut current = Some(first);
            while let Some(job) = current.take() {
                txn.begin_operation();
                let outcome = {
                    let mut op = lock(&job.op);
                    let op = op.as_mut().expect("an operation is there until answered");
                    catch_unwind(AssertUnwindSafe(|| op(store, &txn)))
                };
                match outcome {
                    Ok(Ok(())) => ran.push((job, Ok(()))),
                    Ok(Err(e)) if !txn.has_written() => ran.push((job, Err(e))),
                    Ok(Err(e)) => {
                        answered.push((job, Answer::Done(Err(e))));
                        aborted = true;
                    }
                    Err(payload) => {
                        answered.push((job, Answer::Panicked(payload)));
                        aborted = true;
                    }
                }
                if !aborted {
                    current = self.next(&mut again, taken);
                }
            }
            if aborted {
                // Nothing of theirs was stored, and a refusal may have seen the writes of
                // the operations before it: all run again, in order, in a fresh transaction.
                drop(txn);
                for (job, _) in ran.into_iter().rev() {
                    again.push_front(job);
                }
                continue;
            }
            let outcome = if ran.iter().any(|(_, r)| r.is_ok()) {
                txn.commit()
            } else {
                drop(txn); // refusals only: nothing to commit
                Ok(())
            };
            for (job, result) in ran {
                let answer = match &outcome {
                    Ok(()) => result,
                    Err(e) => Err(shared(e)),
                };
                answered.push((job, Answer::Done(answer)));
            }
            debug_assert!(again.is_empty(), "operations to run again run before the commit");
            break;
        }
        answered
    }
}
