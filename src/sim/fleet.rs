//! The simulated fleet: instance records, the power-action state machine with lazily resolved
//! transitions, deterministic fleet generation, and list query parsing, filtering and pagination.
//!
//! Everything here is pure: the current time is passed in, nothing sleeps, nothing spawns. A transition is
//! stored as "settle to X at instant T" and resolved by [`Fleet::settle`], which every read calls first.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::api::types::{
    DEFAULT_PAGE_SIZE, Instance, InstanceStatus, ListFilter, MAX_PAGE_SIZE, Pagination, PowerAction,
};

/// Why an action was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ActionError {
    /// No instance with that id.
    NotFound,
    /// Another action is still running on the instance.
    Busy { action: PowerAction },
    /// The instance's status does not allow the action.
    NotAllowed { status: InstanceStatus },
}

/// Problems with a fleet given as data.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("an instance has an empty id")]
    EmptyId,
    #[error("instance id {0:?} appears more than once")]
    DuplicateId(String),
    #[error("fleet JSON is neither an array of instances nor {{\"instances\": [...]}}: {0}")]
    Parse(#[from] serde_json::Error),
}

/// The transition an accepted action starts: the status reported meanwhile and the status it settles to.
/// `None` when the current status does not allow the action (the API answers 409).
pub fn transition(status: &InstanceStatus, action: PowerAction) -> Option<(InstanceStatus, InstanceStatus)> {
    use InstanceStatus as S;
    use PowerAction as A;
    match (action, status) {
        (A::Stop, S::Running | S::Error) => Some((S::Stopping, S::Stopped)),
        (A::Start, S::Stopped | S::Error) => Some((S::Starting, S::Running)),
        (A::Restart, S::Running) => Some((S::Restarting, S::Running)),
        (A::Reset, S::Running | S::Error) => Some((S::Resetting, S::Running)),
        _ => None,
    }
}

/// How an accepted action plays out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransitionOpts {
    /// How long the transition takes.
    pub duration: Duration,
    /// Restart/reset keep reporting the previous status while they run (the instance is still busy).
    pub invisible: bool,
    /// The transition never completes on its own (see [`Fleet::release_stuck`]).
    pub never_finish: bool,
    /// Queued actions: for this long after acceptance nothing is visible (the instance is busy all the same).
    pub queue: Duration,
    /// The action is accepted and runs, but the instance ends in `error` instead of its target (a restart
    /// that fails on the host).
    pub fails: bool,
}

#[derive(Clone, Debug)]
struct Pending {
    action: PowerAction,
    settle_to: InstanceStatus,
    /// When the next step is due (the key in `Fleet::due`); `None`: stuck until released or cancelled.
    due: Option<Instant>,
    /// A queued action: at `due` the instance starts showing this status and the transition itself begins.
    queued: Option<QueuedStart>,
}

/// The rest of a queued action, started when its queue time ends.
#[derive(Clone, Debug)]
struct QueuedStart {
    shown: Option<InstanceStatus>,
    duration: Duration,
    never_finish: bool,
}

#[derive(Clone, Debug)]
struct Slot {
    instance: Instance,
    /// The instance's JSON, kept in step with it so list and get only copy bytes.
    json: Vec<u8>,
    pending: Option<Pending>,
}

impl Slot {
    fn new(instance: Instance) -> Self {
        let json = instance_json(&instance);
        Self {
            instance,
            json,
            pending: None,
        }
    }

    fn set_status(&mut self, status: InstanceStatus) {
        if self.instance.status != status {
            self.instance.status = status;
            self.json = instance_json(&self.instance);
        }
    }
}

fn instance_json(instance: &Instance) -> Vec<u8> {
    // Serializing a struct of strings cannot fail.
    serde_json::to_vec(instance).unwrap_or_default()
}

/// All instances, ordered by id, with their running transitions.
#[derive(Clone, Debug, Default)]
pub struct Fleet {
    slots: BTreeMap<String, Slot>,
    /// Transitions with a deadline, ordered by it, so settling costs O(log n) per finished transition.
    due: BTreeSet<(Instant, String)>,
    /// Transitions without a deadline (fault `never_finish`).
    stuck: BTreeSet<String>,
}

