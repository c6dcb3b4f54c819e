//! The mail quota of one relay resource, shared by every rotation of the process.
//!
//! Azure Communication Services counts mails per subscription: with an Azure-managed domain
//! 5 a minute and 10 an hour, with a custom domain 30 a minute and 100 an hour, and at most
//! 250 authenticated SMTP connections (Microsoft Learn, "Service limits for Azure
//! Communication Services", Email). The application whose secret we rotate needs the same
//! quota for its invitations and password resets, so test mails are paced to it instead
//! of being refused by it: a [`RelayLimiter`] lets a mail go only when the last minute and
//! the last hour have room, in the order the rotations asked (a fair, FIFO turn), and
//! bounds the SMTP sessions open at once.
//!
//! Hand-rolled: the governor crate paces one rate with its own clock, but here two windows
//! must hold at once and time must come from the engine's injected [`Clock`], so tests and
//! benches simulate hours without sleeping.

use crate::engine::ports::Clock;
use chrono::{DateTime, Utc};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::{Semaphore, SemaphorePermit};

/// How many mails a relay resource may send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MailQuota {
    pub per_minute: u32,
    pub per_hour: u32,
}

impl MailQuota {
    /// ACS with an Azure-managed domain (`DoNotReply@<guid>.azurecomm.net`).
    pub const AZURE_MANAGED: Self = Self { per_minute: 5, per_hour: 10 };
    /// ACS with a verified custom domain.
    pub const CUSTOM_DOMAIN: Self = Self { per_minute: 30, per_hour: 100 };
}

/// SMTP sessions one process keeps open to one relay resource at most: well under the
/// 250 authenticated connections ACS allows a subscription, which the application shares.
pub const DEFAULT_MAX_SESSIONS: usize = 16;

const MINUTE: chrono::Duration = chrono::Duration::minutes(1);
const HOUR: chrono::Duration = chrono::Duration::hours(1);

/// The quota and session bound of one relay resource.
pub struct RelayLimiter {
    quota: Option<MailQuota>,
    clock: Arc<dyn Clock>,
    /// When the mails of the last hour went, oldest first; holding the lock is holding the
    /// turn, and tokio's mutex hands it on in the order it was asked for.
    sent: tokio::sync::Mutex<VecDeque<DateTime<Utc>>>,
    sessions: Semaphore,
}

impl RelayLimiter {
    /// Paces mails to `quota` (none: mails are not paced) on `clock`, and allows
    /// `max_sessions` SMTP sessions at once.
    pub fn new(quota: Option<MailQuota>, max_sessions: usize, clock: Arc<dyn Clock>) -> Self {
        Self {
            quota,
            clock,
            sent: tokio::sync::Mutex::new(VecDeque::new()),
            sessions: Semaphore::new(max_sessions.max(1)),
        }
    }

    /// Waits for room in the quota, then counts one mail; returns how long it waited. When
    /// the room comes later than `max_wait` from now, waits for nothing and says when it
    /// comes: a minted secret must not wait unstored for longer than its verification
    /// budget (another run would take it for an orphan).
    pub async fn mail(&self, max_wait: Duration) -> Result<Duration, DateTime<Utc>> {
        let Some(quota) = self.quota else {
            return Ok(Duration::ZERO);
        };
        let asked = self.clock.now();
        let mut sent = self.sent.lock().await;
        let started = self.clock.now();
        loop {
            let now = self.clock.now();
            while sent.front().is_some_and(|at| *at <= now - HOUR) {
                sent.pop_front();
            }
            let last_minute = sent.iter().filter(|at| **at > now - MINUTE).count();
            // When a slot frees: the oldest mail of a full window leaves it.
            let free_at = if sent.len() >= quota.per_hour as usize {
                sent.front().map(|at| *at + HOUR)
            } else if last_minute >= quota.per_minute as usize {
                sent.iter().find(|at| **at > now - MINUTE).map(|at| *at + MINUTE)
            } else {
                None
            };
            match free_at {
                None => {
                    sent.push_back(now);
                    return Ok((now - started).to_std().unwrap_or_default());
                }
                Some(at) if (at - asked).to_std().unwrap_or_default() > max_wait => return Err(at),
                Some(at) => self.clock.sleep((at - now).to_std().unwrap_or_default()).await,
            }
        }
    }

    /// One SMTP session's place among the bounded few.
    pub async fn session(&self) -> SemaphorePermit<'_> {
        self.sessions
            .acquire()
            .await
            .expect("the semaphore is never closed")
    }
}

/// The limiters of the process, one per relay resource, so every rotation (the
/// controller's, the CronJob pass's, a configuration file's) shares its resource's quota.
pub struct RelayLimiters {
    clock: Arc<dyn Clock>,
    limiters: Mutex<HashMap<String, Arc<RelayLimiter>>>,
}

