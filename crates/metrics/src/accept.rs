//! Surviving a failing `accept`, shared by the client, TLS and admin
//! listeners.
//!
//! When the process runs out of file descriptors (EMFILE, ENFILE) or of
//! kernel memory (ENOBUFS, ENOMEM), `accept` fails at once and keeps failing
//! while the pending connection stays queued, so a loop that simply retries
//! spins a core and floods the log. [`AcceptBackoff`] pauses such a loop
//! (briefly and growing, capped well under a second so that accepting resumes
//! promptly once descriptors are free), counts every failure in
//! `herald_accept_errors_total{listener}` and logs at most one WARN line per
//! second per listener, with the number of failures left unlogged since the
//! previous line. Errors that concern only the one connection being accepted
//! (it was reset or aborted while queued) are counted but do not pause.

use crate::Metrics;
use prometheus::IntCounter;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// The first pause after a failed accept; doubled on each further failure.
const FIRST_PAUSE: Duration = Duration::from_millis(5);
/// The longest pause: bounds how late a freed descriptor is noticed.
const MAX_PAUSE: Duration = Duration::from_millis(100);
/// At most one WARN line per listener per this interval.
const LOG_INTERVAL: Duration = Duration::from_secs(1);

/// The accept-error policy of one listener: pause, count, throttle the log.
pub struct AcceptBackoff {
    /// `client`, `tls` or `admin`: the `listener` label and log field.
    listener: &'static str,
    errors: IntCounter,
    /// The pause after the next resource error (reset by a successful accept).
    pause: Duration,
    /// When the last WARN line was written.
    last_log: Option<Instant>,
    /// Failures since the last WARN line that it did not report.
    unlogged: u64,
}

impl AcceptBackoff {
    /// The policy for `listener`; its error series starts at zero.
    pub fn new(metrics: &Metrics, listener: &'static str) -> Self {
        Self {
            listener,
            errors: metrics.accept_errors.with_label_values(&[listener]),
            pause: FIRST_PAUSE,
            last_log: None,
            unlogged: 0,
        }
    }

    /// The next connection of `listener`, riding out failed accepts.
    /// Cancel-safe, like [`TcpListener::accept`].
    pub async fn accept(&mut self, listener: &TcpListener) -> (TcpStream, SocketAddr) {
        loop {
            match listener.accept().await {
                Ok(accepted) => {
                    self.pause = FIRST_PAUSE;
                    return accepted;
                }
                Err(e) => {
                    let pause = self.failed(&e, Instant::now());
                    if !pause.is_zero() {
                        tokio::time::sleep(pause).await;
                    }
                }
            }
        }
    }

    /// Counts and maybe logs `error`; how long to pause before accepting again.
    fn failed(&mut self, error: &io::Error, now: Instant) -> Duration {
        self.errors.inc();
        if let Some(unlogged) = self.log_due(now) {
            tracing::warn!(
                listener = self.listener,
                error = %error,
                unlogged,
                "accept failed (unlogged: further failures since the last such line)"
            );
        }
        if concerns_one_connection(error) {
            return Duration::ZERO;
        }
        let pause = self.pause;
        self.pause = (pause * 2).min(MAX_PAUSE);
        pause
    }

    /// Whether a WARN line is due at `now`, with the failures it reports
    /// beyond this one; else the failure is added to them.
    fn log_due(&mut self, now: Instant) -> Option<u64> {
        if self
            .last_log
            .is_some_and(|last| now.duration_since(last) < LOG_INTERVAL)
        {
            self.unlogged += 1;
            return None;
        }
        self.last_log = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

/// Failures of the one queued connection (the next accept may well succeed),
/// as opposed to a shortage of descriptors or memory.
fn concerns_one_connection(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emfile() -> io::Error {
        io::Error::from_raw_os_error(24)
    }

    #[test]
    fn resource_errors_pause_longer_each_time_up_to_the_cap() {
        let metrics = Metrics::new();
        let mut backoff = AcceptBackoff::new(&metrics, "client");
        let now = Instant::now();
        let pauses: Vec<_> = (0..7).map(|_| backoff.failed(&emfile(), now)).collect();
        let ms = |n| Duration::from_millis(n);
        assert_eq!(
            pauses,
            [ms(5), ms(10), ms(20), ms(40), ms(80), ms(100), ms(100)]
        );
        let aborted = io::Error::from(io::ErrorKind::ConnectionAborted);
        assert_eq!(backoff.failed(&aborted, now), Duration::ZERO);
        assert_eq!(backoff.errors.get(), 8, "every failure is counted");
        assert!(metrics
            .render()
            .contains(r#"herald_accept_errors_total{listener="client"} 8"#));
    }

    #[test]
    fn logs_at_most_once_a_second_with_the_failures_in_between() {
        let metrics = Metrics::new();
        let mut backoff = AcceptBackoff::new(&metrics, "admin");
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        assert_eq!(
            backoff.log_due(at(0)),
            Some(0),
            "the first failure is logged"
        );
        for ms in [1, 300, 999] {
            assert_eq!(backoff.log_due(at(ms)), None);
        }
        assert_eq!(backoff.log_due(at(1000)), Some(3));
        assert_eq!(backoff.log_due(at(1500)), None);
        assert_eq!(backoff.log_due(at(5000)), Some(1));
    }

    #[test]
    fn a_new_policy_exports_its_series_at_zero() {
        let metrics = Metrics::new();
        let _tls = AcceptBackoff::new(&metrics, "tls");
        assert!(metrics
            .render()
            .contains(r#"herald_accept_errors_total{listener="tls"} 0"#));
    }
}
