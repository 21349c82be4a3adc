//! The hot loop: instances with an action in flight read through the list pages they are on, every
//! [`HOT_TICK`], instead of one GET per poll each; a change wakes the objects on the instance at once.
//!
//! It lists with the narrowest filter every hot instance shares (their zone and their customer, each if all
//! share it),
//! learns where each one is by walking that filter's pages once, then reads only the pages hot instances are
//! on. It reads pages no faster than the objects' own polls would GET (their backoff from the acceptance, see
//! [`read_interval`]), and only with fewer pages than hot instances, so it draws on the client's request
//! budget, not the list budget of the resting view: it only ever replaces requests. An instance that is not where it was (the listing moved) is dropped from the
//! positions, and its object falls back to GET until the next walk.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::index::InstanceIndex;
use super::plan::{PlanSettings, poll_delay};
use super::view::{HotInstance, InstanceView, PAGE_SIZE};
use crate::api::{AdminClient, ListFilter};
use crate::crd::instance_action::{ActionState, ComputeInstanceActionStatus};

/// How often hot pages are read (no faster than the polls they stand in for: [`read_interval`]).
pub const HOT_TICK: Duration = Duration::from_millis(50);
/// A hot page showed an instance this recently: the loop is reading its page (a tick late at most, when
/// pages answer slowly).
pub const PAGE_RECENT: Duration = Duration::from_millis(200);
/// A hot mark no object renewed within this is dropped (objects with an open action poll at least every
/// `poll_max`, 5 s by default).
pub const HOT_TTL: Duration = Duration::from_secs(10);
/// The positions are walked again at most this often (hot instances that no walk finds would otherwise
/// start a walk every tick).
const WALK_AGAIN_AFTER: Duration = Duration::from_secs(5);
/// Slack between the wall clock an acceptance was recorded with and the monotonic clock of the view.
const CLOCK_SLACK: Duration = Duration::from_millis(20);

/// How long transitions stay visible on hot pages, learned from what the pages showed: for each instance, from
/// the first to the last page that showed it transitional (a lower bound of its transition).
#[derive(Default)]
pub struct TransitionClock {
    open: HashMap<String, (Instant, Instant)>,
    samples: std::collections::VecDeque<Duration>,
}

/// Transitions remembered.
const SAMPLES: usize = 32;
/// Transitions seen before the clock is trusted.
const SAMPLES_TRUSTED: usize = 8;

impl TransitionClock {
    /// What a page sent at `sent` showed of one instance.
    pub fn saw(&mut self, id: &str, transitional: bool, sent: Instant) {
        if transitional {
            self.open
                .entry(id.to_owned())
                .and_modify(|(_, last)| *last = sent)
                .or_insert((sent, sent));
        } else if let Some((first, last)) = self.open.remove(id) {
            self.samples.push_back(last.saturating_duration_since(first));
            if self.samples.len() > SAMPLES {
                self.samples.pop_front();
            }
        }
    }

    /// Every recent transition stayed visible for at least `at_least` (and enough were seen).
    pub fn all_visible_for(&self, at_least: Duration) -> bool {
        self.samples.len() >= SAMPLES_TRUSTED && self.samples.iter().all(|d| *d >= at_least)
    }

    /// Drops what is open for instances no longer read.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.open.retain(|id, _| keep(id));
    }
}

/// What one tick does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HotStep {
    Idle,
    /// Walk the filter's pages to learn where the hot instances are.
    Walk,
    /// Read these pages.
    Pages(Vec<u32>),
}

/// The tick's step, from the hot instances (`placed` of them with a known page, on `pages`), the unplaced
/// ones, and the filter's page count if known; `may_walk` is false right after a walk.
pub fn hot_step(
    placed: usize,
    unplaced: usize,
    pages: &BTreeSet<u32>,
    filter_pages: Option<u64>,
    may_walk: bool,
) -> HotStep {
    if placed + unplaced == 0 {
        return HotStep::Idle;
    }
    // A walk pays for itself when it costs no more than one GET of each unplaced instance.
    if may_walk && unplaced > 0 && filter_pages.is_none_or(|p| p <= unplaced as u64) {
        return HotStep::Walk;
    }
    // Unplaced instances are most likely on the page after the last one read: a fleet goes through its
    // selection in list order. That one page is read too (it places them, or shows where they are not),
    // where each unplaced instance would otherwise GET on every poll of its transition.
    let mut read = pages.clone();
    if unplaced > 0
        && let Some(last) = pages.last()
        && filter_pages.is_some_and(|n| u64::from(*last) < n)
    {
        read.insert(last + 1);
    }
    if !read.is_empty() && read.len() < placed + unplaced.min(1) {
        return HotStep::Pages(read.into_iter().collect());
    }
    HotStep::Idle
}

