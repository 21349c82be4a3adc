//! One shared view of the instances the objects name, kept fresh by walking the admin API's list pages (or,
//! when the platform holds far more instances than the objects name, by GETting just those), spread over the
//! resync interval. A settled object is checked against this view with no request of its own; objects with
//! an action open keep polling with GET (their answers update the view too).
//!
//! The resting cost is therefore proportional to the number of pages (or named instances, if fewer), not to
//! the number of objects, and a changed instance wakes the objects on it within one interval.
//!
//! Objects following an open action mark their instance *hot* ([`InstanceView::following`]); the hot loop
//! (hot.rs) then reads those instances through the few list pages they are on, so that many actions in flight
//! cost a page each tick instead of a GET per poll each. What the view serves an open action was always
//! requested after that action was accepted (an entry's time is when its request was sent).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::api::{AdminClient, ApiError, Instance, InstanceStatus, ListFilter};
use crate::controllers::instance::index::InstanceIndex;

/// Page size of the list walk (the API's maximum).
pub const PAGE_SIZE: u32 = 100;

/// How old an entry may be to stand in for a GET of an object that is not settled (the hot loop refreshes
/// hot pages every [`super::hot::HOT_TICK`]).
pub const FOLLOW_FRESH: Duration = Duration::from_millis(500);

/// How a round refreshes the view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoundMode {
    /// Walk every list page (`pages` requests).
    ListPages { pages: u64 },
    /// GET each named instance (`named` requests): cheaper when the platform is much larger than the objects.
    GetEach { named: u64 },
}

impl RoundMode {
    pub fn requests(self) -> u64 {
        match self {
            Self::ListPages { pages } => pages,
            Self::GetEach { named } => named,
        }
    }
}

/// The cheaper way to see `named` instances on a platform of `total` instances. The first list page, which
/// told us `total`, is already paid for, so pages win ties.
pub fn choose_round(named: u64, total: u64) -> RoundMode {
    let pages = total.div_ceil(u64::from(PAGE_SIZE)).max(1);
    if named < pages {
        RoundMode::GetEach { named }
    } else {
        RoundMode::ListPages { pages }
    }
}

/// The pause between requests of a round: spread over `interval`, but never faster than `max_rate` per second
/// (the share of the client's budget the view may use). Also says whether the round is stretched past the
/// interval because it does not fit the budget.
pub fn pace(interval: Duration, requests: u64, max_rate: f64) -> (Duration, bool) {
    if requests == 0 {
        return (interval, false);
    }
    let spread = interval.div_f64(requests as f64);
    let floor = if max_rate > 0.0 {
        Duration::from_secs_f64(1.0 / max_rate)
    } else {
        Duration::ZERO
    };
    (spread.max(floor), floor > spread)
}

/// The named instances a complete list walk did not show.
pub fn missing_from_walk<'a>(wanted: &'a HashSet<String>, listed: &HashSet<String>) -> Vec<&'a String> {
    let mut missing: Vec<_> = wanted.iter().filter(|id| !listed.contains(*id)).collect();
    missing.sort();
    missing
}

/// What the view keeps of an instance (its ID is the map's key): what objects read from it (status, name and
/// zone for the status, the attributes policies match), not addresses or timestamps. Measured: the whole
/// `Instance` per entry was 7.3 MiB at 12,500 objects.
/// The zone, customer, user and template are shared by many instances: each distinct combination is held
/// once ([`Shared`]), which also keeps the table's slots small (they were most of the view's memory: 2.4 MiB
/// of 3.7 at 11,000 instances).
#[derive(Clone, Debug)]
struct Seen {
    status: InstanceStatus,
    name: Box<str>,
    attributes: Arc<Attributes>,
    /// When the request that showed it was sent.
    at: Instant,
    /// Shown by a hot page (read every tick while it is hot).
    paged: bool,
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Attributes {
    zone: Box<str>,
    customer_id: Box<str>,
    user_id: Box<str>,
    template_id: Box<str>,
}

impl Attributes {
    fn of(i: &Instance) -> Self {
        Self {
            zone: i.zone.as_str().into(),
            customer_id: i.customer_id.as_str().into(),
            user_id: i.user_id.as_str().into(),
            template_id: i.template_id.as_str().into(),
        }
    }

