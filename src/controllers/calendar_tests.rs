//! Table tests of the calendar: DST in three zones (one with a half-hour shift), midnight wrap, weekday
//! filters, one-sided schedules, overlaps.

use super::*;
use crate::crd::power_schedule::Day::{self, *};
use crate::crd::power_schedule::ScheduledState::{Running, Stopped};

fn ev(at: &str, days: &[Day], state: ScheduledState) -> ScheduleEvent {
    ScheduleEvent {
        at: at.into(),
        days: days.to_vec(),
        state,
    }
}

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn office_hours() -> Vec<ScheduleEvent> {
    vec![
        ev("07:00", &[Mon, Tue, Wed, Thu, Fri], Running),
        ev("19:00", &[Mon, Tue, Wed, Thu, Fri], Stopped),
    ]
}

/// (what, zone, events, now, next (UTC, state), last (UTC, state)).
type Row = (
    &'static str,
    &'static str,
    Vec<ScheduleEvent>,
    &'static str,
    Option<(&'static str, ScheduledState)>,
    Option<(&'static str, ScheduledState)>,
);

fn rows() -> Vec<Row> {
    vec![
        (
            "office hours: Friday evening waits for Monday",
            "Europe/Madrid",
            office_hours(),
            "2026-12-04T20:00:00+01:00",
            Some(("2026-12-07T06:00:00Z", Running)),
            Some(("2026-12-04T18:00:00Z", Stopped)),
        ),
        (
            "office hours: Saturday noon",
            "Europe/Madrid",
            office_hours(),
            "2026-12-05T12:00:00+01:00",
            Some(("2026-12-07T06:00:00Z", Running)),
            Some(("2026-12-04T18:00:00Z", Stopped)),
        ),
        (
            "office hours: Tuesday morning before 07:00",
            "Europe/Madrid",
            office_hours(),
            "2026-12-01T06:59:00+01:00",
            Some(("2026-12-01T06:00:00Z", Running)),
            Some(("2026-11-30T18:00:00Z", Stopped)),
        ),
        (
            "office hours in summer time (UTC+2)",
            "Europe/Madrid",
            office_hours(),
            "2026-07-01T12:00:00Z",
            Some(("2026-07-01T17:00:00Z", Stopped)),
            Some(("2026-07-01T05:00:00Z", Running)),
        ),
        (
            "Madrid spring forward: 02:30 does not exist, runs at 03:00 CEST",
            "Europe/Madrid",
            vec![ev("02:30", &[], Running)],
            "2026-03-29T00:00:00+01:00",
            Some(("2026-03-29T01:00:00Z", Running)),
            Some(("2026-03-28T01:30:00Z", Running)),
        ),
        (
            "Madrid spring forward: 02:30 stop and 03:00 start collide, the later wall time wins",
            "Europe/Madrid",
            vec![ev("02:30", &[], Stopped), ev("03:00", &[], Running)],
            "2026-03-29T00:00:00+01:00",
            Some(("2026-03-29T01:00:00Z", Running)),
            Some(("2026-03-28T02:00:00Z", Running)),
        ),
        (
            "Madrid spring forward: after the merged event, the next day's 02:30 CEST",
            "Europe/Madrid",
            vec![ev("02:30", &[], Stopped), ev("03:00", &[], Running)],
            "2026-03-29T01:00:00Z",
            Some(("2026-03-30T00:30:00Z", Stopped)),
            Some(("2026-03-29T01:00:00Z", Running)),
        ),
        (
            "Madrid fall back: 02:30 happens twice, runs at the first (CEST)",
            "Europe/Madrid",
            vec![ev("02:30", &[], Running)],
            "2026-10-25T00:00:00Z",
            Some(("2026-10-25T00:30:00Z", Running)),
            Some(("2026-10-24T00:30:00Z", Running)),
        ),
        (
            "Madrid fall back: the repeated 02:30 (CET) is not a second event",
            "Europe/Madrid",
            vec![ev("02:30", &[], Running)],
            "2026-10-25T00:30:00Z",
            Some(("2026-10-26T01:30:00Z", Running)),
            Some(("2026-10-25T00:30:00Z", Running)),
        ),
        (
            "New York spring forward: 02:15 runs at 03:00 EDT",
            "America/New_York",
            vec![ev("02:15", &[], Stopped)],
            "2026-03-08T01:00:00-05:00",
            Some(("2026-03-08T07:00:00Z", Stopped)),
            Some(("2026-03-07T07:15:00Z", Stopped)),
        ),
        (
            "New York fall back: 01:30 runs once, at 01:30 EDT",
            "America/New_York",
            vec![ev("01:30", &[], Stopped)],
            "2026-11-01T05:00:00Z",
            Some(("2026-11-01T05:30:00Z", Stopped)),
            Some(("2026-10-31T05:30:00Z", Stopped)),
        ),
        (
            "New York fall back: between the two 01:30s nothing is due",
            "America/New_York",
            vec![ev("01:30", &[], Stopped)],
            "2026-11-01T06:45:00Z",
            Some(("2026-11-02T06:30:00Z", Stopped)),
            Some(("2026-11-01T05:30:00Z", Stopped)),
        ),
        (
            "Lord Howe spring forward (half hour): 02:15 runs at 02:30 LHDT",
            "Australia/Lord_Howe",
            vec![ev("02:15", &[], Running)],
            "2026-10-04T01:30:00+10:30",
            Some(("2026-10-03T15:30:00Z", Running)),
            Some(("2026-10-02T15:45:00Z", Running)),
        ),
        (
            "Lord Howe spring forward: 02:45 exists (+11:00)",
            "Australia/Lord_Howe",
            vec![ev("02:45", &[], Running)],
            "2026-10-04T01:30:00+10:30",
            Some(("2026-10-03T15:45:00Z", Running)),
            Some(("2026-10-02T16:15:00Z", Running)),
        ),
        (
            "Lord Howe fall back (half hour): 01:45 runs once, at the first (+11:00)",
            "Australia/Lord_Howe",
            vec![ev("01:45", &[], Stopped)],
            "2026-04-04T14:00:00Z",
            Some(("2026-04-04T14:45:00Z", Stopped)),
            Some(("2026-04-03T14:45:00Z", Stopped)),
        ),
        (
            "Lord Howe fall back: the repeated 01:45 (+10:30) is skipped",
            "Australia/Lord_Howe",
            vec![ev("01:45", &[], Stopped)],
            "2026-04-04T14:45:00Z",
            Some(("2026-04-05T15:15:00Z", Stopped)),
            Some(("2026-04-04T14:45:00Z", Stopped)),
        ),
        (
            "midnight wrap: night window 22:00-02:00, now just after midnight",
            "Europe/Madrid",
            vec![ev("22:00", &[], Running), ev("02:00", &[], Stopped)],
            "2026-12-02T00:30:00+01:00",
            Some(("2026-12-02T01:00:00Z", Stopped)),
            Some(("2026-12-01T21:00:00Z", Running)),
        ),
        (
            "midnight wrap with days: Friday 23:59 waits for Saturday 00:00",
            "Europe/Madrid",
            vec![ev("00:00", &[Sat], Stopped), ev("00:00", &[Mon], Running)],
            "2026-12-04T23:59:00+01:00",
            Some(("2026-12-04T23:00:00Z", Stopped)),
            Some(("2026-11-29T23:00:00Z", Running)),
        ),
        (
            "days are local: Friday 22:00 in New York is Saturday in UTC",
            "America/New_York",
            vec![ev("22:00", &[Fri], Stopped)],
            "2026-12-04T12:00:00Z",
            Some(("2026-12-05T03:00:00Z", Stopped)),
            Some(("2026-11-28T03:00:00Z", Stopped)),
        ),
        (
            "one-sided: stop only at 20:00",
            "Europe/Madrid",
            vec![ev("20:00", &[], Stopped)],
            "2026-12-01T10:00:00Z",
            Some(("2026-12-01T19:00:00Z", Stopped)),
            Some(("2026-11-30T19:00:00Z", Stopped)),
        ),
        (
            "one-sided: start only on Mondays, a week away",
            "UTC",
            vec![ev("08:00", &[Mon], Running)],
            "2026-11-30T08:00:01Z",
            Some(("2026-12-07T08:00:00Z", Running)),
            Some(("2026-11-30T08:00:00Z", Running)),
        ),
        (
            "an event exactly now is the last event, not the next",
            "UTC",
            vec![ev("08:00", &[], Running), ev("18:00", &[], Stopped)],
            "2026-12-01T08:00:00Z",
            Some(("2026-12-01T18:00:00Z", Stopped)),
            Some(("2026-12-01T08:00:00Z", Running)),
        ),
        (
            "same time, different states on a common day (past the API server's rule): stopped wins",
            "UTC",
            vec![ev("08:00", &[Tue], Running), ev("08:00", &[], Stopped)],
            "2026-12-01T07:00:00Z",
            Some(("2026-12-01T08:00:00Z", Stopped)),
            Some(("2026-11-30T08:00:00Z", Stopped)),
        ),
    ]
}

#[test]
fn next_and_last_event_table() {
    for (what, zone, events, now, next, last) in rows() {
        let cal = Calendar::new(zone, &events).unwrap();
        let now = t(now);
        let got_next = cal.next_event(now).map(|o| (o.at, o.state));
        let got_last = cal.last_event(now).map(|o| (o.at, o.state));
        assert_eq!(got_next, next.map(|(s, st)| (t(s), st)), "next: {what}");
        assert_eq!(got_last, last.map(|(s, st)| (t(s), st)), "last: {what}");
    }
}

#[test]
fn duplicate_events_merge_into_one() {
    let cal = Calendar::new("UTC", &[ev("08:00", &[], Running), ev("08:00", &[Tue], Running)]).unwrap();
    let day = NaiveDate::from_ymd_opt(2026, 12, 1).unwrap();
    assert_eq!(cal.occurrences(day, day).len(), 1);
}

/// Over DST weeks in each zone, sampled every 7 minutes: next is after now, last is not, nothing lies between
/// them, and each zone's events happen once a day (never twice on a fall-back day, never lost on a spring one).
#[test]
fn next_and_last_are_consistent_across_dst_weeks() {
    let weeks = [
        ("Europe/Madrid", "2026-03-26T00:00:00Z", "2026-10-22T00:00:00Z"),
        ("America/New_York", "2026-03-05T00:00:00Z", "2026-10-29T00:00:00Z"),
        ("Australia/Lord_Howe", "2026-04-01T00:00:00Z", "2026-10-01T00:00:00Z"),
    ];
    let events = vec![
        ev("01:45", &[], Running),
        ev("02:15", &[], Stopped),
        ev("02:30", &[], Running),
        ev("07:00", &[Mon, Tue, Wed, Thu, Fri], Running),
        ev("19:00", &[Mon, Tue, Wed, Thu, Fri], Stopped),
    ];
    for (zone, spring_or_fall_a, spring_or_fall_b) in weeks {
        let cal = Calendar::new(zone, &events).unwrap();
        for start in [spring_or_fall_a, spring_or_fall_b] {
            let start = t(start);
            let mut now = start;
            while now < start + TimeDelta::days(7) {
                let next = cal.next_event(now).expect("a next event");
                let last = cal.last_event(now).expect("a last event");
                assert!(next.at > now && last.at <= now, "{zone} at {now}");
                assert_eq!(
                    cal.next_event(last.at - TimeDelta::seconds(1)).map(|o| o.at),
                    Some(last.at)
                );
                assert_eq!(
                    cal.last_event(next.at - TimeDelta::seconds(1)).map(|o| o.at),
                    Some(last.at)
                );
                now += TimeDelta::minutes(7);
            }
            // The three early-morning events land every day: three of them, or two on a spring-forward day
            // (02:15 and 02:30 both resolve to the end of the gap and merge). Never four, never one.
            let from = start.with_timezone(&cal.zone()).date_naive();
            for day in from.iter_days().take(7) {
                let early = cal
                    .occurrences(day, day)
                    .iter()
                    .filter(|o| o.at.with_timezone(&cal.zone()).time() < NaiveTime::from_hms_opt(5, 0, 0).unwrap())
                    .count();
                assert!((2..=3).contains(&early), "{zone} {day}: {early} early events");
            }
        }
    }
}

#[test]
fn bad_calendars_say_what_is_wrong() {
    let ok = vec![ev("07:00", &[], Running)];
    for (zone, events, want) in [
        (
            "Europe/Madird",
            ok.clone(),
            "\"Europe/Madird\" is not a known IANA time zone",
        ),
        ("europe/madrid", ok.clone(), "names are case-sensitive"),
        ("UTC", vec![ev("24:00", &[], Running)], "event 0: at \"24:00\""),
        (
            "UTC",
            vec![ev("07:00", &[], Running), ev("7:00", &[], Running)],
            "event 1",
        ),
        ("UTC", vec![], "no events"),
    ] {
        let err = Calendar::new(zone, &events).unwrap_err().to_string();
        assert!(err.contains(want), "{zone} {events:?}: {err}");
    }
}

#[test]
fn wall_times_parse_strictly() {
    assert_eq!(parse_wall_time("07:05"), NaiveTime::from_hms_opt(7, 5, 0));
    assert_eq!(parse_wall_time("23:59"), NaiveTime::from_hms_opt(23, 59, 0));
    for bad in ["7:05", "24:00", "12:60", "12-00", "1200", "+1:00", "12:5 ", ""] {
        assert_eq!(parse_wall_time(bad), None, "{bad:?}");
    }
}

#[test]
fn deadlines_parse_as_hours_minutes_seconds() {
    for (s, secs) in [
        ("1h", Some(3600)),
        ("30m", Some(1800)),
        ("90s", Some(90)),
        ("1h30m", Some(5400)),
        ("2h0m5s", Some(7205)),
        ("0s", Some(0)),
        ("", None),
        ("h", None),
        ("1m1h", None),
        ("1d", None),
        ("10", None),
        ("1h 30m", None),
    ] {
        assert_eq!(parse_deadline(s).map(|d| d.num_seconds()), secs, "{s:?}");
    }
}
