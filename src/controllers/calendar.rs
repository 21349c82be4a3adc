//! The pure calendar of a power schedule: wall-clock events in an IANA zone turned into instants. No I/O.
//!
//! Rules (documented in the README and tested below):
//! - **Spring forward** (a wall-clock time that does not exist that day): the event runs at the first valid
//!   instant after it, i.e. the moment the clocks jump (Madrid 02:30 on the last Sunday of March runs at 03:00
//!   CEST; Lord Howe 02:15 runs at 02:30, its shift being half an hour).
//! - **Fall back** (a wall-clock time that happens twice): the event runs once, at the first occurrence.
//! - **Overlap** (several events resolving to the same instant, which a DST gap can cause even when the `at`
//!   values differ): one event is kept. The one whose intended wall-clock time is latest wins, because it was
//!   meant to happen last (02:30 stop and 03:00 start on a spring-forward day start); for the same wall-clock
//!   time, `stopped` wins (the API server already rejects two events at the same `at` on a common day with
//!   different states, so this only settles what slips past it).
//! - `days` are days of the week in the schedule's zone; an event without `days` happens every day.

use chrono::{DateTime, Datelike, Days, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;

use crate::crd::power_schedule::{ComputePowerScheduleSpec, ScheduleEvent, ScheduledState};

/// The longest run of non-existent local time searched for a valid instant (zones have skipped a whole day).
const MAX_GAP_MINUTES: u32 = 48 * 60;
/// Days searched around "now": an event with `days` recurs within a week; one more for gap shifts.
const SEARCH_DAYS: u64 = 8;

/// Why a spec cannot be read as a calendar.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CalendarError {
    #[error(
        "timeZone {0:?} is not a known IANA time zone (examples: Europe/Madrid, America/New_York, UTC); names are case-sensitive"
    )]
    UnknownTimeZone(String),
    #[error("event {index}: at {value:?} is not a 24-hour wall-clock time HH:MM")]
    BadTime { index: usize, value: String },
    #[error("the schedule has no events")]
    NoEvents,
}

/// One event as the calendar reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CalendarEvent {
    pub at: NaiveTime,
    /// Bit `n` set: happens on the weekday numbered `n` from Monday.
    pub days: u8,
    pub state: ScheduledState,
}

/// Events in a zone.
#[derive(Clone, Debug)]
pub struct Calendar {
    zone: Tz,
    events: Vec<CalendarEvent>,
}

/// An event at an instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Occurrence {
    pub at: DateTime<Utc>,
    pub state: ScheduledState,
}

/// A candidate before overlaps are merged: what was intended (local date and time) and when it lands.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    at: DateTime<Utc>,
    intended: NaiveDateTime,
    state: ScheduledState,
}

/// `HH:MM`, 24-hour, exactly five characters.
pub fn parse_wall_time(s: &str) -> Option<NaiveTime> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 || !h.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    NaiveTime::from_hms_opt(h.parse().ok()?, m.parse().ok()?, 0)
}

/// An IANA zone name, as compiled into the binary (case-sensitive, like the tz database).
pub fn parse_zone(name: &str) -> Result<Tz, CalendarError> {
    name.parse::<Tz>()
        .map_err(|_| CalendarError::UnknownTimeZone(name.to_owned()))
}

/// `1h`, `30m`, `90s`, `1h30m`: hours, minutes and seconds in that order, at least one.
pub fn parse_deadline(s: &str) -> Option<TimeDelta> {
    crate::crd::duration::seconds(s).and_then(TimeDelta::try_seconds)
}

impl Calendar {
    pub fn new(zone: &str, events: &[ScheduleEvent]) -> Result<Self, CalendarError> {
        let zone = parse_zone(zone)?;
        if events.is_empty() {
            return Err(CalendarError::NoEvents);
        }
        let events = events
            .iter()
            .enumerate()
            .map(|(index, e)| {
                let at = parse_wall_time(&e.at).ok_or_else(|| CalendarError::BadTime {
                    index,
                    value: e.at.clone(),
                })?;
                let days = if e.days.is_empty() {
                    0x7f
                } else {
                    e.days
                        .iter()
                        .fold(0u8, |acc, d| acc | 1 << d.weekday().num_days_from_monday())
                };
                Ok(CalendarEvent {
                    at,
                    days,
                    state: e.state,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { zone, events })
    }

    pub fn from_spec(spec: &ComputePowerScheduleSpec) -> Result<Self, CalendarError> {
        Self::new(&spec.time_zone, &spec.events)
    }

    pub fn zone(&self) -> Tz {
        self.zone
    }

    /// The first event strictly after `now`.
    pub fn next_event(&self, now: DateTime<Utc>) -> Option<Occurrence> {
        let today = self.local_date(now);
        let from = today.checked_sub_days(Days::new(1))?;
        let to = today.checked_add_days(Days::new(SEARCH_DAYS))?;
        self.occurrences(from, to).into_iter().find(|o| o.at > now)
    }

    /// The last event at or before `now`.
    pub fn last_event(&self, now: DateTime<Utc>) -> Option<Occurrence> {
        let today = self.local_date(now);
        let from = today.checked_sub_days(Days::new(SEARCH_DAYS))?;
        let to = today.checked_add_days(Days::new(1))?;
        self.occurrences(from, to).into_iter().rev().find(|o| o.at <= now)
    }

    /// Every event on the local dates `from..=to`, in time order, overlaps merged (see the module rules).
    pub fn occurrences(&self, from: NaiveDate, to: NaiveDate) -> Vec<Occurrence> {
        let mut candidates = Vec::new();
        for date in from.iter_days().take_while(|d| *d <= to) {
            let bit = 1u8 << date.weekday().num_days_from_monday();
            for e in self.events.iter().filter(|e| e.days & bit != 0) {
                let intended = date.and_time(e.at);
                if let Some(at) = resolve(self.zone, intended) {
                    candidates.push(Candidate {
                        at,
                        intended,
                        state: e.state,
                    });
                }
            }
        }
        // Sorted so that, among candidates at one instant, the winner comes last.
        candidates.sort_by_key(|c| (c.at, c.intended, c.state));
        let mut merged: Vec<Occurrence> = Vec::with_capacity(candidates.len());
        for c in candidates {
            match merged.last_mut() {
                Some(last) if last.at == c.at => last.state = c.state,
                _ => merged.push(Occurrence {
                    at: c.at,
                    state: c.state,
                }),
            }
        }
        merged
    }

    fn local_date(&self, now: DateTime<Utc>) -> NaiveDate {
        now.with_timezone(&self.zone).date_naive()
    }
}

/// The instant a wall-clock time stands for: itself; the first of two (fall back); or the first valid instant
/// after it (spring forward: the transition itself, found as the first local minute that exists again).
pub fn resolve(zone: Tz, wall: NaiveDateTime) -> Option<DateTime<Utc>> {
    match zone.from_local_datetime(&wall) {
        LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
        LocalResult::Ambiguous(a, b) => Some(a.min(b).with_timezone(&Utc)),
        LocalResult::None => {
            let mut probe = wall;
            for _ in 0..MAX_GAP_MINUTES {
                probe = probe.checked_add_signed(TimeDelta::minutes(1))?;
                match zone.from_local_datetime(&probe) {
                    LocalResult::Single(t) => return Some(t.with_timezone(&Utc)),
                    LocalResult::Ambiguous(a, b) => return Some(a.min(b).with_timezone(&Utc)),
                    LocalResult::None => {}
                }
            }
            None
        }
    }
}

#[cfg(test)]
#[path = "calendar_tests.rs"]
mod tests;