impl Fleet {
    /// A fleet of these instances, none of them busy. Ids must be non-empty and unique.
    pub fn new(instances: Vec<Instance>) -> Result<Self, FleetError> {
        let mut slots = BTreeMap::new();
        for instance in instances {
            if instance.id.is_empty() {
                return Err(FleetError::EmptyId);
            }
            if slots.contains_key(&instance.id) {
                return Err(FleetError::DuplicateId(instance.id));
            }
            slots.insert(instance.id.clone(), Slot::new(instance));
        }
        Ok(Self {
            slots,
            ..Self::default()
        })
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Finish every transition whose deadline is at or before `now`.
    pub fn settle(&mut self, now: Instant) {
        while let Some((due, _)) = self.due.first() {
            if *due > now {
                break;
            }
            let Some((due, id)) = self.due.pop_first() else {
                break;
            };
            let Some(slot) = self.slots.get_mut(&id) else {
                continue;
            };
            let Some(mut pending) = slot.pending.take() else {
                continue;
            };
            match pending.queued.take() {
                // The queue time ended: the action starts now (as of `due`).
                Some(start) => {
                    if let Some(shown) = start.shown {
                        slot.set_status(shown);
                    }
                    pending.due = if start.never_finish {
                        None
                    } else {
                        due.checked_add(start.duration)
                    };
                    match pending.due {
                        Some(next) => self.due.insert((next, id.clone())),
                        None => self.stuck.insert(id.clone()),
                    };
                    slot.pending = Some(pending);
                }
                None => slot.set_status(pending.settle_to),
            }
        }
    }

    /// The instance as it is at `now`.
    pub fn get(&mut self, id: &str, now: Instant) -> Option<&Instance> {
        self.settle(now);
        self.slots.get(id).map(|s| &s.instance)
    }

    /// The action running on the instance at `now`, if any.
    pub fn busy_with(&mut self, id: &str, now: Instant) -> Option<PowerAction> {
        self.settle(now);
        self.slots.get(id)?.pending.as_ref().map(|p| p.action)
    }

    /// Every instance as it is at `now`, in id order.
    pub fn all(&mut self, now: Instant) -> impl Iterator<Item = &Instance> {
        self.settle(now);
        self.slots.values().map(|s| &s.instance)
    }

    /// Accept `action` on instance `id` at `now`, or say why not.
    pub fn apply(
        &mut self,
        id: &str,
        action: PowerAction,
        now: Instant,
        opts: TransitionOpts,
    ) -> Result<(), ActionError> {
        self.settle(now);
        let slot = self.slots.get_mut(id).ok_or(ActionError::NotFound)?;
        if let Some(p) = &slot.pending {
            return Err(ActionError::Busy { action: p.action });
        }
        let (shown, settle_to) = transition(&slot.instance.status, action).ok_or_else(|| ActionError::NotAllowed {
            status: slot.instance.status.clone(),
        })?;
        let settle_to = if opts.fails { InstanceStatus::Error } else { settle_to };
        let shown = (!(opts.invisible && action.is_one_shot())).then_some(shown);
        let (due, queued) = if opts.queue.is_zero() {
            if let Some(shown) = shown {
                slot.set_status(shown);
            }
            let due = if opts.never_finish {
                None
            } else {
                now.checked_add(opts.duration)
            };
            (due, None)
        } else {
            let start = QueuedStart {
                shown,
                duration: opts.duration,
                never_finish: opts.never_finish,
            };
            (now.checked_add(opts.queue), Some(start))
        };
        match due {
            Some(due) => self.due.insert((due, slot.instance.id.clone())),
            None => self.stuck.insert(slot.instance.id.clone()),
        };
        slot.pending = Some(Pending {
            action,
            settle_to,
            due,
            queued,
        });
        Ok(())
    }

    /// Give every stuck transition a deadline of `now + duration` (the `never_finish` fault was lifted).
    pub fn release_stuck(&mut self, now: Instant, duration: Duration) {
        for id in std::mem::take(&mut self.stuck) {
            let Some(pending) = self.slots.get_mut(&id).and_then(|s| s.pending.as_mut()) else {
                continue;
            };
            match now.checked_add(duration) {
                Some(due) => {
                    pending.due = Some(due);
                    self.due.insert((due, id));
                }
                None => {
                    self.stuck.insert(id);
                }
            }
        }
    }

    /// Set the status at once, cancelling any transition. False when the id is unknown.
    pub fn set_status(&mut self, id: &str, status: InstanceStatus) -> bool {
        self.cancel(id);
        match self.slots.get_mut(id) {
            Some(slot) => {
                slot.set_status(status);
                true
            }
            None => false,
        }
    }

    /// Create or replace an instance, cancelling any transition it had. True when it was created.
    pub fn upsert(&mut self, instance: Instance) -> bool {
        self.cancel(&instance.id);
        self.slots.insert(instance.id.clone(), Slot::new(instance)).is_none()
    }

    /// Delete an instance (as a user deleting it would). True when it existed.
    pub fn remove(&mut self, id: &str) -> bool {
        self.cancel(id);
        self.slots.remove(id).is_some()
    }

    fn cancel(&mut self, id: &str) {
        let Some(pending) = self.slots.get_mut(id).and_then(|s| s.pending.take()) else {
            return;
        };
        match pending.due {
            Some(due) => {
                self.due.remove(&(due, id.to_owned()));
            }
            None => {
                self.stuck.remove(id);
            }
        }
    }

    /// One page of the instances passing `query`'s filters, in id order, as of `now`.
    pub fn list(&mut self, query: &ListQuery, now: Instant) -> (Vec<&Instance>, Pagination) {
        let (page, pagination) = self.page(query, now);
        (page.into_iter().map(|s| &s.instance).collect(), pagination)
    }

    /// The JSON body of [`Fleet::list`]: `{"instances":[...],"pagination":{...}}`.
    pub fn list_json(&mut self, query: &ListQuery, now: Instant) -> Vec<u8> {
        let (page, pagination) = self.page(query, now);
        let mut out = Vec::with_capacity(page.iter().map(|s| s.json.len() + 1).sum::<usize>() + 160);
        out.extend_from_slice(b"{\"instances\":[");
        for (i, slot) in page.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&slot.json);
        }
        out.extend_from_slice(b"],\"pagination\":");
        // Serializing integers and booleans into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, &pagination);
        out.push(b'}');
        out
    }

    /// The JSON of one instance as of `now`.
    pub fn get_json(&mut self, id: &str, now: Instant) -> Option<&[u8]> {
        self.settle(now);
        self.slots.get(id).map(|s| s.json.as_slice())
    }

    fn page(&mut self, query: &ListQuery, now: Instant) -> (Vec<&Slot>, Pagination) {
        self.settle(now);
        let size = query.page_size.max(1) as usize;
        let offset = (u64::from(query.page.max(1)) - 1).saturating_mul(size as u64);
        let offset = usize::try_from(offset).unwrap_or(usize::MAX);
        let mut page = Vec::with_capacity(size.min(self.slots.len()));
        let f = &query.filter;
        let total = if *f == ListFilter::default() {
            page.extend(self.slots.values().skip(offset).take(size));
            self.slots.len()
        } else {
            let status = f.status.as_deref();
            let mut total = 0usize;
            for slot in self.slots.values() {
                // Cheapest and most selective test first; the rest is ListFilter's own rule.
                if status.is_some_and(|st| st != slot.instance.status.as_str()) || !f.matches(&slot.instance) {
                    continue;
                }
                if total >= offset && page.len() < size {
                    page.push(slot);
                }
                total += 1;
            }
            total
        };
        (page, pagination(total as u64, query.page, query.page_size))
    }
}

