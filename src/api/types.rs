//! Wire types of the compute admin API, with the spec's JSON field names, tolerant of unknown fields.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Largest page the admin API serves.
pub const MAX_PAGE_SIZE: u32 = 100;
/// Page size the admin API uses when none is asked for.
pub const DEFAULT_PAGE_SIZE: u32 = 20;

/// An instance's status. The spec lists five; a real service also reports transitional ones while an action
/// runs, and may add more, so anything else is kept verbatim as [`InstanceStatus::Other`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum InstanceStatus {
    Provisioning,
    Running,
    Stopped,
    Error,
    Deleting,
    /// Transitional statuses a real service reports while an action runs.
    Stopping,
    Starting,
    Restarting,
    Resetting,
    /// Any status this client does not know. Treated as "not settled".
    Other(String),
}

impl InstanceStatus {
    /// The five statuses the spec lists, which are also the ones the list filter accepts.
    pub const FILTERABLE: [&'static str; 5] = ["provisioning", "running", "stopped", "error", "deleting"];

    pub fn as_str(&self) -> &str {
        match self {
            Self::Provisioning => "provisioning",
            Self::Running => "running",
            Self::Stopped => "stopped",
            Self::Error => "error",
            Self::Deleting => "deleting",
            Self::Stopping => "stopping",
            Self::Starting => "starting",
            Self::Restarting => "restarting",
            Self::Resetting => "resetting",
            Self::Other(s) => s,
        }
    }

    pub fn parse(s: &str) -> Self {
        match s {
            "provisioning" => Self::Provisioning,
            "running" => Self::Running,
            "stopped" => Self::Stopped,
            "error" => Self::Error,
            "deleting" => Self::Deleting,
            "stopping" => Self::Stopping,
            "starting" => Self::Starting,
            "restarting" => Self::Restarting,
            "resetting" => Self::Resetting,
            other => Self::Other(other.to_owned()),
        }
    }

    /// True while the instance is moving between settled states (including statuses we do not know).
    pub fn is_transitional(&self) -> bool {
        matches!(
            self,
            Self::Provisioning | Self::Stopping | Self::Starting | Self::Restarting | Self::Resetting | Self::Other(_)
        )
    }
}

impl fmt::Display for InstanceStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for InstanceStatus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for InstanceStatus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(Self::parse(&s))
    }
}

/// One instance record as the list and get endpoints return it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Instance {
    pub id: String,
    #[serde(default)]
    pub user_id: String,
    #[serde(default)]
    pub customer_id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub zone: String,
    #[serde(default)]
    pub machine_type: String,
    #[serde(default)]
    pub external_ip: String,
    #[serde(default)]
    pub internal_ip: String,
    pub status: InstanceStatus,
    #[serde(default)]
    pub template_id: String,
    #[serde(default)]
    pub created_at: String,
}

/// The standard pagination envelope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pagination {
    pub page: u32,
    pub page_size: u32,
    pub total_count: u64,
    pub total_pages: u64,
    pub has_next: bool,
    pub has_prev: bool,
}

/// One page of the list endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstancePage {
    pub instances: Vec<Instance>,
    pub pagination: Pagination,
}

/// Filters of the list endpoint, combined with AND. `None` means "no filter".
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ListFilter {
    pub user_id: Option<String>,
    pub customer_id: Option<String>,
    pub status: Option<String>,
    pub zone: Option<String>,
    pub template_id: Option<String>,
}

impl ListFilter {
    /// The filters as query pairs, with the spec's parameter names.
    pub fn query_pairs(&self) -> Vec<(&'static str, &str)> {
        [
            ("userID", &self.user_id),
            ("customerID", &self.customer_id),
            ("status", &self.status),
            ("zone", &self.zone),
            ("templateID", &self.template_id),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_deref().map(|v| (k, v)))
        .collect()
    }

    /// Does this instance pass every filter that is set?
    pub fn matches(&self, i: &Instance) -> bool {
        let ok = |f: &Option<String>, v: &str| f.as_deref().is_none_or(|f| f == v);
        ok(&self.user_id, &i.user_id)
            && ok(&self.customer_id, &i.customer_id)
            && ok(&self.status, i.status.as_str())
            && ok(&self.zone, &i.zone)
            && ok(&self.template_id, &i.template_id)
    }
}

/// The four asynchronous actions, each a `POST .../instances/{id}/<action>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PowerAction {
    Stop,
    Start,
    Restart,
    Reset,
}

impl PowerAction {
    pub const ALL: [PowerAction; 4] = [Self::Stop, Self::Start, Self::Restart, Self::Reset];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Start => "start",
            Self::Restart => "restart",
            Self::Reset => "reset",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// Restart and reset change the world each time they run; stop and start converge to a level.
    pub fn is_one_shot(self) -> bool {
        matches!(self, Self::Restart | Self::Reset)
    }
}

impl fmt::Display for PowerAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_status_and_extra_fields_are_tolerated() {
        let raw = r#"{"id":"i-1","status":"hibernating","name":"n","zone":"z","somethingNew":{"a":1}}"#;
        let inst: Instance = serde_json::from_str(raw).expect("parses");
        assert_eq!(inst.status, InstanceStatus::Other("hibernating".into()));
        assert!(inst.status.is_transitional());
        assert_eq!(serde_json::to_value(&inst.status).unwrap(), "hibernating");
    }

    #[test]
    fn status_round_trips_for_every_known_value() {
        for s in [
            "provisioning",
            "running",
            "stopped",
            "error",
            "deleting",
            "stopping",
            "starting",
            "restarting",
            "resetting",
        ] {
            assert_eq!(InstanceStatus::parse(s).as_str(), s);
            assert!(!matches!(InstanceStatus::parse(s), InstanceStatus::Other(_)), "{s}");
        }
    }

    #[test]
    fn spec_example_parses() {
        let raw = r#"{"instances":[{"id":"inst-7g2xq4bm","userId":"5f35d2c4-5633-4b16-bbf0-5ca22ef8ea2e",
          "customerId":"a1b2c3d4-5633-4b16-bbf0-5ca22ef8ea2e","name":"build-runner-03","zone":"us-central1-a",
          "machineType":"n2-standard-4","externalIp":"203.0.113.42","internalIp":"10.128.0.12","status":"running",
          "templateId":"ubuntu-22-standard","createdAt":"2026-03-14T15:02:17Z"}],
          "pagination":{"page":1,"pageSize":50,"totalCount":812,"totalPages":17,"hasNext":true,"hasPrev":false}}"#;
        let page: InstancePage = serde_json::from_str(raw).expect("parses");
        assert_eq!(page.instances[0].machine_type, "n2-standard-4");
        assert!(page.pagination.has_next);
    }

    #[test]
    fn filters_combine_with_and() {
        let inst: Instance =
            serde_json::from_str(r#"{"id":"a","status":"running","zone":"z1","userId":"u1"}"#).unwrap();
        let mut f = ListFilter {
            zone: Some("z1".into()),
            ..Default::default()
        };
        assert!(f.matches(&inst));
        f.user_id = Some("u2".into());
        assert!(!f.matches(&inst));
        assert_eq!(f.query_pairs(), vec![("userID", "u2"), ("zone", "z1")]);
    }
}
