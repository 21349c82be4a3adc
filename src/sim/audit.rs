//! What the simulator saw: the audit log of accepted actions (including those whose connection was then
//! dropped) and request/response counters of the admin API. Served by `/_sim/audit` and `/_sim/stats`.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize, Serializer};

use crate::api::types::PowerAction;

/// One accepted action.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    pub instance_id: String,
    pub action: PowerAction,
    /// When it was accepted; RFC 3339 with milliseconds on the wire.
    #[serde(serialize_with = "rfc3339_millis")]
    pub at: DateTime<Utc>,
}

fn rfc3339_millis<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&at.to_rfc3339_opts(SecondsFormat::Millis, true))
}

/// Which admin endpoint a request was for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    List,
    Get,
    Action(PowerAction),
    /// Under the admin base path but no known endpoint (answered 404/405 after auth).
    Other,
}

/// Requests per admin endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RequestCounts {
    pub list: u64,
    pub get: u64,
    pub stop: u64,
    pub start: u64,
    pub restart: u64,
    pub reset: u64,
}

/// Counters of admin API traffic (never `/_sim`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SimStats {
    /// Every admin API request received.
    pub total: u64,
    pub requests: RequestCounts,
    /// Responses sent, by status code (`"200": n` on the wire).
    pub responses: BTreeMap<u16, u64>,
    /// Accepted actions whose connection was closed without a response.
    pub dropped: u64,
}

impl SimStats {
    /// Responses with this status so far.
    pub fn responses_with(&self, status: u16) -> u64 {
        self.responses.get(&status).copied().unwrap_or(0)
    }
}

/// The audit log and counters, behind one lock in the server.
#[derive(Debug, Default)]
pub struct Recorder {
    entries: Vec<AuditEntry>,
    stats: SimStats,
}

impl Recorder {
    pub fn request(&mut self, kind: RequestKind) {
        self.stats.total += 1;
        let r = &mut self.stats.requests;
        let counter = match kind {
            RequestKind::List => &mut r.list,
            RequestKind::Get => &mut r.get,
            RequestKind::Action(PowerAction::Stop) => &mut r.stop,
            RequestKind::Action(PowerAction::Start) => &mut r.start,
            RequestKind::Action(PowerAction::Restart) => &mut r.restart,
            RequestKind::Action(PowerAction::Reset) => &mut r.reset,
            RequestKind::Other => return,
        };
        *counter += 1;
    }

    pub fn response(&mut self, status: u16) {
        *self.stats.responses.entry(status).or_insert(0) += 1;
    }

    pub fn dropped(&mut self) {
        self.stats.dropped += 1;
    }

    pub fn accepted(&mut self, instance_id: &str, action: PowerAction, at: DateTime<Utc>) {
        self.entries.push(AuditEntry {
            instance_id: instance_id.to_owned(),
            action,
            at,
        });
    }

    pub fn entries(&self) -> &[AuditEntry] {
        &self.entries
    }

    pub fn stats(&self) -> &SimStats {
        &self.stats
    }

    /// Forget the audit log and zero the counters.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.stats = SimStats::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_shapes() {
        let mut r = Recorder::default();
        for kind in [
            RequestKind::List,
            RequestKind::Get,
            RequestKind::Action(PowerAction::Reset),
            RequestKind::Other,
        ] {
            r.request(kind);
        }
        r.response(200);
        r.response(200);
        r.response(409);
        let at = DateTime::parse_from_rfc3339("2026-03-14T15:02:17.5Z")
            .unwrap()
            .with_timezone(&Utc);
        r.accepted("inst-1", PowerAction::Stop, at);
        let stats = serde_json::to_value(r.stats()).unwrap();
        assert_eq!(
            stats,
            serde_json::json!({"total": 4, "dropped": 0,
                "requests": {"list": 1, "get": 1, "stop": 0, "start": 0, "restart": 0, "reset": 1},
                "responses": {"200": 2, "409": 1}})
        );
        let back: SimStats = serde_json::from_value(stats).unwrap();
        assert_eq!(&back, r.stats());
        assert_eq!(back.responses_with(200), 2);
        let audit = serde_json::to_value(r.entries()).unwrap();
        assert_eq!(
            audit,
            serde_json::json!([{"instanceId": "inst-1", "action": "stop", "at": "2026-03-14T15:02:17.500Z"}])
        );
        let back: Vec<AuditEntry> = serde_json::from_value(audit).unwrap();
        assert_eq!(back, r.entries());
        r.clear();
        assert!(r.entries().is_empty());
        assert_eq!(r.stats(), &SimStats::default());
    }
}