/// The pagination envelope for `total` matches: `totalPages = ceil(total / pageSize)` (0 when empty),
/// `hasNext = page < totalPages`, `hasPrev = page > 1`.
pub fn pagination(total: u64, page: u32, page_size: u32) -> Pagination {
    let total_pages = total.div_ceil(u64::from(page_size.max(1)));
    Pagination {
        page,
        page_size,
        total_count: total,
        total_pages,
        has_next: u64::from(page) < total_pages,
        has_prev: page > 1,
    }
}

/// A validated query of the list endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListQuery {
    pub page: u32,
    pub page_size: u32,
    pub filter: ListFilter,
}

impl Default for ListQuery {
    fn default() -> Self {
        Self {
            page: 1,
            page_size: DEFAULT_PAGE_SIZE,
            filter: ListFilter::default(),
        }
    }
}

impl ListQuery {
    /// Parse a raw query string (without `?`). Unknown parameters are ignored, the first of repeated ones
    /// wins, and an empty value counts as absent. The error is a short message for a 400 body.
    pub fn parse(raw: Option<&str>) -> Result<Self, String> {
        let mut q = Self::default();
        let mut seen: u8 = 0;
        for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let key = decode(k).ok_or("query is not valid percent-encoded UTF-8")?;
            let bit = match key.as_str() {
                "page" => 1,
                "pageSize" => 2,
                "userID" => 4,
                "customerID" => 8,
                "status" => 16,
                "zone" => 32,
                "templateID" => 64,
                _ => continue,
            };
            if seen & bit != 0 {
                continue;
            }
            seen |= bit;
            let value = decode(v).ok_or("query is not valid percent-encoded UTF-8")?;
            if value.is_empty() {
                continue;
            }
            match bit {
                1 => {
                    q.page = value
                        .parse::<u32>()
                        .ok()
                        .filter(|p| *p >= 1)
                        .ok_or("page must be an integer >= 1")?;
                }
                2 => {
                    q.page_size = value
                        .parse::<u32>()
                        .ok()
                        .filter(|s| (1..=MAX_PAGE_SIZE).contains(s))
                        .ok_or("pageSize must be an integer from 1 to 100")?;
                }
                4 => q.filter.user_id = Some(value),
                8 => q.filter.customer_id = Some(value),
                16 => {
                    if !InstanceStatus::FILTERABLE.contains(&value.as_str()) {
                        return Err("status must be one of provisioning, running, stopped, error, deleting".into());
                    }
                    q.filter.status = Some(value);
                }
                32 => q.filter.zone = Some(value),
                _ => q.filter.template_id = Some(value),
            }
        }
        Ok(q)
    }
}