/// The GETs per second the hot instances' own polls would make now (each polls on the planner's backoff from
/// its acceptance).
pub fn poll_rate(hot: &[HotInstance], settings: &PlanSettings, now: Instant) -> f64 {
    hot.iter()
        .map(|h| {
            1.0 / poll_delay(settings, now.saturating_duration_since(h.since))
                .as_secs_f64()
                .max(1e-3)
        })
        .sum()
}

/// How long after reading `pages` pages the next read may come: at least a tick, and no sooner than the polls
/// they stand in for would have made as many GETs.
pub fn read_interval(pages: usize, poll_rate: f64) -> Duration {
    if poll_rate <= 0.0 {
        return HOT_TTL;
    }
    HOT_TICK.max(Duration::from_secs_f64(
        (pages as f64 / poll_rate).min(HOT_TTL.as_secs_f64()),
    ))
}

/// The narrowest filter every hot instance shares: their zone and their customer, each when all share it.
pub fn common_filter(hot: &[HotInstance]) -> ListFilter {
    let shared = |field: fn(&HotInstance) -> Option<&String>| {
        let first = field(hot.first()?)?;
        (!first.is_empty() && hot.iter().all(|h| field(h) == Some(first))).then(|| first.clone())
    };
    ListFilter {
        zone: shared(|h| h.zone.as_ref()),
        customer_id: shared(|h| h.customer_id.as_ref()),
        ..ListFilter::default()
    }
}

/// Since when (monotonic clock) what the view holds may stand in for a poll of an open action: requested after
/// its acceptance (an unconfirmed one-shot: after its intent). `None` when no action is open.
pub fn follow_since(status: &ComputeInstanceActionStatus, now: DateTime<Utc>, now_instant: Instant) -> Option<Instant> {
    let a = status.action.as_ref()?;
    let from = match a.state {
        ActionState::Accepted => a.accepted_at.unwrap_or(a.intent_at),
        ActionState::Requested => a.intent_at,
        _ => return None,
    };
    let ago = (now - from).to_std().unwrap_or(Duration::ZERO);
    Some(now_instant.checked_sub(ago).unwrap_or(now_instant) + CLOCK_SLACK)
}

/// The loop's state: the filter it lists by and where each instance was under it.
pub struct HotPages {
    pub view: Arc<InstanceView>,
    pub api: AdminClient,
    pub index: Arc<InstanceIndex>,
    filter: ListFilter,
    positions: HashMap<String, u32>,
    filter_pages: Option<u64>,
    walked: Option<Instant>,
    clock: TransitionClock,
    settings: PlanSettings,
    /// Pages are not read again before this.
    next_read: Instant,
}

impl HotPages {
    pub fn new(view: Arc<InstanceView>, api: AdminClient, index: Arc<InstanceIndex>, settings: PlanSettings) -> Self {
        Self {
            view,
            api,
            index,
            filter: ListFilter::default(),
            positions: HashMap::new(),
            filter_pages: None,
            walked: None,
            clock: TransitionClock::default(),
            settings,
            next_read: Instant::now(),
        }
    }