impl RelayLimiters {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            limiters: Mutex::default(),
        }
    }

    /// The limiter of `resource`; the first rotation to name the resource sets its quota.
    pub fn for_resource(&self, resource: &str, quota: Option<MailQuota>) -> Arc<RelayLimiter> {
        let mut limiters = self.limiters.lock().unwrap_or_else(|e| e.into_inner());
        limiters
            .entry(resource.to_string())
            .or_insert_with(|| {
                Arc::new(RelayLimiter::new(quota, DEFAULT_MAX_SESSIONS, self.clock.clone()))
            })
            .clone()
    }
}

/// The key of a relay resource: the relay and the sending domain (one Communication
/// Services email domain), e.g. `smtp.azurecomm.net:587/<guid>.azurecomm.net`.
pub fn resource_key(host: &str, port: u16, sender_domain: &str) -> String {
    format!("{}:{port}/{}", host.to_ascii_lowercase(), sender_domain.to_ascii_lowercase())
}

/// The quota a relay gets when none is configured: ACS's stricter default (an
/// Azure-managed domain's) for smtp.azurecomm.net, none for other relays.
pub fn default_quota(host: &str) -> Option<MailQuota> {
    host.eq_ignore_ascii_case("smtp.azurecomm.net").then_some(MailQuota::AZURE_MANAGED)
}

/// The process's limiters on the wall clock.
pub fn process_limiters() -> &'static RelayLimiters {
    static LIMITERS: OnceLock<RelayLimiters> = OnceLock::new();
    LIMITERS.get_or_init(|| RelayLimiters::new(Arc::new(crate::engine::ports::SystemClock)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;

    /// Time that passes only when someone sleeps.
    struct SimulatedClock(Mutex<DateTime<Utc>>);

    #[async_trait]
    impl Clock for SimulatedClock {
        fn now(&self) -> DateTime<Utc> {
            *self.0.lock().unwrap()
        }
        async fn sleep(&self, duration: Duration) {
            *self.0.lock().unwrap() += chrono::Duration::from_std(duration).unwrap();
        }
    }

    #[tokio::test]
    async fn mails_are_paced_to_both_windows() {
        let start: DateTime<Utc> = "2026-12-01T12:00:00Z".parse().unwrap();
        let clock = Arc::new(SimulatedClock(Mutex::new(start)));
        let limiter = RelayLimiter::new(Some(MailQuota::AZURE_MANAGED), 4, clock.clone());
        let mut sent_at = Vec::new();
        for _ in 0..21 {
            limiter.mail(Duration::from_secs(3600)).await.unwrap();
            sent_at.push(clock.now() - start);
        }
        let minutes: Vec<i64> = sent_at.iter().map(|d| d.num_minutes()).collect();
        // 5 in the first minute, 5 in the second, then the hour is full until minute 60.
        assert_eq!(minutes, [0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 60, 60, 60, 60, 60, 61, 61, 61, 61, 61, 120]);
    }

    /// Rotations due together get the quota in the order they asked for it.
    #[tokio::test]
    async fn waiters_are_served_in_the_order_they_came() {
        let start: DateTime<Utc> = "2026-12-01T12:00:00Z".parse().unwrap();
        let clock = Arc::new(SimulatedClock(Mutex::new(start)));
        let limiter = RelayLimiter::new(Some(MailQuota { per_minute: 1, per_hour: 60 }), 4, clock.clone());
        let order = Mutex::new(Vec::new());
        let waiters = (0..6).map(|index| {
            let (limiter, order) = (&limiter, &order);
            async move {
                limiter.mail(Duration::from_secs(3600)).await.unwrap();
                order.lock().unwrap().push(index);
            }
        });
        futures::future::join_all(waiters).await;
        assert_eq!(*order.lock().unwrap(), [0, 1, 2, 3, 4, 5]);
        assert_eq!(clock.now() - start, chrono::Duration::minutes(5));
    }

    #[tokio::test]
    async fn without_a_quota_nothing_waits() {
        let start: DateTime<Utc> = "2026-12-01T12:00:00Z".parse().unwrap();
        let clock = Arc::new(SimulatedClock(Mutex::new(start)));
        let limiter = RelayLimiter::new(None, 4, clock.clone());
        for _ in 0..100 {
            assert_eq!(limiter.mail(Duration::ZERO).await, Ok(Duration::ZERO));
        }
        assert_eq!(clock.now(), start);
    }

    #[tokio::test]
    async fn a_wait_longer_than_allowed_is_refused_at_once() {
        let start: DateTime<Utc> = "2026-12-01T12:00:00Z".parse().unwrap();
        let clock = Arc::new(SimulatedClock(Mutex::new(start)));
        let limiter = RelayLimiter::new(Some(MailQuota::AZURE_MANAGED), 4, clock.clone());
        let five_minutes = Duration::from_secs(300);
        for _ in 0..10 {
            limiter.mail(five_minutes).await.unwrap();
        }
        assert_eq!(limiter.mail(five_minutes).await, Err(start + HOUR), "the hour is full");
        assert_eq!(clock.now() - start, chrono::Duration::minutes(1), "only the second minute was waited for");
    }
}
