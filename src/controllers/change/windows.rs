//! Maintenance windows, purely: a `ComputeMaintenanceWindow` read as instants (the schedule calendar's rules
//! for days, DST gaps and repeated hours), whether a gated action may start at a given time, and when it next
//! may. No I/O.
//!
//! Rules:
//! - Intervals are half-open: a window from 22:00 to 02:00 holds 22:00 and not 02:00.
//! - Every covering window with `allow` windows must have one open (a namespace covered by two objects is held
//!   to both); any covering `deny` window or freeze holds an action back.
//! - A window that cannot be read (an unknown zone) holds back every action it covers: change control fails
//!   closed.

use chrono::{DateTime, Datelike, Days, NaiveTime, TimeDelta, Utc};
use chrono_tz::Tz;

use crate::api::{Instance, PowerAction};
use crate::controllers::calendar::{parse_wall_time, parse_zone, resolve};
use crate::crd::access_policy::{InstanceMatch, NamespaceMatch, NamespaceView};
use crate::crd::maintenance_window::{ComputeMaintenanceWindowSpec, WindowKind};

/// How far ahead the next opening is searched (a weekly calendar repeats within 7 days; one more for DST).
pub const HORIZON_DAYS: u64 = 8;

/// A weekly window as the evaluation reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Weekly {
    kind: WindowKind,
    /// Bit `n` set: starts on the weekday numbered `n` from Monday.
    days: u8,
    start: NaiveTime,
    end: NaiveTime,
}

/// One `ComputeMaintenanceWindow`, read.
#[derive(Clone, Debug)]
pub struct MaintenanceWindow {
    pub name: String,
    namespaces: NamespaceMatch,
    instances: Option<InstanceMatch>,
    actions: Vec<PowerAction>,
    calendar: Result<Calendar, String>,
}

#[derive(Clone, Debug)]
struct Calendar {
    zone: Tz,
    weekly: Vec<Weekly>,
    freezes: Vec<(DateTime<Utc>, DateTime<Utc>, Option<String>)>,
}

/// Why a window holds an action back now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeldBy {
    /// Outside every allow window of this object.
    OutsideAllow,
    /// Inside one of its deny windows.
    Deny,
    /// Inside one of its freezes (with the freeze's reason, if it gives one).
    Freeze(Option<String>),
    /// The object cannot be read (the message says why): it holds everything it covers.
    Unreadable(String),
}

/// The decision for one action now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WindowDecision {
    Open,
    Held {
        window: String,
        why: HeldBy,
        /// When the action may next start (every covering window agreeing), if within the horizon.
        until: Option<DateTime<Utc>>,
    },
}

impl MaintenanceWindow {
    pub fn new(name: &str, spec: &ComputeMaintenanceWindowSpec) -> Self {
        Self {
            name: name.to_owned(),
            namespaces: spec.namespaces.clone(),
            instances: spec.instances.clone(),
            actions: spec.actions.clone(),
            calendar: Calendar::new(spec),
        }
    }

    /// Does this object gate `action` of this namespace on this instance? `instance` is `None` when only its ID
    /// is known; a window that selects by attributes then does not cover it.
    pub fn covers(&self, ns: &NamespaceView<'_>, id: &str, instance: Option<&Instance>, action: PowerAction) -> bool {
        self.actions.contains(&action)
            && self.namespaces.matches(ns)
            && self.instances.as_ref().is_none_or(|m| m.matches(id, instance))
    }

    /// Why the object cannot be read, if it cannot.
    pub fn error(&self) -> Option<&str> {
        self.calendar.as_ref().err().map(String::as_str)
    }

    /// Does this object alone let an action start at `t`? `Err` carries why not.
    fn admits(&self, t: DateTime<Utc>) -> Result<(), HeldBy> {
        let calendar = self.calendar.as_ref().map_err(|e| HeldBy::Unreadable(e.clone()))?;
        if let Some((_, _, reason)) = calendar
            .freezes
            .iter()
            .find(|(from, until, _)| *from <= t && t < *until)
        {
            return Err(HeldBy::Freeze(reason.clone()));
        }
        let day_before = t - TimeDelta::days(1);
        let around = calendar.intervals(day_before, t + TimeDelta::days(1));
        if around
            .iter()
            .any(|(k, from, to)| *k == WindowKind::Deny && *from <= t && t < *to)
        {
            return Err(HeldBy::Deny);
        }
        let has_allow = calendar.weekly.iter().any(|w| w.kind == WindowKind::Allow);
        if has_allow
            && !around
                .iter()
                .any(|(k, from, to)| *k == WindowKind::Allow && *from <= t && t < *to)
        {
            return Err(HeldBy::OutsideAllow);
        }
        Ok(())
    }