    fn are_those_of(&self, i: &Instance) -> bool {
        *self.zone == i.zone
            && *self.customer_id == i.customer_id
            && *self.user_id == i.user_id
            && *self.template_id == i.template_id
    }
}

/// Each distinct combination of attributes once, for as long as some entry holds it (let go with
/// [`Shared::let_go_unused`]).
#[derive(Debug, Default)]
struct Shared(HashSet<Arc<Attributes>>);

impl Shared {
    /// The attributes of `instance`, shared (the one `previous` held when they did not change: no lookup).
    fn get(&mut self, instance: &Instance, previous: Option<&Arc<Attributes>>) -> Arc<Attributes> {
        if let Some(p) = previous.filter(|p| p.are_those_of(instance)) {
            return p.clone();
        }
        let attributes = Attributes::of(instance);
        if let Some(held) = self.0.get(&attributes) {
            return held.clone();
        }
        let new = Arc::new(attributes);
        self.0.insert(new.clone());
        new
    }

    /// Drops the combinations no entry holds any more (only this table does).
    fn let_go_unused(&mut self) {
        self.0.retain(|a| Arc::strong_count(a) > 1);
    }
}

impl Seen {
    fn of(instance: &Instance, at: Instant, paged: bool, attributes: Arc<Attributes>) -> Self {
        Self {
            status: instance.status.clone(),
            name: instance.name.as_str().into(),
            attributes,
            at,
            paged,
        }
    }

    fn instance(&self, id: &str) -> Instance {
        let a = &self.attributes;
        Instance {
            id: id.to_owned(),
            user_id: a.user_id.to_string(),
            customer_id: a.customer_id.to_string(),
            name: self.name.to_string(),
            zone: a.zone.to_string(),
            status: self.status.clone(),
            template_id: a.template_id.to_string(),
            machine_type: String::new(),
            external_ip: String::new(),
            internal_ip: String::new(),
            created_at: String::new(),
        }
    }
}

/// What the hot loop lists by: the zone and customer of a hot instance, as last seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HotInstance {
    pub id: String,
    /// Since when its object follows the action (its acceptance).
    pub since: Instant,
    pub zone: Option<String>,
    pub customer_id: Option<String>,
}

/// The view itself: bounded to the instances objects name (pruned each round; hot pages may add their
/// neighbours until then).
#[derive(Default)]
pub struct InstanceView {
    seen: Mutex<Entries>,
    /// Instances an object follows an open action on: when it last asked, and since when it follows.
    hot: Mutex<HashMap<String, (Instant, Instant)>>,
    /// Set by the hot loop while the transitions it saw all lasted several ticks: a departure on a hot page is
    /// then seen without a look of its own.
    pages_see_transitions: std::sync::atomic::AtomicBool,
}

/// The entries by instance ID, and the strings they share.
#[derive(Debug, Default)]
struct Entries {
    by_id: HashMap<String, Seen>,
    shared: Shared,
}

impl std::ops::Deref for Entries {
    type Target = HashMap<String, Seen>;
    fn deref(&self) -> &Self::Target {
        &self.by_id
    }
}

impl std::ops::DerefMut for Entries {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.by_id
    }
}

