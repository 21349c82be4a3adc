//! `kubectl compute fleet` and `kubectl compute schedule`: what a fleet or schedule is doing, in a few lines
//! each, and the small patches the plugin sends to pause, resume or override them. Pure: no I/O.

use chrono::{DateTime, Utc};
use kube::ResourceExt;
use serde_json::{Value, json};

use super::report::condition_summary;
use crate::crd::fleet_action::ComputeFleetAction;
use crate::crd::instance_action::ComputeInstanceAction;
use crate::crd::power_schedule::{ComputePowerSchedule, ScheduleEnforcement, ScheduledState};
use crate::crd::selector::MaxConcurrent;

/// Children listed under a fleet that was named (the rest are counted).
const CHILDREN_SHOWN: usize = 20;

/// The report for `fleets`, sorted by namespace and name; `children` are listed under a fleet only when exactly
/// one fleet is shown (`kubectl compute fleet status NAME`).
pub fn render_fleets(fleets: &[ComputeFleetAction], children: &[ComputeInstanceAction], scope: &str) -> String {
    if fleets.is_empty() {
        return format!("no ComputeFleetAction in {scope}\n");
    }
    let mut sorted: Vec<&ComputeFleetAction> = fleets.iter().collect();
    sorted.sort_by_key(|f| (f.namespace().unwrap_or_default(), f.name_any()));
    let mut out = String::new();
    for f in &sorted {
        out.push_str(&fleet_lines(f));
    }
    if sorted.len() == 1 && !children.is_empty() {
        let mut kids: Vec<&ComputeInstanceAction> = children.iter().collect();
        kids.sort_by_key(|c| c.spec.instance_id.clone());
        out.push_str(&format!("  children ({}):\n", kids.len()));
        for c in kids.iter().take(CHILDREN_SHOWN) {
            let conditions = c.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
            out.push_str(&format!(
                "    {} {}: {}\n",
                c.spec.instance_id,
                c.name_any(),
                condition_summary(conditions)
            ));
        }
        if kids.len() > CHILDREN_SHOWN {
            out.push_str(&format!(
                "    ... and {} more (kubectl get cia -l compute.threatwinds.com/fleet={})\n",
                kids.len() - CHILDREN_SHOWN,
                sorted[0].name_any()
            ));
        }
    }
    out
}

fn fleet_lines(f: &ComputeFleetAction) -> String {
    let spec = &f.spec;
    let mut what = spec.desired_state.as_str().to_owned();
    if let Some(rid) = &spec.request_id {
        what.push_str(&format!(" (requestId {rid})"));
    }
    let mut flags = Vec::new();
    if spec.paused {
        flags.push("paused");
    }
    if spec.suspend {
        flags.push("suspended");
    }
    if spec.dry_run {
        flags.push("dryRun");
    }
    let flags = bracketed(&flags);
    let status = f.status.clone().unwrap_or_default();
    let mut out = format!(
        "{}/{}: {what} of {}{flags} - {}\n",
        f.namespace().unwrap_or_default(),
        f.name_any(),
        spec.selector.describe(),
        condition_summary(&status.conditions)
    );
    let cap = match &spec.strategy.max_concurrent() {
        MaxConcurrent::Count(n) => n.to_string(),
        MaxConcurrent::Percent(p) => p.clone(),
    };
    out.push_str(&format!(
        "  selected {}, succeeded {}, failed {}, denied {}, in progress {}, pending {}; maxConcurrent {cap}, maxFailures {}\n",
        status.selected,
        status.succeeded,
        status.failed,
        status.denied,
        status.in_progress,
        status.pending,
        spec.strategy.max_failures()
    ));
    if !status.failed_ids.is_empty() {
        out.push_str(&format!("  failed: {}\n", status.failed_ids.join(", ")));
    }
    if let Some(d) = &status.dry_run {
        out.push_str(&format!(
            "  dry run: would act on {}; first: {}\n",
            d.would_act,
            d.first_ids.join(", ")
        ));
    }
    out
}