    /// Reads hot pages every tick until the task is dropped.
    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(HOT_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.tick().await {
                tracing::debug!(error = %e, "reading hot pages failed; their objects poll with GET");
            }
        }
    }

    async fn tick(&mut self) -> Result<(), crate::api::ApiError> {
        let hot = self.view.hot(HOT_TTL);
        if hot.is_empty() {
            self.positions.clear();
            self.clock.retain(|_| false);
            return Ok(());
        }
        let positions = &self.positions;
        self.clock.retain(|id| positions.contains_key(id));
        let filter = common_filter(&hot);
        if filter != self.filter {
            self.filter = filter;
            self.positions.clear();
            self.filter_pages = None;
            self.walked = None;
        }
        let mut pages = BTreeSet::new();
        let mut placed = 0;
        for h in &hot {
            if let Some(page) = self.positions.get(&h.id) {
                pages.insert(*page);
                placed += 1;
            }
        }
        let may_walk = self.walked.is_none_or(|t| t.elapsed() >= WALK_AGAIN_AFTER);
        match hot_step(placed, hot.len() - placed, &pages, self.filter_pages, may_walk) {
            HotStep::Idle => Ok(()),
            HotStep::Walk => self.walk(hot.len() - placed).await,
            HotStep::Pages(pages) => {
                let now = Instant::now();
                if now < self.next_read {
                    return Ok(());
                }
                let rate = poll_rate(&hot, &self.settings, now);
                self.next_read = now + read_interval(pages.len(), rate);
                for page in pages {
                    self.read(page).await?;
                }
                Ok(())
            }
        }
    }

    /// Walks the filter's pages (stopping after the first if they are more than the unplaced instances).
    async fn walk(&mut self, unplaced: usize) -> Result<(), crate::api::ApiError> {
        self.walked = Some(Instant::now());
        let mut page = 1;
        loop {
            let (has_next, total) = self.read(page).await?;
            let pages = total.div_ceil(u64::from(PAGE_SIZE));
            self.filter_pages = Some(pages);
            if !has_next || (page == 1 && pages > unplaced as u64) || u64::from(page) >= pages {
                return Ok(());
            }
            page += 1;
        }
    }

    /// Reads one page: records what it shows (waking objects on a changed instance) and where; returns
    /// whether more pages follow and the filter's total.
    async fn read(&mut self, page: u32) -> Result<(bool, u64), crate::api::ApiError> {
        let sent = Instant::now();
        let got = self.api.list_page(&self.filter, page, PAGE_SIZE).await?;
        let mut shown = std::collections::HashSet::new();
        for i in &got.instances {
            shown.insert(i.id.as_str());
            self.positions.insert(i.id.clone(), page);
            self.clock.saw(&i.id, i.status.is_transitional(), sent);
            if self.view.record_paged(i, sent) {
                self.index.wake_instance(&i.id);
            }
        }
        // A departure lasting at least three ticks is on some page read meanwhile.
        self.view
            .set_pages_see_transitions(self.clock.all_visible_for(3 * HOT_TICK));
        // Expected here and not shown: the listing moved; that instance is looked for by the next walk.
        self.positions.retain(|id, p| *p != page || shown.contains(id.as_str()));
        Ok((got.pagination.has_next, got.pagination.total_count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_are_trusted_once_enough_stayed_visible() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut clock = TransitionClock::default();
        for i in 0..SAMPLES_TRUSTED {
            let id = format!("i-{i}");
            // Transitional on pages at 0, 100 ... 900 ms, settled at 1000 ms: visible for 900 ms.
            for t in (0..10).map(|k| ms(k * 100)) {
                clock.saw(&id, true, t);
            }
            assert!(!clock.all_visible_for(Duration::from_millis(300)), "too few yet");
            clock.saw(&id, false, ms(1000));
        }
        assert!(clock.all_visible_for(Duration::from_millis(300)));
        assert!(!clock.all_visible_for(Duration::from_secs(1)));
        // One short transition (seen on a single page) is enough to distrust the pages.
        clock.saw("short", true, ms(2000));
        clock.saw("short", false, ms(2100));
        assert!(!clock.all_visible_for(Duration::from_millis(300)));
        // A settled instance never seen transitional is no sample.
        let mut fresh = TransitionClock::default();
        fresh.saw("a", false, ms(0));
        assert!(fresh.samples.is_empty());
    }

    #[test]
    fn a_tick_lists_only_when_it_saves_requests() {
        let set = |p: &[u32]| p.iter().copied().collect::<BTreeSet<u32>>();
        // (placed, unplaced, pages of the placed, filter pages, may walk, step)
        let rows = [
            (0, 0, set(&[]), None, true, HotStep::Idle),
            (0, 50, set(&[]), None, true, HotStep::Walk),
            (0, 50, set(&[]), Some(10), true, HotStep::Walk),
            (0, 5, set(&[]), Some(10), true, HotStep::Idle),
            (50, 0, set(&[2, 3]), Some(10), true, HotStep::Pages(vec![2, 3])),
            // Unplaced ones: the page after the last one read is read too (a fleet moves on in list order).
            (45, 5, set(&[2]), Some(10), true, HotStep::Pages(vec![2, 3])),
            (45, 5, set(&[9, 10]), Some(10), true, HotStep::Pages(vec![9, 10])),
            (40, 10, set(&[2]), Some(10), true, HotStep::Walk),
            (40, 10, set(&[2]), Some(10), false, HotStep::Pages(vec![2, 3])),
            (2, 1, set(&[4]), Some(10), false, HotStep::Pages(vec![4, 5])),
            (1, 1, set(&[4]), Some(10), false, HotStep::Idle),
            (2, 0, set(&[1, 7]), Some(10), true, HotStep::Idle),
            (1, 0, set(&[1]), Some(1), true, HotStep::Idle),
        ];
        for (placed, unplaced, pages, filter_pages, may_walk, want) in rows {
            assert_eq!(
                hot_step(placed, unplaced, &pages, filter_pages, may_walk),
                want,
                "{placed} placed on {pages:?}, {unplaced} unplaced, {filter_pages:?} pages"
            );
        }
    }

    #[test]
    fn pages_are_read_no_faster_than_the_polls_they_replace() {
        let s = PlanSettings::default();
        let now = Instant::now();
        let at = |ago_ms: u64| HotInstance {
            since: now - Duration::from_millis(ago_ms),
            ..hot("a", None, None)
        };
        // 50 just accepted poll every 100 ms: 500 GETs/s.
        let fresh: Vec<_> = (0..50).map(|_| at(0)).collect();
        assert!((poll_rate(&fresh, &s, now) - 500.0).abs() < 1e-6);
        // 50 a minute in poll every 5 s (poll_max): 10 GETs/s.
        let old: Vec<_> = (0..50).map(|_| at(60_000)).collect();
        assert!((poll_rate(&old, &s, now) - 10.0).abs() < 1e-6);
        // (pages, poll rate, interval)
        let rows = [
            (2, 500.0, HOT_TICK),
            (2, 10.0, Duration::from_millis(200)),
            (1, 0.5, Duration::from_secs(2)),
            (1, 0.0, HOT_TTL),
            (10, 0.01, HOT_TTL),
        ];
        for (pages, rate, want) in rows {
            assert_eq!(read_interval(pages, rate), want, "{pages} pages at {rate}/s");
        }
    }

    fn hot(id: &str, zone: Option<&str>, customer: Option<&str>) -> HotInstance {
        HotInstance {
            since: Instant::now(),
            id: id.into(),
            zone: zone.map(Into::into),
            customer_id: customer.map(Into::into),
        }
    }

    #[test]
    fn the_filter_is_what_every_hot_instance_shares() {
        let both = |z: &str, c: &str| ListFilter {
            zone: Some(z.into()),
            customer_id: Some(c.into()),
            ..ListFilter::default()
        };
        let customer = |c: &str| ListFilter {
            customer_id: Some(c.into()),
            ..ListFilter::default()
        };
        let rows = [
            (
                vec![hot("a", Some("z1"), Some("c")), hot("b", Some("z1"), Some("c"))],
                both("z1", "c"),
            ),
            (
                vec![hot("a", Some("z1"), Some("c")), hot("b", Some("z2"), Some("c"))],
                customer("c"),
            ),
            (
                vec![hot("a", Some("z1"), Some("c")), hot("b", None, None)],
                ListFilter::default(),
            ),
            (vec![hot("a", Some(""), Some("c"))], customer("c")),
            (vec![], ListFilter::default()),
        ];
        for (hot, want) in rows {
            assert_eq!(common_filter(&hot), want, "{hot:?}");
        }
    }

    #[test]
    fn an_open_action_follows_from_its_acceptance() {
        use crate::api::PowerAction;
        use crate::crd::instance_action::ActionRecord;
        let now = Utc::now();
        let at = Instant::now();
        let record = |state, accepted: Option<i64>| ActionRecord {
            state,
            accepted_at: accepted.map(|s| now - chrono::Duration::seconds(s)),
            ..ActionRecord::intent(PowerAction::Restart, None, 1, now - chrono::Duration::seconds(3))
        };
        let status = |r: Option<ActionRecord>| ComputeInstanceActionStatus {
            action: r,
            ..Default::default()
        };
        let ago = |s: u64| Some(at - Duration::from_secs(s) + CLOCK_SLACK);
        // (record, since)
        let rows = [
            (None, None),
            (Some(record(ActionState::Accepted, Some(2))), ago(2)),
            (Some(record(ActionState::Accepted, None)), ago(3)),
            (Some(record(ActionState::Requested, None)), ago(3)),
            (Some(record(ActionState::Succeeded, Some(2))), None),
            (Some(record(ActionState::Rejected, None)), None),
        ];
        for (r, want) in rows {
            assert_eq!(follow_since(&status(r.clone()), now, at), want, "{r:?}");
        }
        // Accepted "in the future" (a clock step): from now.
        let future = record(ActionState::Accepted, Some(-5));
        assert_eq!(follow_since(&status(Some(future)), now, at), Some(at + CLOCK_SLACK));
    }
}
