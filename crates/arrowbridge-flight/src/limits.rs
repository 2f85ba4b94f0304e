//! How long a client call may take, and how its caller stops it.
//!
//! Every blocking call of [`crate::Client`] waits under [`CallLimits`]: a deadline (the
//! client's default, [`crate::ClientOptions::timeout`], or the one of the scope the call
//! runs in) and an interruption check that the waiting thread runs every
//! [`CHECK_EVERY`] — the Python binding's runs `PyErr_CheckSignals`, so Ctrl+C stops a call
//! within that time. A call that stops drops its future: its connections' streams are reset
//! (the server sees the cancellation) and what it had received is freed.
//!
//! ```
//! use std::time::Duration;
//! use arrowbridge_flight::limits::{scoped, CallLimits};
//!
//! // Every call made inside the closure, on this thread, must end within 2 s.
//! let limits = CallLimits::timeout(Some(Duration::from_secs(2)));
//! let answer = scoped(limits, || 42);
//! assert_eq!(answer, 42);
//! ```

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

/// How often a waiting call checks whether it was interrupted.
pub const CHECK_EVERY: Duration = Duration::from_millis(20);

/// The limits of the calls made in a [`scoped`] closure.
#[derive(Clone, Default)]
pub struct CallLimits {
    /// How long the calls may take together, from the start of the scope; `None` leaves
    /// the client's default.
    pub timeout: Option<Duration>,
    /// Checked every [`CHECK_EVERY`] while a call waits: `true` stops it with
    /// [`crate::ClientError::Interrupted`].
    pub interrupted: Option<Rc<dyn Fn() -> bool>>,
}

impl std::fmt::Debug for CallLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallLimits")
            .field("timeout", &self.timeout)
            .field("interrupted", &self.interrupted.is_some())
            .finish()
    }
}

impl CallLimits {
    /// Limits of a timeout alone.
    pub fn timeout(timeout: Option<Duration>) -> Self {
        CallLimits {
            timeout,
            interrupted: None,
        }
    }
}

/// The limits in force for a call: when it must end and how to tell it was interrupted.
#[derive(Clone)]
pub(crate) struct Deadline {
    pub(crate) started: Instant,
    pub(crate) at: Option<Instant>,
    pub(crate) interrupted: Option<Rc<dyn Fn() -> bool>>,
    /// Set once the check said so: every later call of the scope is interrupted too (the
    /// check consumes what it saw, and a call that swallowed the error must not make the
    /// next one wait on).
    latched: Rc<Cell<bool>>,
}

impl Deadline {
    /// How long the call may still wait (zero once it is past).
    pub(crate) fn remaining(&self) -> Option<Duration> {
        self.at
            .map(|at| at.saturating_duration_since(Instant::now()))
    }

    /// Whether the caller asked the call to stop.
    pub(crate) fn is_interrupted(&self) -> bool {
        if !self.latched.get() && self.interrupted.as_ref().is_some_and(|check| check()) {
            self.latched.set(true);
        }
        self.latched.get()
    }

    /// Ends once the deadline has passed (never without one).
    ///
    /// The clock is read at every poll, and tokio's timer only wakes the waiting task: a
    /// timer fires when a worker thread of the runtime turns its driver, which one busy
    /// moving a transfer's bytes does late. The task that waits is polled often meanwhile
    /// (the future it races yields every few milliseconds), and mid-get of 1 GiB it saw
    /// deadlines that tokio's timer alone reported up to 23 ms late.
    pub(crate) async fn expired(&self) {
        let Some(at) = self.at else {
            return std::future::pending().await;
        };
        let mut timer = std::pin::pin!(tokio::time::sleep_until(at.into()));
        std::future::poll_fn(|cx| {
            if Instant::now() >= at {
                return Poll::Ready(());
            }
            timer.as_mut().poll(cx)
        })
        .await
    }

    /// Ends once the interruption check says so, run every [`CHECK_EVERY`] by the clock
    /// as [`Deadline::expired`] reads it (never without a check).
    pub(crate) async fn interruption(&self) {
        if self.interrupted.is_none() {
            return std::future::pending().await;
        }
        let mut next = Instant::now() + CHECK_EVERY;
        let mut timer = std::pin::pin!(tokio::time::sleep_until(next.into()));
        std::future::poll_fn(|cx| loop {
            if Instant::now() < next && timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if self.is_interrupted() {
                return Poll::Ready(());
            }
            next = Instant::now() + CHECK_EVERY;
            timer.as_mut().reset(next.into());
        })
        .await
    }
}

thread_local! {
    static SCOPE: RefCell<Option<Deadline>> = const { RefCell::new(None) };
}

