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

/// Pacing and failure budget of a rollout over many instances.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Strategy {
    /// At most this many instances in flight at once: a number (>= 1) or a percentage like `"25%"`. Default 1.
    #[serde(default)]
    #[schemars(schema_with = "max_concurrent_schema")]
    pub max_concurrent: MaxConcurrent,
    /// Failures tolerated before the rollout stops (default 0: the first failure stops it).
    #[serde(default)]
    #[schemars(range(max = 100000))]
    pub max_failures: u32,
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
        assert_eq!(s.max_concurrent, MaxConcurrent::Count(1));
        assert_eq!(s.max_failures, 0);
        let s: Strategy = serde_json::from_str(r#"{"maxConcurrent":"10%"}"#).unwrap();
        assert_eq!(s.max_concurrent, MaxConcurrent::Percent("10%".into()));
    }
}