/// Decode one `application/x-www-form-urlencoded` component.
fn decode(s: &str) -> Option<String> {
    let plus = s.replace('+', " ");
    percent_encoding::percent_decode_str(&plus)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

/// A fleet file: an array of instances or `{"instances": [...]}`.
pub fn parse_fleet_json(text: &str) -> Result<Vec<Instance>, FleetError> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum FleetFile {
        List(Vec<Instance>),
        Wrapped { instances: Vec<Instance> },
    }
    let parsed: FleetFile = serde_json::from_str(text)?;
    Ok(match parsed {
        FleetFile::List(v) | FleetFile::Wrapped { instances: v } => v,
    })
}

/// SplitMix64: tiny, fast, and stable forever, so a seed gives the same fleet in every version.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The value after `state`, for lock-free use with an atomic counter.
    pub fn mix(state: u64) -> u64 {
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN_GAMMA);
        Self::mix(self.0)
    }

    /// Uniform in `0..n` (n > 0; the tiny modulo bias does not matter here).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

/// The SplitMix64 increment.
pub const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

const ZONES: [&str; 4] = ["us-central1-a", "us-central1-b", "europe-west1-b", "asia-east1-a"];
const MACHINE_TYPES: [&str; 5] = [
    "e2-small",
    "e2-medium",
    "n2-standard-2",
    "n2-standard-4",
    "c2-standard-8",
];
const TEMPLATES: [&str; 4] = [
    "ubuntu-22-standard",
    "debian-12-minimal",
    "rocky-9-standard",
    "windows-2022-dc",
];
const ROLES: [&str; 8] = [
    "build-runner",
    "web",
    "api",
    "db",
    "worker",
    "cache",
    "batch",
    "ci-agent",
];
const USERS: u64 = 12;
const CUSTOMERS: u64 = 4;
/// 2025-01-01T00:00:00Z.
const EPOCH_2025: i64 = 1_735_689_600;

fn uuid(rng: &mut SplitMix64) -> String {
    let a = rng.next_u64();
    let b = rng.next_u64();
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | ((b >> 48) & 0x3fff),
        b & 0xffff_ffff_ffff
    )
}

/// `count` instances derived from `seed` only: ids `inst-` + 8 lowercase alphanumerics (unique), owners from
/// a small pool of users (each belonging to one customer), a few zones, machine types and templates, about
/// 85% running and the rest stopped. Returned in id order.
pub fn generate(count: usize, seed: u64) -> Vec<Instance> {
    const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = SplitMix64::new(seed);
    let customers: Vec<String> = (0..CUSTOMERS).map(|_| uuid(&mut rng)).collect();
    let users: Vec<String> = (0..USERS).map(|_| uuid(&mut rng)).collect();
    let mut ids = HashSet::with_capacity(count);
    let mut role_counts = [0u32; ROLES.len()];
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let id: String = std::iter::once("inst-")
            .flat_map(str::chars)
            .chain((0..8).map(|_| ALNUM[rng.below(ALNUM.len() as u64) as usize] as char))
            .collect();
        if !ids.insert(id.clone()) {
            continue;
        }
        let user = rng.below(USERS) as usize;
        let role = rng.below(ROLES.len() as u64) as usize;
        role_counts[role] += 1;
        let status = if rng.unit() < 0.85 {
            InstanceStatus::Running
        } else {
            InstanceStatus::Stopped
        };
        let created = EPOCH_2025 + rng.below(365 * 86_400) as i64;
        let created_at = chrono::DateTime::from_timestamp(created, 0)
            .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_default();
        out.push(Instance {
            id,
            user_id: users[user].clone(),
            customer_id: customers[user % customers.len()].clone(),
            name: format!("{}-{:02}", ROLES[role], role_counts[role]),
            zone: rng.pick(&ZONES).to_owned(),
            machine_type: rng.pick(&MACHINE_TYPES).to_owned(),
            external_ip: format!("203.0.{}.{}", 113 + rng.below(3), 1 + rng.below(254)),
            internal_ip: format!("10.128.{}.{}", rng.below(256), 2 + rng.below(253)),
            status,
            template_id: rng.pick(&TEMPLATES).to_owned(),
            created_at,
        });
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

#[cfg(test)]
#[path = "fleet_tests.rs"]
mod tests;
