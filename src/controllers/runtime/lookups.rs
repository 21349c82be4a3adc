//! What a fleet asks the admin API, purely: its selector narrowed by the namespace's access policies *before*
//! anything is listed, so a walk only returns instances the namespace may power wherever the list filters can
//! express the policy, and a namespace no policy covers asks nothing at all.

use std::collections::BTreeSet;

use crate::api::{Instance, ListFilter};
use crate::crd::access_policy::{Coverage, InstanceMatch};
use crate::crd::selector::InstanceSelector;

/// Most list walks one selection may need (one per combination of a policy's attribute lists); past this the
/// selector's own filters are walked and the policy is applied to what comes back.
pub const MAX_LIST_LOOKUPS: usize = 16;

/// One request (or walk) of a selection.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Lookup {
    /// Walk every page of the list endpoint with these filters.
    List(ListFilter),
    /// GET one instance by ID.
    Get(String),
}

/// The lookups for `selector` under `coverage`, without duplicates, in a stable order.
pub fn lookups(selector: &InstanceSelector, coverage: &Coverage) -> Vec<Lookup> {
    if selector.is_empty() {
        // The API server rejects an empty selector; never read one as "every instance".
        return Vec::new();
    }
    let mut out = BTreeSet::new();
    match coverage {
        Coverage::Everything => {
            if selector.has_filters() {
                out.insert(Lookup::List(selector.list_filter()));
            } else {
                out.extend(selector.instance_ids.iter().cloned().map(Lookup::Get));
            }
        }
        Coverage::Only(matches) => {
            for m in matches {
                out.extend(narrowed(selector, m));
            }
        }
    }
    out.into_iter().collect()
}

/// The lookups that find every instance an attribute match covers (a disruption budget's count): its IDs
/// read one by one, or one walk per combination of its attribute lists (past [`MAX_LIST_LOOKUPS`], one walk of
/// everything, judged by the match).
pub fn lookups_of_match(m: &InstanceMatch) -> Vec<Lookup> {
    if let Some(ids) = &m.ids {
        return ids.iter().cloned().map(Lookup::Get).collect();
    }
    let combos = attribute_combinations(m);
    if combos.len() > MAX_LIST_LOOKUPS {
        return vec![Lookup::List(ListFilter::default())];
    }
    combos.into_iter().map(Lookup::List).collect()
}

/// The lookups of `selector` that one policy's instance match allows.
fn narrowed(selector: &InstanceSelector, m: &InstanceMatch) -> Vec<Lookup> {
    if let Some(ids) = &m.ids {
        // A policy naming IDs: only those, and only the ones the selector names too (if it names any).
        return ids
            .iter()
            .filter(|id| selector.instance_ids.is_empty() || selector.instance_ids.contains(id))
            .cloned()
            .map(Lookup::Get)
            .collect();
    }
    if !selector.has_filters() {
        // Explicit IDs under a policy of attributes: each is read and judged (a foreign one reads as missing).
        return selector.instance_ids.iter().cloned().map(Lookup::Get).collect();
    }
    let combos = attribute_combinations(m);
    if combos.len() > MAX_LIST_LOOKUPS {
        return vec![Lookup::List(selector.list_filter())];
    }
    combos
        .into_iter()
        .filter_map(|combo| merge(&selector.list_filter(), &combo))
        .map(Lookup::List)
        .collect()
}

/// Every filter a policy's attribute lists allow (the cartesian product of its lists).
fn attribute_combinations(m: &InstanceMatch) -> Vec<ListFilter> {
    let values = |list: &Option<Vec<String>>| -> Vec<Option<String>> {
        match list {
            None => vec![None],
            Some(v) => v.iter().cloned().map(Some).collect(),
        }
    };
    let mut combos = Vec::new();
    for customer_id in values(&m.customer_ids) {
        for user_id in values(&m.user_ids) {
            for zone in values(&m.zones) {
                for template_id in values(&m.template_ids) {
                    combos.push(ListFilter {
                        customer_id: customer_id.clone(),
                        user_id: user_id.clone(),
                        zone: zone.clone(),
                        template_id: template_id.clone(),
                        status: None,
                    });
                }
            }
        }
    }
    combos
}

/// Both filters at once, or `None` when they contradict (one asks zone a, the other zone b).
fn merge(a: &ListFilter, b: &ListFilter) -> Option<ListFilter> {
    fn one(x: &Option<String>, y: &Option<String>) -> Result<Option<String>, ()> {
        match (x, y) {
            (Some(x), Some(y)) if x != y => Err(()),
            (Some(x), _) => Ok(Some(x.clone())),
            (None, y) => Ok(y.clone()),
        }
    }
    Some(ListFilter {
        user_id: one(&a.user_id, &b.user_id).ok()?,
        customer_id: one(&a.customer_id, &b.customer_id).ok()?,
        status: one(&a.status, &b.status).ok()?,
        zone: one(&a.zone, &b.zone).ok()?,
        template_id: one(&a.template_id, &b.template_id).ok()?,
    })
}

