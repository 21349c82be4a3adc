//! What fleets and schedules share in their spec: which instances (`selector`) and how fast (`strategy`).
// kube-derive takes one `validation = ...` per rule, by design.
#![allow(clippy::duplicated_attributes)]

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::api::ListFilter;

/// Most explicit instance IDs one selector may name.
pub const MAX_SELECTOR_INSTANCE_IDS: usize = 500;

/// Which instances: the admin API list filters (AND-combined) and/or an explicit list of IDs.
/// At least one field is required: an empty selector is never read as "the whole platform".
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.customerId) || has(self.userId) || has(self.zone) || has(self.templateId) || has(self.status) || (has(self.instanceIds) && size(self.instanceIds) > 0)")
        .message("selector must set at least one of customerId, userId, zone, templateId, status or instanceIds: an empty selector would mean every instance of the platform")
)]
pub struct InstanceSelector {
    /// List filter `customerID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub customer_id: Option<String>,
    /// List filter `userID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub user_id: Option<String>,
    /// List filter `zone`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub zone: Option<String>,
    /// List filter `templateID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub template_id: Option<String>,
    /// List filter `status` (e.g. `running`, `error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub status: Option<String>,
    /// Explicit instance IDs (each a safe path segment). With filters set too, an ID must also match them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    // Items are bounded too: without maxLength the API server estimates the CEL rule's cost as too high and
    // refuses the CRD.
    #[schemars(length(max = 500), inner(length(min = 1, max = 128)))]
    #[x_kube(
        validation = Rule::new("self.all(id, id.matches('^[A-Za-z0-9]([A-Za-z0-9_:-]|[.][A-Za-z0-9_:-])*$') && size(id) <= 128)")
            .message("each of instanceIds must start with a letter or digit, contain only letters, digits, '.', '_', ':' or '-' (no '..'), and be at most 128 characters")
    )]
    pub instance_ids: Vec<String>,
}

impl InstanceSelector {
    /// The admin API list filters this selector sets (explicit IDs are not a list filter).
    pub fn list_filter(&self) -> ListFilter {
        ListFilter {
            user_id: self.user_id.clone(),
            customer_id: self.customer_id.clone(),
            status: self.status.clone(),
            zone: self.zone.clone(),
            template_id: self.template_id.clone(),
        }
    }

    /// Whether any list filter is set (then the list endpoint must be walked).
    pub fn has_filters(&self) -> bool {
        self.user_id.is_some()
            || self.customer_id.is_some()
            || self.status.is_some()
            || self.zone.is_some()
            || self.template_id.is_some()
    }

    /// The selector in a few words (`customerId=c1,zone=z1,3 instance IDs`): the user's own input read back,
    /// for reports and messages.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = [
            ("customerId", &self.customer_id),
            ("userId", &self.user_id),
            ("zone", &self.zone),
            ("templateId", &self.template_id),
            ("status", &self.status),
        ]
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
        .collect();
        match self.instance_ids.len() {
            0 => {}
            1 => parts.push(format!("instance {}", self.instance_ids[0])),
            n => parts.push(format!("{n} instance IDs")),
        }
        parts.join(",")
    }

    /// Whether the selector names nothing at all (the API server rejects this; checked again defensively).
    pub fn is_empty(&self) -> bool {
        !self.has_filters() && self.instance_ids.is_empty()
    }
}

/// How many instances may be acted on at once, as a count or a percentage of the selection.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(untagged)]
pub enum MaxConcurrent {
    Count(u32),
    /// `"25%"`: a percentage of the selection, rounded up, at least 1.
    Percent(String),
}

impl Default for MaxConcurrent {
    fn default() -> Self {
        Self::Count(1)
    }
}

impl MaxConcurrent {
    /// The cap for a selection of `selected` instances (always at least 1). `None` for a malformed percentage.
    pub fn resolve(&self, selected: usize) -> Option<usize> {
        match self {
            Self::Count(n) => Some((*n as usize).max(1)),
            Self::Percent(p) => {
                let pct: u64 = p
                    .strip_suffix('%')?
                    .trim()
                    .parse()
                    .ok()
                    .filter(|v| (1..=100).contains(v))?;
                let n = (selected as u64 * pct).div_ceil(100);
                Some((n as usize).max(1))
            }
        }
    }
}

/// Pacing and failure budget of a rollout over many instances. Unset fields take the defaults of the kind:
/// a fleet is careful (one at a time, the first failure stops it), a schedule's event fits a calendar
/// ([`SCHEDULE_DEFAULTS`]: many at a time, and one instance that cannot move does not stop the others).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Strategy {
    /// At most this many instances in flight at once: a number (>= 1) or a percentage like `"25%"`. Default 1
    /// for a fleet, 50 for a schedule's event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "max_concurrent_schema")]
    pub max_concurrent: Option<MaxConcurrent>,
    /// Failures tolerated before the rollout stops. Default 0 for a fleet (the first failure stops it); a
    /// schedule's event tries every instance by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 100000))]
    pub max_failures: Option<u32>,
}