    /// Instants after which this object's answer may change, from `from` for the horizon.
    fn boundaries(&self, from: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        let Ok(calendar) = &self.calendar else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut starts = vec![from];
        for (a, b, _) in &calendar.freezes {
            out.extend([*a, *b]);
            // The weekly windows after a long freeze ends matter too.
            if *b > from {
                starts.push(*b);
            }
        }
        for start in starts {
            let horizon = start + TimeDelta::days(HORIZON_DAYS as i64);
            for (_, a, b) in calendar.intervals(start - TimeDelta::days(1), horizon) {
                out.extend([a, b]);
            }
        }
        out.retain(|t| *t > from);
        out
    }

    /// When `open` (gated actions may start, for what it covers) changes next, from `now`.
    pub fn next_change(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let open = self.admits(now).is_ok();
        let mut candidates = self.boundaries(now);
        candidates.sort();
        candidates.into_iter().find(|t| self.admits(*t).is_ok() != open)
    }

    /// Whether gated actions may start now, for what it covers.
    pub fn open_at(&self, now: DateTime<Utc>) -> bool {
        self.admits(now).is_ok()
    }
}

impl Calendar {
    fn new(spec: &ComputeMaintenanceWindowSpec) -> Result<Self, String> {
        let zone = parse_zone(&spec.time_zone).map_err(|e| e.to_string())?;
        let weekly = spec
            .windows
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let time = |s: &str, field: &str| {
                    parse_wall_time(s)
                        .ok_or_else(|| format!("windows[{i}].{field} {s:?} is not a wall-clock time HH:MM"))
                };
                let days = if w.days.is_empty() {
                    0x7f
                } else {
                    w.days
                        .iter()
                        .fold(0u8, |acc, d| acc | 1 << d.weekday().num_days_from_monday())
                };
                Ok(Weekly {
                    kind: w.kind,
                    days,
                    start: time(&w.start, "start")?,
                    end: time(&w.end, "end")?,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let freezes = spec
            .freezes
            .iter()
            .map(|f| (f.from, f.until, f.reason.clone()))
            .collect();
        Ok(Self { zone, weekly, freezes })
    }

    /// Every weekly interval that starts on a local date from `from`'s to `to`'s (in the zone), in instants.
    fn intervals(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<(WindowKind, DateTime<Utc>, DateTime<Utc>)> {
        let first = from.with_timezone(&self.zone).date_naive();
        let last = to.with_timezone(&self.zone).date_naive();
        let mut out = Vec::new();
        for date in first.iter_days().take_while(|d| *d <= last) {
            let bit = 1u8 << date.weekday().num_days_from_monday();
            for w in self.weekly.iter().filter(|w| w.days & bit != 0) {
                let end_date = if w.end <= w.start {
                    date.checked_add_days(Days::new(1))
                } else {
                    Some(date)
                };
                let (Some(a), Some(b)) = (
                    resolve(self.zone, date.and_time(w.start)),
                    end_date.and_then(|d| resolve(self.zone, d.and_time(w.end))),
                ) else {
                    continue;
                };
                // A window that a DST change shrank to nothing holds nothing.
                if b > a {
                    out.push((w.kind, a, b));
                }
            }
        }
        out
    }
}

/// The decision for an action of `ns` on an instance at `now`, given the windows that cover it.
pub fn decide(covering: &[&MaintenanceWindow], now: DateTime<Utc>) -> WindowDecision {
    let Some((window, why)) = covering
        .iter()
        .find_map(|w| w.admits(now).err().map(|why| (w.name.clone(), why)))
    else {
        return WindowDecision::Open;
    };
    let mut candidates: Vec<DateTime<Utc>> = covering.iter().flat_map(|w| w.boundaries(now)).collect();
    candidates.sort();
    candidates.dedup();
    let until = candidates
        .into_iter()
        .find(|t| covering.iter().all(|w| w.admits(*t).is_ok()));
    WindowDecision::Held { window, why, until }
}

/// The condition message of a held action: the window's name and times only (never what else it covers).
pub fn held_message(action: PowerAction, window: &str, why: &HeldBy, until: Option<DateTime<Utc>>) -> String {
    let cause = match why {
        HeldBy::OutsideAllow => format!("outside the allow windows of maintenance window {window}"),
        HeldBy::Deny => format!("inside a deny window of maintenance window {window}"),
        HeldBy::Freeze(Some(reason)) => format!("inside a change freeze of maintenance window {window} ({reason})"),
        HeldBy::Freeze(None) => format!("inside a change freeze of maintenance window {window}"),
        HeldBy::Unreadable(e) => {
            format!("maintenance window {window} cannot be read ({e}), so it holds back what it covers")
        }
    };
    match until {
        Some(t) => format!(
            "{action} waits: {cause}; next allowed at {}",
            t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
        None => format!("{action} waits: {cause}; no allowed time in the next {HORIZON_DAYS} days"),
    }
}

#[cfg(test)]
#[path = "windows_tests.rs"]
mod tests;
