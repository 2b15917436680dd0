//! Key expiry as events: the lead times of `--expiry-warnings`, when a
//! warning is due, and the events a key's end and its warnings record.

use super::audit::{AuditEvent, GRACE_ENDED, KEY_EXPIRED, KEY_EXPIRING};
use super::key::{KeyEnd, KeyEndKind};
use std::time::Duration;

/// Lead times when none are configured: two weeks and one day ahead.
pub const DEFAULT_LEAD_TIMES: &str = "14d,1d";
/// Most lead times one may configure.
pub const MAX_LEAD_TIMES: usize = 8;
/// Longest lead time: a year.
pub const MAX_LEAD_TIME: Duration = Duration::from_secs(366 * 24 * 3600);

/// How long before a key's end its warnings are sent: distinct whole
/// seconds from 1 s to a year, shortest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeadTimes(Vec<Duration>);

impl LeadTimes {
    /// Parses a comma-separated list of durations (`14d,1d`, `12h`, `30m`,
    /// `45s`); the error says which entry is wrong and why.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut leads = Vec::new();
        for entry in text.split(',').map(str::trim) {
            if entry.is_empty() {
                return Err(format!(
                    "{text:?} has an empty entry; give durations separated by commas, like 14d,1d"
                ));
            }
            let lead = humantime::parse_duration(entry).map_err(|_| {
                format!("{entry:?} is not a duration (like 14d, 1d, 12h, 30m or 45s)")
            })?;
            if lead < Duration::from_secs(1) || lead.subsec_nanos() != 0 {
                return Err(format!(
                    "{entry:?} must be a whole number of seconds, at least 1s"
                ));
            }
            if lead > MAX_LEAD_TIME {
                return Err(format!("{entry:?} is longer than a year"));
            }
            if leads.contains(&lead) {
                return Err(format!("{entry:?} is given twice"));
            }
            leads.push(lead);
        }
        if leads.len() > MAX_LEAD_TIMES {
            return Err(format!("at most {MAX_LEAD_TIMES} lead times"));
        }
        leads.sort_unstable();
        Ok(Self(leads))
    }

    /// The lead times, shortest first.
    pub fn as_slice(&self) -> &[Duration] {
        &self.0
    }

    /// The longest lead time.
    pub fn longest(&self) -> Duration {
        self.0.last().copied().unwrap_or_default()
    }

    /// The warning a sweep owes a key that ends in `remaining`, when sweeps
    /// run every `sweep_interval`: the shortest lead time that the end falls
    /// within before the next sweep (`remaining <= lead + sweep_interval`),
    /// so no warning comes later than its lead time for a key that existed
    /// at the sweep before. Longer lead times that also hold are stale news
    /// and are skipped.
    pub fn warning_due(&self, remaining: Duration, sweep_interval: Duration) -> Option<Duration> {
        if remaining.is_zero() {
            return None;
        }
        self.0
            .iter()
            .copied()
            .find(|lead| remaining <= lead.saturating_add(sweep_interval))
    }
}

impl Default for LeadTimes {
    fn default() -> Self {
        Self::parse(DEFAULT_LEAD_TIMES).expect("the default lead times parse")
    }
}

/// The event of a key's end: KEY_EXPIRED or GRACE_ENDED, about the key and
/// its identity, with the deadline.
pub fn end_event(end: &KeyEnd) -> AuditEvent {
    let action = match end.kind {
        KeyEndKind::Expired => KEY_EXPIRED,
        KeyEndKind::GraceEnded => GRACE_ENDED,
    };
    let mut event = AuditEvent::new(action, format!("{action}:{}:{}", end.key_id, end.at.0));
    event.target_ids = vec![end.key_id.to_string(), end.key_id.identity_id().to_string()];
    event.deadline = Some(end.at);
    event
}

/// The KEY_EXPIRING event for the warning `lead` ahead of `end`.
pub fn warning_event(end: &KeyEnd, lead: Duration) -> AuditEvent {
    let mut event = AuditEvent::new(
        KEY_EXPIRING,
        format!(
            "{KEY_EXPIRING}:{}:{}:{}",
            end.key_id,
            end.at.0,
            lead.as_secs()
        ),
    );
    event.target_ids = vec![end.key_id.to_string(), end.key_id.identity_id().to_string()];
    event.deadline = Some(end.at);
    event.lead_time_seconds = Some(lead.as_secs());
    event
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::audit::EventKind;
    use crate::domain::{IdentityId, KeyId, UnixMillis};

    const DAY: Duration = Duration::from_secs(24 * 3600);

    #[test]
    fn lead_times_parse_and_refuse_clearly() {
        assert_eq!(LeadTimes::default().as_slice(), [DAY, 14 * DAY]);
        let mixed = LeadTimes::parse("45s, 30m,12h").unwrap();
        assert_eq!(
            mixed.as_slice(),
            [
                Duration::from_secs(45),
                Duration::from_secs(1800),
                Duration::from_secs(12 * 3600)
            ]
        );
        for (bad, why) in [
            ("", "empty entry"),
            ("14d,", "empty entry"),
            ("soon", "not a duration"),
            ("-1d", "not a duration"),
            ("0s", "at least 1s"),
            ("1500ms", "whole number of seconds"),
            ("400d", "longer than a year"),
            ("1d,24h", "given twice"),
            ("1s,2s,3s,4s,5s,6s,7s,8s,9s", "at most 8"),
        ] {
            let error = LeadTimes::parse(bad).expect_err(bad);
            assert!(error.contains(why), "{bad:?}: {error}");
        }
    }

    #[test]
    fn a_sweep_sends_the_shortest_lead_time_the_end_falls_within() {
        let leads = LeadTimes::default();
        let sweep = DAY;
        assert_eq!(leads.warning_due(20 * DAY, sweep), None);
        assert_eq!(leads.warning_due(15 * DAY, sweep), Some(14 * DAY));
        // Still the two weeks' warning (its marker stops a second one).
        assert_eq!(leads.warning_due(3 * DAY, sweep), Some(14 * DAY));
        assert_eq!(leads.warning_due(2 * DAY, sweep), Some(DAY));
        // A key made with a short expiry gets one warning, not both.
        assert_eq!(leads.warning_due(Duration::from_secs(60), sweep), Some(DAY));
        assert_eq!(leads.warning_due(Duration::ZERO, sweep), None);
    }

    #[test]
    fn events_name_the_key_and_its_identity() {
        let identity = IdentityId::parse("AAAAAAAAAAAA").unwrap();
        let end = KeyEnd {
            key_id: KeyId::parse("AAAAAAAAAAAAbcdefg").unwrap(),
            kind: KeyEndKind::GraceEnded,
            at: UnixMillis(1_000),
        };
        let ended = end_event(&end);
        assert_eq!(ended.kind(), EventKind::GraceEnded);
        assert!(ended.concerns(&identity));
        assert_eq!(ended.deadline, Some(UnixMillis(1_000)));
        let warning = warning_event(&end, DAY);
        assert_eq!(warning.kind(), EventKind::KeyExpiring);
        assert_eq!(warning.lead_time_seconds, Some(86_400));
        assert!(warning.concerns(&identity));
    }
}