/// The report for `schedules`, sorted by namespace and name; times in each schedule's own zone and in UTC.
pub fn render_schedules(schedules: &[ComputePowerSchedule], scope: &str) -> String {
    if schedules.is_empty() {
        return format!("no ComputePowerSchedule in {scope}\n");
    }
    let mut sorted: Vec<&ComputePowerSchedule> = schedules.iter().collect();
    sorted.sort_by_key(|s| (s.namespace().unwrap_or_default(), s.name_any()));
    let mut out = String::new();
    for s in sorted {
        out.push_str(&schedule_lines(s));
    }
    out
}

fn schedule_lines(s: &ComputePowerSchedule) -> String {
    let spec = &s.spec;
    let zone: Option<chrono_tz::Tz> = spec.time_zone.parse().ok();
    let when = |t: DateTime<Utc>| match zone {
        Some(tz) => format!(
            "{} ({})",
            t.with_timezone(&tz).format("%a %Y-%m-%d %H:%M %Z"),
            t.format("%H:%M UTC")
        ),
        None => t.format("%a %Y-%m-%d %H:%M UTC").to_string(),
    };
    let flags = if spec.suspend {
        bracketed(&["suspended"])
    } else {
        String::new()
    };
    let status = s.status.clone().unwrap_or_default();
    let mut out = format!(
        "{}/{}: {} in {}, {} events, enforcement {}{flags} - {}\n",
        s.namespace().unwrap_or_default(),
        s.name_any(),
        spec.selector.describe(),
        spec.time_zone,
        spec.events.len(),
        match spec.enforcement {
            ScheduleEnforcement::Events => "events",
            ScheduleEnforcement::Continuous => "continuous",
        },
        condition_summary(&status.conditions)
    );
    if let Some(o) = &status.power_override {
        out.push_str(&format!("  override: {} until {}\n", o.state.as_str(), when(o.until)));
    }
    match &status.next_event {
        Some(n) => out.push_str(&format!("  next: {} at {}\n", n.state.as_str(), when(n.time))),
        None => out.push_str("  next: none\n"),
    }
    if let Some(l) = &status.last_event {
        let child = l.child.as_ref().map(|c| format!(" (fleet {c})")).unwrap_or_default();
        let message = l.message.as_ref().map(|m| format!(": {m}")).unwrap_or_default();
        out.push_str(&format!(
            "  last: {} at {}, {:?}{child}{message}\n",
            l.state.as_str(),
            when(l.time),
            l.result
        ));
    }
    out
}

fn bracketed(flags: &[&str]) -> String {
    if flags.is_empty() {
        String::new()
    } else {
        format!(" [{}]", flags.join(", "))
    }
}

/// The merge patch that pauses (`true`) or resumes a fleet.
pub fn pause_patch(paused: bool) -> Value {
    json!({"spec": {"paused": paused}})
}

/// The merge patch that sets a schedule's override, or removes it (`None`).
pub fn override_patch(hold: Option<(ScheduledState, DateTime<Utc>)>) -> Value {
    match hold {
        Some((state, until)) => json!({"spec": {"override": {"state": state.as_str(), "until": until.to_rfc3339()}}}),
        None => json!({"spec": {"override": null}}),
    }
}

/// When an override ends: `--until` as given, or `--for` from `now`; it must lie in the future.
pub fn override_until(
    now: DateTime<Utc>,
    until: Option<DateTime<Utc>>,
    hold_for: Option<std::time::Duration>,
) -> Result<DateTime<Utc>, String> {
    let end = match (until, hold_for) {
        (Some(t), None) => t,
        (None, Some(d)) => {
            let d = chrono::Duration::from_std(d).map_err(|_| "--for is too long".to_owned())?;
            now.checked_add_signed(d)
                .ok_or_else(|| "--for is too long".to_owned())?
        }
        _ => return Err("give exactly one of --until TIME or --for DURATION".to_owned()),
    };
    if end <= now {
        return Err(format!(
            "the override would end at {}, which has passed: give a later --until or a --for",
            end.to_rfc3339()
        ));
    }
    Ok(end)
}

#[cfg(test)]
#[path = "fleet_report_tests.rs"]
mod tests;