impl InstanceView {
    fn seen(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The instance as last seen, if seen within `max_age`.
    pub fn fresh(&self, id: &str, max_age: Duration) -> Option<Instance> {
        self.seen()
            .get(id)
            .filter(|s| s.at.elapsed() <= max_age)
            .map(|s| s.instance(id))
    }

    /// Records what a GET (or a list page) showed; true when the status changed from what the view held.
    pub fn record(&self, instance: &Instance) -> bool {
        self.record_at(instance, Instant::now())
    }

    /// [`record`](Self::record) for a request sent at `sent`. An older answer than the one held is dropped.
    pub fn record_at(&self, instance: &Instance, sent: Instant) -> bool {
        self.record_seen(instance, sent, false)
    }

    /// [`record_at`](Self::record_at) for what a hot page showed.
    pub fn record_paged(&self, instance: &Instance, sent: Instant) -> bool {
        self.record_seen(instance, sent, true)
    }

    fn record_seen(&self, instance: &Instance, sent: Instant, paged: bool) -> bool {
        let mut seen = self.seen();
        if seen.get(&instance.id).is_some_and(|p| p.at > sent) {
            return false;
        }
        let Entries { by_id, shared } = &mut *seen;
        let attributes = shared.get(instance, by_id.get(&instance.id).map(|p| &p.attributes));
        let previous = by_id.insert(instance.id.clone(), Seen::of(instance, sent, paged, attributes));
        previous.is_some_and(|p| p.status != instance.status)
    }

    /// The action just accepted on `id` needs no look of its own to catch its departure: the instance is on a
    /// page the hot loop reads every tick, and every transition it saw lasted several ticks.
    pub fn departure_visible(&self, id: &str) -> bool {
        self.pages_see_transitions.load(std::sync::atomic::Ordering::Relaxed) && self.on_read_page(id)
    }

    /// `id` is on a page the hot loop is reading: a hot page showed it within [`super::hot::PAGE_RECENT`], so
    /// the next tick shows it again.
    pub fn on_read_page(&self, id: &str) -> bool {
        self.seen()
            .get(id)
            .is_some_and(|s| s.paged && s.at.elapsed() <= super::hot::PAGE_RECENT)
    }

    pub(super) fn set_pages_see_transitions(&self, yes: bool) {
        self.pages_see_transitions
            .store(yes, std::sync::atomic::Ordering::Relaxed);
    }

    /// The object on `id` no longer follows an action.
    pub fn cool(&self, id: &str) {
        self.hot.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }

    /// For an object following an open action: marks the instance hot, and returns it if a request sent at or
    /// after `since` (the action's acceptance) showed it within [`FOLLOW_FRESH`].
    pub fn following(&self, id: &str, since: Instant) -> Option<Instance> {
        self.hot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_owned(), (Instant::now(), since));
        self.seen()
            .get(id)
            .filter(|s| s.at >= since && s.at.elapsed() <= FOLLOW_FRESH)
            .map(|s| s.instance(id))
    }

    /// The hot instances (marks older than `ttl` are dropped: their objects stopped asking).
    pub fn hot(&self, ttl: Duration) -> Vec<HotInstance> {
        let ids: Vec<(String, Instant)> = {
            let mut hot = self.hot.lock().unwrap_or_else(|p| p.into_inner());
            hot.retain(|_, (asked, _)| asked.elapsed() <= ttl);
            hot.iter().map(|(id, (_, since))| (id.clone(), *since)).collect()
        };
        let seen = self.seen();
        ids.into_iter()
            .map(|(id, since)| {
                let s = seen.get(&id);
                HotInstance {
                    since,
                    zone: s.map(|s| s.attributes.zone.to_string()),
                    customer_id: s.map(|s| s.attributes.customer_id.to_string()),
                    id,
                }
            })
            .collect()
    }

    pub fn forget(&self, id: &str) {
        self.seen().remove(id);
        self.hot.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }

    /// Keeps only the instances some object names.
    pub fn retain(&self, wanted: &HashSet<String>) {
        let mut seen = self.seen();
        seen.retain(|id, _| wanted.contains(id));
        seen.shared.let_go_unused();
    }

    pub fn len(&self) -> usize {
        self.seen().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the refresh loop needs.
pub struct Refresher {
    pub view: Arc<InstanceView>,
    pub api: AdminClient,
    pub index: Arc<InstanceIndex>,
    pub interval: Duration,
    /// Requests per second the view may use at most (a share of the client's rate limit).
    pub max_rate: f64,
    /// The list budget the view shares with fleets' walks.
    pub budget: Arc<crate::controllers::runtime::ListBudget>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl Refresher {
    /// Refreshes the view round after round until the task is dropped.
    pub async fn run(self) {
        loop {
            let started = Instant::now();
            let requests = match self.round().await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "refreshing the instance view failed; objects fall back to GET");
                    0
                }
            };
            self.metrics.view_instances.set(self.view.len() as i64);
            self.metrics.view_round_requests.set(requests as i64);
            // Nothing named yet (the caches are still listing): look again soon. Otherwise a round that
            // finished early (or failed) waits for the rest of the interval.
            let rest = if requests == 0 && self.index.is_empty() {
                self.interval.min(Duration::from_secs(2))
            } else {
                self.interval.saturating_sub(started.elapsed())
            };
            tokio::time::sleep(rest).await;
        }
    }

