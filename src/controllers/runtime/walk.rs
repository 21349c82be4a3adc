//! Walking a selection through the admin API (thin I/O), for fleets and the budget upkeep: every lookup within
//! the shared list budget, every page cross-checked against `totalCount`, a walk repeated (bounded) when the
//! selection changed under it, and only what the caller needs kept (ID and status), never other attributes.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::lookups::Lookup;
use crate::api::{AdminClient, ApiError, Instance, InstanceStatus, ListFilter};
use crate::controllers::runtime::ListBudget;

/// Page size of a walk (the API's maximum).
const PAGE_SIZE: u32 = 100;
/// Most walks of one list lookup when pages disagree with each other.
pub const WALK_ATTEMPTS: u32 = 3;
/// Bound on one whole selection (paced by the list budget).
pub const SELECTION_TIMEOUT: Duration = Duration::from_secs(300);

/// A selection as walked: members in list order, and whether every walk was consistent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub listed_at: DateTime<Utc>,
    pub members: Vec<(String, Option<InstanceStatus>)>,
    /// False when a list walked [`WALK_ATTEMPTS`] times never agreed with its own `totalCount`.
    pub complete: bool,
    /// Members [`WalkRules::held`] marked (a maintenance window holds their action back now).
    pub held: HashSet<String>,
}

/// How a walk treats what it finds.
pub struct WalkRules<'a> {
    /// Does this instance belong to the selection, and may the namespace power it?
    pub keep: &'a (dyn Fn(&Instance) -> bool + Sync),
    /// An explicit ID that is not found: kept as a member without status (policy off), or left out (enforce:
    /// a missing ID must read like a foreign one).
    pub keep_missing: bool,
    /// Walk again when pages disagree (one-shot snapshots); levels list again soon anyway.
    pub attempts: u32,
    /// Marks members whose action would be held back now (a dry run reports them); judged while the
    /// instance's attributes are at hand, which the selection does not keep.
    pub held: Option<&'a (dyn Fn(&Instance) -> bool + Sync)>,
}

/// Runs every lookup. Fails on the first admin API error (the reconcile retries with backoff).
pub async fn walk(
    api: &AdminClient,
    budget: &ListBudget,
    lookups: &[Lookup],
    rules: &WalkRules<'_>,
) -> Result<Listed, ApiError> {
    let listed_at = Utc::now();
    let mut seen = HashSet::new();
    let mut members = Vec::new();
    let mut held = HashSet::new();
    let mut complete = true;
    let mut mark = |i: &Instance| {
        if rules.held.is_some_and(|h| h(i)) {
            held.insert(i.id.clone());
        }
    };
    for lookup in lookups {
        match lookup {
            Lookup::Get(id) => {
                if seen.contains(id) {
                    continue;
                }
                budget.page().await;
                match api.get_instance(id).await {
                    Ok(i) if (rules.keep)(&i) => {
                        mark(&i);
                        seen.insert(i.id.clone());
                        members.push((i.id, Some(i.status)));
                    }
                    Ok(_) => {}
                    Err(ApiError::NotFound) if rules.keep_missing => {
                        seen.insert(id.clone());
                        members.push((id.clone(), None));
                    }
                    Err(ApiError::NotFound) => {}
                    Err(e) => return Err(e),
                }
            }
            Lookup::List(filter) => {
                let (found, consistent) = walk_list(api, budget, filter, rules.attempts).await?;
                complete &= consistent;
                for i in found.into_iter().filter(|i| (rules.keep)(i)) {
                    if seen.insert(i.id.clone()) {
                        mark(&i);
                        members.push((i.id, Some(i.status)));
                    }
                }
            }
        }
    }
    Ok(Listed {
        listed_at,
        members,
        complete,
        held,
    })
}

/// One list lookup: walks until a walk agrees with itself (`totalCount` the same on every page and equal to the
/// instances seen), at most `attempts` times. Returns the consistent walk, or the union of all walks (so an
/// instance that page boundaries moved past is not silently missed) and `false`.
async fn walk_list(
    api: &AdminClient,
    budget: &ListBudget,
    filter: &ListFilter,
    attempts: u32,
) -> Result<(Vec<Instance>, bool), ApiError> {
    let mut union: Vec<Instance> = Vec::new();
    let mut in_union = HashSet::new();
    for _ in 0..attempts.max(1) {
        let (found, consistent) = walk_once(api, budget, filter).await?;
        if consistent {
            return Ok((found, true));
        }
        for i in found {
            if in_union.insert(i.id.clone()) {
                union.push(i);
            }
        }
    }
    Ok((union, false))
}

/// One walk of every page; consistent when every page reported the same total and that many unique
/// instances were seen.
async fn walk_once(
    api: &AdminClient,
    budget: &ListBudget,
    filter: &ListFilter,
) -> Result<(Vec<Instance>, bool), ApiError> {
    let mut found = Vec::new();
    let mut ids = HashSet::new();
    let mut total: Option<u64> = None;
    let mut consistent = true;
    let mut page = 1u32;
    loop {
        budget.page().await;
        let got = api.list_page(filter, page, PAGE_SIZE).await?;
        if total.is_some_and(|t| t != got.pagination.total_count) {
            consistent = false;
        }
        total = Some(got.pagination.total_count);
        let empty = got.instances.is_empty();
        for i in got.instances {
            if ids.insert(i.id.clone()) {
                found.push(i);
            }
        }
        // Guard against a server that says hasNext forever on empty pages.
        if !got.pagination.has_next || empty {
            break;
        }
        page += 1;
    }
    let consistent = consistent && total.is_some_and(|t| t == ids.len() as u64);
    Ok((found, consistent))
}