/// Does a looked-up instance belong to the selection (every filter, and one of the IDs if any are named)?
/// Checked on everything a lookup returns, whatever the server filtered.
pub fn selected(selector: &InstanceSelector, instance: &Instance) -> bool {
    selector.list_filter().matches(instance)
        && (selector.instance_ids.is_empty() || selector.instance_ids.contains(&instance.id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(pairs: &[(&str, &str)]) -> ListFilter {
        let get = |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string());
        ListFilter {
            user_id: get("user"),
            customer_id: get("customer"),
            status: get("status"),
            zone: get("zone"),
            template_id: get("template"),
        }
    }

    fn some(v: &[&str]) -> Option<Vec<String>> {
        Some(v.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn lookup_table() {
        let by_customer = InstanceSelector {
            customer_id: Some("c-other".into()),
            ..Default::default()
        };
        let by_zone = InstanceSelector {
            zone: Some("z1".into()),
            status: Some("running".into()),
            ..Default::default()
        };
        let by_ids = InstanceSelector {
            instance_ids: vec!["i-1".into(), "i-2".into()],
            ..Default::default()
        };
        let mine = InstanceMatch {
            customer_ids: some(&["c-mine"]),
            ..Default::default()
        };
        let two_zones = InstanceMatch {
            zones: some(&["z1", "z2"]),
            ..Default::default()
        };
        let named = InstanceMatch {
            ids: some(&["i-2", "i-9"]),
            ..Default::default()
        };
        let rows: Vec<(&str, &InstanceSelector, Coverage, Vec<Lookup>)> = vec![
            (
                "policy off: the selector as it is",
                &by_customer,
                Coverage::Everything,
                vec![Lookup::List(filter(&[("customer", "c-other")]))],
            ),
            (
                "no policy covers the namespace: nothing asked",
                &by_customer,
                Coverage::Only(vec![]),
                vec![],
            ),
            (
                "another customer than the policy's: a contradiction, nothing asked",
                &by_customer,
                Coverage::Only(vec![mine.clone()]),
                vec![],
            ),
            (
                "a zone selector under a customer policy: walked with both filters",
                &by_zone,
                Coverage::Only(vec![mine.clone()]),
                vec![Lookup::List(filter(&[
                    ("customer", "c-mine"),
                    ("zone", "z1"),
                    ("status", "running"),
                ]))],
            ),
            (
                "a policy of two zones: only the one the selector names",
                &by_zone,
                Coverage::Only(vec![two_zones.clone()]),
                vec![Lookup::List(filter(&[("zone", "z1"), ("status", "running")]))],
            ),
            (
                "explicit IDs under a policy naming IDs: only the IDs both name",
                &by_ids,
                Coverage::Only(vec![named.clone()]),
                vec![Lookup::Get("i-2".into())],
            ),
            (
                "a filter selector under a policy naming IDs: GET those, judge locally",
                &by_zone,
                Coverage::Only(vec![named]),
                vec![Lookup::Get("i-2".into()), Lookup::Get("i-9".into())],
            ),
            (
                "explicit IDs under an attribute policy: each read and judged",
                &by_ids,
                Coverage::Only(vec![mine.clone(), two_zones]),
                vec![Lookup::Get("i-1".into()), Lookup::Get("i-2".into())],
            ),
            (
                "two policies that allow the same: asked once",
                &by_zone,
                Coverage::Only(vec![mine.clone(), mine]),
                vec![Lookup::List(filter(&[
                    ("customer", "c-mine"),
                    ("zone", "z1"),
                    ("status", "running"),
                ]))],
            ),
        ];
        for (what, selector, coverage, want) in rows {
            assert_eq!(lookups(selector, &coverage), want, "{what}");
        }
        assert!(lookups(&InstanceSelector::default(), &Coverage::Everything).is_empty());
    }

    #[test]
    fn a_policy_with_many_combinations_falls_back_to_the_selector() {
        let many: Vec<String> = (0..5).map(|n| format!("v{n}")).collect();
        let wide = InstanceMatch {
            zones: Some(many.clone()),
            customer_ids: Some(many),
            ..Default::default()
        };
        let selector = InstanceSelector {
            status: Some("running".into()),
            ..Default::default()
        };
        assert_eq!(
            lookups(&selector, &Coverage::Only(vec![wide])),
            vec![Lookup::List(filter(&[("status", "running")]))]
        );
    }

    #[test]
    fn what_a_lookup_returns_is_checked_against_the_selector() {
        let i: Instance = serde_json::from_value(serde_json::json!({
            "id": "i-1", "status": "running", "customerId": "c1", "userId": "u1", "zone": "z1", "templateId": "t1"
        }))
        .unwrap();
        let mut s = InstanceSelector {
            zone: Some("z1".into()),
            ..Default::default()
        };
        assert!(selected(&s, &i));
        s.instance_ids = vec!["i-2".into()];
        assert!(!selected(&s, &i), "not one of the named IDs");
        s.instance_ids.clear();
        s.status = Some("stopped".into());
        assert!(!selected(&s, &i), "a filter the server did not apply");
    }
}