/// Runs `f` with every client call it makes on this thread under `limits`; scopes nest, the
/// innermost applying.
pub fn scoped<T>(limits: CallLimits, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let deadline = Deadline {
        started,
        at: limits.timeout.and_then(|t| started.checked_add(t)),
        interrupted: limits.interrupted,
        latched: Rc::default(),
    };
    struct Restore(Option<Deadline>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let outer = self.0.take();
            SCOPE.with(|scope| *scope.borrow_mut() = outer);
        }
    }
    let outer = SCOPE.with(|scope| scope.borrow_mut().replace(deadline));
    let _restore = Restore(outer);
    f()
}

/// The limits of a call starting now: its scope's, with the client's `default` timeout
/// where the scope sets none.
pub(crate) fn current(default: Option<Duration>) -> Deadline {
    let now = Instant::now();
    let scoped = SCOPE.with(|scope| scope.borrow().clone());
    match scoped {
        Some(mut deadline) => {
            if deadline.at.is_none() {
                deadline.at = default.and_then(|t| deadline.started.checked_add(t));
            }
            deadline
        }
        None => Deadline {
            started: now,
            at: default.and_then(|t| now.checked_add(t)),
            interrupted: None,
            latched: Rc::default(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How long `wait` takes to end, polled (between the turns of a future that yields
    /// without end, as a transfer whose bytes are always ready does) on the thread that
    /// blocks on a runtime whose one worker thread is busy for `busy` meanwhile, so that
    /// nothing turns the runtime's timer.
    fn waited_while_the_worker_is_busy<F: Future<Output = ()>>(
        busy: Duration,
        wait: impl FnOnce() -> F,
    ) -> Duration {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_time()
            .build()
            .unwrap();
        let (started, is_busy) = std::sync::mpsc::channel();
        runtime.spawn(async move {
            started.send(()).unwrap();
            std::thread::sleep(busy);
        });
        is_busy.recv().unwrap();
        let start = Instant::now();
        runtime.block_on(async {
            let transfer = async {
                loop {
                    tokio::task::yield_now().await;
                }
            };
            tokio::select! {
                biased;
                () = wait() => {}
                () = transfer => {}
            }
        });
        let waited = start.elapsed();
        runtime.shutdown_background();
        waited
    }

    #[test]
    fn a_deadline_is_seen_when_it_passes_though_the_runtime_is_too_busy_to_fire_timers() {
        let busy = Duration::from_secs(2);
        let deadline = Deadline {
            started: Instant::now(),
            at: Some(Instant::now() + Duration::from_millis(10)),
            interrupted: None,
            latched: Rc::default(),
        };
        let waited = waited_while_the_worker_is_busy(busy, || deadline.expired());
        // tokio's timer alone would end it only once the worker is free again.
        assert!(waited < busy / 2, "the deadline was seen {waited:?} in");
        assert!(Instant::now() >= deadline.at.unwrap());
    }

    #[test]
    fn an_interruption_is_checked_on_time_though_the_runtime_is_too_busy_to_fire_timers() {
        let busy = Duration::from_secs(2);
        let checks = Rc::new(Cell::new(0));
        let counted = checks.clone();
        let deadline = Deadline {
            started: Instant::now(),
            at: None,
            // Says so at its third check.
            interrupted: Some(Rc::new(move || {
                counted.set(counted.get() + 1);
                counted.get() == 3
            })),
            latched: Rc::default(),
        };
        let waited = waited_while_the_worker_is_busy(busy, || deadline.interruption());
        assert_eq!(checks.get(), 3);
        assert!(waited >= 3 * CHECK_EVERY, "checked too often: {waited:?}");
        assert!(waited < busy / 2, "the interruption was seen {waited:?} in");
    }

    #[test]
    fn scopes_nest_and_restore_the_outer_limits() {
        assert!(current(None).at.is_none());
        let outer = CallLimits::timeout(Some(Duration::from_secs(60)));
        scoped(outer, || {
            let at = current(None).at.expect("the scope's deadline");
            assert!(at > Instant::now() + Duration::from_secs(59));
            let inner = CallLimits {
                timeout: Some(Duration::from_millis(5)),
                interrupted: Some(Rc::new(|| true)),
            };
            scoped(inner, || {
                let deadline = current(None);
                assert!(deadline.is_interrupted());
                // Latched: a later call of the scope sees it even if the check does not.
                assert!(current(None).latched.get());
                assert!(deadline.remaining().unwrap() <= Duration::from_millis(5));
            });
            assert!(!current(None).is_interrupted());
            assert_eq!(current(None).at, Some(at));
        });
        // The client's default applies outside any scope, and inside one without a timeout.
        assert!(current(Some(Duration::from_secs(1))).at.is_some());
        scoped(CallLimits::default(), || {
            assert!(current(Some(Duration::from_secs(1))).at.is_some());
        });
    }
}