/// The values a [`Strategy`] falls back to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StrategyDefaults {
    pub max_concurrent: u32,
    pub max_failures: u32,
}

/// A fleet's: one at a time, stop at the first failure.
pub const FLEET_DEFAULTS: StrategyDefaults = StrategyDefaults {
    max_concurrent: 1,
    max_failures: 0,
};
/// A schedule's event: 50 at a time, never stop for a failure (each instance is tried once).
pub const SCHEDULE_DEFAULTS: StrategyDefaults = StrategyDefaults {
    max_concurrent: 50,
    max_failures: 100_000,
};

impl Strategy {
    pub fn max_concurrent(&self) -> MaxConcurrent {
        self.max_concurrent.clone().unwrap_or_default()
    }

    pub fn max_failures(&self) -> u32 {
        self.max_failures.unwrap_or(FLEET_DEFAULTS.max_failures)
    }

    /// Every field set: this strategy's own values, the given defaults for the rest.
    pub fn resolved(&self, defaults: StrategyDefaults) -> Self {
        Self {
            max_concurrent: Some(
                self.max_concurrent
                    .clone()
                    .unwrap_or(MaxConcurrent::Count(defaults.max_concurrent)),
            ),
            max_failures: Some(self.max_failures.unwrap_or(defaults.max_failures)),
        }
    }
}

/// `int-or-string` with the pattern a person can read back in the error message.
fn max_concurrent_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "x-kubernetes-int-or-string": true,
        "anyOf": [
            {"type": "integer", "minimum": 1},
            {"type": "string", "pattern": "^([1-9][0-9]?|100)%$"}
        ],
        "description": "A number of instances (>= 1) or a percentage of the selection such as \"25%\" (1% to 100%)."
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_concurrent_resolves_counts_and_percentages() {
        let rows: &[(MaxConcurrent, usize, Option<usize>)] = &[
            (MaxConcurrent::Count(5), 100, Some(5)),
            (MaxConcurrent::Count(0), 100, Some(1)),
            (MaxConcurrent::Percent("25%".into()), 100, Some(25)),
            (MaxConcurrent::Percent("25%".into()), 10, Some(3)),
            (MaxConcurrent::Percent("1%".into()), 10, Some(1)),
            (MaxConcurrent::Percent("100%".into()), 0, Some(1)),
            (MaxConcurrent::Percent("0%".into()), 10, None),
            (MaxConcurrent::Percent("abc".into()), 10, None),
            (MaxConcurrent::Percent("150%".into()), 10, None),
        ];
        for (mc, selected, want) in rows {
            assert_eq!(mc.resolve(*selected), *want, "{mc:?} of {selected}");
        }
    }

    #[test]
    fn selector_maps_one_to_one_to_list_filters() {
        let s = InstanceSelector {
            customer_id: Some("c1".into()),
            zone: Some("z".into()),
            ..Default::default()
        };
        let f = s.list_filter();
        assert_eq!(f.query_pairs(), vec![("customerID", "c1"), ("zone", "z")]);
        assert!(s.has_filters() && !s.is_empty());
        assert!(InstanceSelector::default().is_empty());
    }

    #[test]
    fn strategy_defaults_to_one_at_a_time_and_no_failures() {
        let s: Strategy = serde_json::from_str("{}").unwrap();
        assert_eq!(s.max_concurrent(), MaxConcurrent::Count(1));
        assert_eq!(s.max_failures(), 0);
        let s: Strategy = serde_json::from_str(r#"{"maxConcurrent":"10%"}"#).unwrap();
        assert_eq!(s.max_concurrent(), MaxConcurrent::Percent("10%".into()));
    }

    #[test]
    fn a_schedule_fills_what_is_unset_with_its_own_defaults() {
        let rows = [
            ("{}", MaxConcurrent::Count(50), 100_000),
            (r#"{"maxConcurrent":5}"#, MaxConcurrent::Count(5), 100_000),
            (r#"{"maxFailures":2}"#, MaxConcurrent::Count(50), 2),
        ];
        for (json, concurrent, failures) in rows {
            let s: Strategy = serde_json::from_str(json).unwrap();
            let r = s.resolved(SCHEDULE_DEFAULTS);
            assert_eq!((r.max_concurrent(), r.max_failures()), (concurrent, failures), "{json}");
        }
        // A fleet's defaults do not change a strategy that is unset.
        assert_eq!(
            Strategy::default().resolved(FLEET_DEFAULTS).max_concurrent(),
            MaxConcurrent::Count(1)
        );
    }
}