    /// One round: learn the platform's size from the first page, then walk the pages or GET the named
    /// instances, spread over the interval. Returns the requests made.
    async fn round(&self) -> Result<u64, ApiError> {
        let wanted = self.index.instance_ids();
        self.view.retain(&wanted);
        if wanted.is_empty() {
            return Ok(0);
        }
        self.budget.page().await;
        let first_sent = Instant::now();
        let first = self.api.list_page(&ListFilter::default(), 1, PAGE_SIZE).await?;
        let mode = choose_round(wanted.len() as u64, first.pagination.total_count);
        let (pause, stretched) = pace(self.interval, mode.requests(), self.max_rate);
        self.metrics.view_round_stretched.set(i64::from(stretched));
        if stretched {
            tracing::warn!(
                requests = mode.requests(),
                interval_s = self.interval.as_secs(),
                stretched_to_s = (pause * mode.requests() as u32).as_secs(),
                "the instance view does not fit the request budget in one resync interval; the round is stretched"
            );
        }
        let mut made = 1;
        match mode {
            RoundMode::ListPages { pages } => {
                let mut listed = HashSet::new();
                self.absorb(first.instances.iter(), first_sent, &wanted, &mut listed);
                let mut page = 2;
                let mut more = first.pagination.has_next && !first.instances.is_empty();
                while more && u64::from(page) <= pages.saturating_add(1) {
                    tokio::time::sleep(pause).await;
                    self.budget.page().await;
                    let sent = Instant::now();
                    let got = self.api.list_page(&ListFilter::default(), page, PAGE_SIZE).await?;
                    made += 1;
                    self.absorb(got.instances.iter(), sent, &wanted, &mut listed);
                    more = got.pagination.has_next && !got.instances.is_empty();
                    page += 1;
                }
                if !more {
                    // A whole walk did not show them: gone (or moved past the pages while we walked). Their
                    // objects look for themselves, so a deleted instance is noticed within one interval too.
                    for id in missing_from_walk(&wanted, &listed) {
                        self.view.forget(id);
                        self.index.wake_instance(id);
                    }
                }
            }
            RoundMode::GetEach { .. } => {
                for id in &wanted {
                    tokio::time::sleep(pause).await;
                    // Held back (or gone) since the round began: nothing to look at for it.
                    if !self.index.wants(id) {
                        continue;
                    }
                    self.budget.page().await;
                    made += 1;
                    let sent = Instant::now();
                    match self.api.get_instance(id).await {
                        Ok(i) => self.absorb(std::iter::once(&i), sent, &wanted, &mut HashSet::new()),
                        Err(ApiError::NotFound) => {
                            self.view.forget(id);
                            self.index.wake_instance(id);
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Ok(made)
    }

    /// Takes what a page or GET showed (noting the IDs in `listed`); objects on an instance whose status
    /// changed are woken.
    fn absorb<'a>(
        &self,
        instances: impl Iterator<Item = &'a Instance>,
        sent: Instant,
        wanted: &HashSet<String>,
        listed: &mut HashSet<String>,
    ) {
        for i in instances.filter(|i| wanted.contains(&i.id)) {
            listed.insert(i.id.clone());
            if self.view.record_at(i, sent) {
                self.index.wake_instance(&i.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cheaper_round_is_chosen() {
        // (instances named by objects, instances on the platform, expected)
        let rows = [
            (10_000, 10_000, RoundMode::ListPages { pages: 100 }),
            (100, 10_000, RoundMode::ListPages { pages: 100 }),
            (99, 10_000, RoundMode::GetEach { named: 99 }),
            (5, 1_000_000, RoundMode::GetEach { named: 5 }),
            (1, 1, RoundMode::ListPages { pages: 1 }),
            (3, 0, RoundMode::ListPages { pages: 1 }),
            (2_000, 812, RoundMode::ListPages { pages: 9 }),
        ];
        for (named, total, want) in rows {
            assert_eq!(choose_round(named, total), want, "{named} named of {total}");
        }
    }

    #[test]
    fn rounds_spread_over_the_interval_and_stretch_when_over_budget() {
        let five_min = Duration::from_secs(300);
        // (interval, requests, max rate, pause, stretched)
        let rows = [
            (five_min, 100, 5.0, Duration::from_secs(3), false),
            (five_min, 3000, 5.0, Duration::from_millis(200), true),
            (five_min, 1500, 5.0, Duration::from_millis(200), false),
            (five_min, 0, 5.0, five_min, false),
            (Duration::from_secs(60), 1, 5.0, Duration::from_secs(60), false),
        ];
        for (interval, requests, rate, pause, stretched) in rows {
            assert_eq!(
                pace(interval, requests, rate),
                (pause, stretched),
                "{requests} in {interval:?}"
            );
        }
    }

    #[test]
    fn a_complete_walk_names_what_it_did_not_show() {
        let set = |ids: &[&str]| ids.iter().map(|s| s.to_string()).collect::<HashSet<_>>();
        // (named by objects, shown by the walk, missing)
        let rows: [(&[&str], &[&str], &[&str]); 4] = [
            (&["a", "b"], &["a", "b", "c"], &[]),
            (&["a", "b", "c"], &["b"], &["a", "c"]),
            (&[], &["a"], &[]),
            (&["a"], &[], &["a"]),
        ];
        for (wanted, listed, missing) in rows {
            let wanted = set(wanted);
            let got: Vec<&str> = missing_from_walk(&wanted, &set(listed))
                .into_iter()
                .map(String::as_str)
                .collect();
            assert_eq!(got, missing, "{wanted:?} vs {listed:?}");
        }
    }

    #[test]
    fn the_view_keeps_what_objects_read() {
        let view = InstanceView::default();
        let i: Instance = serde_json::from_value(serde_json::json!({
            "id": "i-1", "status": "running", "name": "web", "zone": "z1", "customerId": "c", "userId": "u",
            "templateId": "t", "machineType": "m", "externalIp": "1.2.3.4", "internalIp": "10.0.0.1",
            "createdAt": "2026-01-01T00:00:00Z"
        }))
        .unwrap();
        view.record(&i);
        let kept = view.fresh("i-1", Duration::from_secs(60)).unwrap();
        assert_eq!(
            (
                kept.name.as_str(),
                kept.zone.as_str(),
                kept.customer_id.as_str(),
                kept.user_id.as_str()
            ),
            ("web", "z1", "c", "u")
        );
        assert_eq!(kept.template_id, "t");
        assert!(kept.external_ip.is_empty() && kept.internal_ip.is_empty() && kept.created_at.is_empty());
    }

    #[test]
    fn the_view_reports_changes_and_ages() {
        let view = InstanceView::default();
        let mut i: Instance = serde_json::from_value(serde_json::json!({"id": "i-1", "status": "running"})).unwrap();
        assert!(!view.record(&i), "first sighting is no change");
        assert!(!view.record(&i));
        i.status = crate::api::InstanceStatus::Stopped;
        assert!(view.record(&i), "a status change is reported");
        assert!(view.fresh("i-1", Duration::from_secs(60)).is_some());
        std::thread::sleep(Duration::from_millis(5));
        assert!(view.fresh("i-1", Duration::from_millis(1)).is_none(), "too old");
        view.retain(&HashSet::new());
        assert!(view.is_empty(), "bounded to what objects name");
    }

    #[test]
    fn instances_share_their_attributes_and_let_them_go_with_the_last() {
        let view = InstanceView::default();
        let instance = |id: &str, zone: &str| -> Instance {
            serde_json::from_value(serde_json::json!({"id": id, "status": "running", "zone": zone, "customerId": "c"}))
                .unwrap()
        };
        for (id, zone) in [("i-1", "z1"), ("i-2", "z1"), ("i-3", "z2")] {
            view.record(&instance(id, zone));
        }
        {
            let seen = view.seen();
            assert!(
                Arc::ptr_eq(&seen["i-1"].attributes, &seen["i-2"].attributes),
                "one (z1, c) for both"
            );
            assert!(!Arc::ptr_eq(&seen["i-1"].attributes, &seen["i-3"].attributes));
            assert_eq!(seen.shared.0.len(), 2);
        }
        view.retain(&["i-1".to_owned()].into());
        let zone_of = |id| view.fresh(id, Duration::from_secs(60)).map(|i| i.zone);
        assert_eq!(zone_of("i-1"), Some("z1".into()));
        assert_eq!(
            view.seen().shared.0.len(),
            1,
            "(z2, c) went with the last instance in it"
        );
        // An instance moved to another zone has its new zone, not the one it shared.
        view.record(&instance("i-1", "z9"));
        assert_eq!(zone_of("i-1"), Some("z9".into()));
        view.retain(&HashSet::new());
        assert!(view.seen().shared.0.is_empty());
    }
}
