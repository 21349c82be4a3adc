//! Fuzzing with a fixed seed: random and malformed admin API responses into the wire types, random inputs
//! into the planner, and a real HTTP exchange with a body far over the client's cap. Nothing may panic, hang
//! or grow without bound; the planner keeps its at-most-once promises on any input.

use std::time::Duration;

use chrono::{DateTime, TimeZone as _, Utc};
use compute_operator::api::{
    AdminClient, ApiError, ClientConfig, CredentialSource, Credentials, Instance, InstancePage, InstanceStatus,
    PowerAction, Repeat, Secret,
};
use compute_operator::controllers::instance::plan::{
    self, Observation, Peer, PlanInput, PlanSettings, after_post, plan_suspended,
};
use compute_operator::crd::instance_action::{
    ActionRecord, ActionState, ComputeInstanceActionSpec, ComputeInstanceActionStatus, Condition, DesiredState,
    Enforcement, ObservedInstance, Phase,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SEED: u64 = 0x5EED_F022;

const INSTANCE: &str = r#"{"id":"inst-7g2xq4bm","userId":"5f35d2c4-5633-4b16-bbf0-5ca22ef8ea2e","customerId":"a1b2c3d4-5633-4b16-bbf0-5ca22ef8ea2e","name":"build-runner-03","zone":"us-central1-a","machineType":"n2-standard-4","externalIp":"203.0.113.42","internalIp":"10.128.0.12","status":"running","templateId":"ubuntu-22-standard","createdAt":"2026-03-14T15:02:17Z"}"#;

fn page_json() -> String {
    format!(
        r#"{{"instances":[{INSTANCE},{INSTANCE}],"pagination":{{"page":1,"pageSize":50,"totalCount":812,"totalPages":17,"hasNext":true,"hasPrev":false}}}}"#
    )
}

const FIELDS: [&str; 12] = [
    "id",
    "userId",
    "customerId",
    "name",
    "zone",
    "machineType",
    "externalIp",
    "internalIp",
    "status",
    "templateId",
    "createdAt",
    "pagination",
];

const WRONG_VALUES: [&str; 14] = [
    "123",
    "-1",
    "1e308",
    "18446744073709551616",
    "null",
    "true",
    "[]",
    "{}",
    "\"\"",
    "\"\\u0000\\ud800\"",
    "[1,[2,[3]]]",
    "{\"status\":{\"status\":1}}",
    "NaN",
    "\"running\\\"}",
];

fn random_string(rng: &mut StdRng, max: usize) -> String {
    let len = rng.random_range(0..=max);
    (0..len)
        .map(|_| match rng.random_range(0..6) {
            0 => rng.random_range(' '..='~'),
            1 => ['"', '\\', '/', '\n', '\u{0}', '\u{7f}'][rng.random_range(0..6)],
            2 => char::from_u32(rng.random_range(0x80..0x2_0000)).unwrap_or('?'),
            _ => rng.random_range('a'..='z'),
        })
        .collect()
}

/// A random JSON value, sometimes nested, as text.
fn random_json(rng: &mut StdRng, depth: u32) -> String {
    match rng.random_range(0..if depth > 4 { 5 } else { 8 }) {
        0 => "null".into(),
        1 => rng.random_bool(0.5).to_string(),
        2 => rng.random::<i64>().to_string(),
        3 => format!("{}", rng.random::<f64>() * 1e300),
        4 => serde_json::to_string(&random_string(rng, 20)).unwrap(),
        5 => format!(
            "[{}]",
            (0..rng.random_range(0..4))
                .map(|_| random_json(rng, depth + 1))
                .collect::<Vec<_>>()
                .join(",")
        ),
        _ => format!(
            "{{{}}}",
            (0..rng.random_range(0..5))
                .map(|_| {
                    let key = if rng.random_bool(0.6) {
                        FIELDS[rng.random_range(0..FIELDS.len())].to_owned()
                    } else {
                        random_string(rng, 8).replace(['"', '\\'], "")
                    };
                    format!("\"{key}\":{}", random_json(rng, depth + 1))
                })
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}

/// Replaces the value of `"field":` (the first occurrence) with `value`.
fn replace_value(doc: &str, field: &str, value: &str) -> String {
    let key = format!("\"{field}\":");
    let Some(start) = doc.find(&key) else {
        return doc.to_owned();
    };
    let vstart = start + key.len();
    let rest = &doc[vstart..];
    // The value ends at the next ',' or '}' outside a string (good enough for the flat documents here).
    let mut in_str = false;
    let mut escaped = false;
    let mut end = rest.len();
    for (i, c) in rest.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_str => escaped = true,
            '"' => in_str = !in_str,
            ',' | '}' | ']' if !in_str => {
                end = i;
                break;
            }
            _ => {}
        }
    }
    format!("{}{}{}", &doc[..vstart], value, &rest[end..])
}

fn mutate(rng: &mut StdRng, base: &str) -> Vec<u8> {
    match rng.random_range(0..10) {
        // Truncated anywhere (including inside a multi-byte sequence).
        0 => base.as_bytes()[..rng.random_range(0..base.len())].to_vec(),
        // Random bytes flipped.
        1 => {
            let mut b = base.as_bytes().to_vec();
            for _ in 0..rng.random_range(1..8) {
                let i = rng.random_range(0..b.len());
                b[i] = rng.random();
            }
            b
        }
        // A field of the wrong type.
        2 => {
            let field = FIELDS[rng.random_range(0..FIELDS.len())];
            let value = WRONG_VALUES[rng.random_range(0..WRONG_VALUES.len())];
            replace_value(base, field, value).into_bytes()
        }
        // Unknown or odd statuses.
        3 => {
            let status = serde_json::to_string(&random_string(rng, 40)).unwrap();
            replace_value(base, "status", &status).into_bytes()
        }
        // A field missing.
        4 => {
            let field = FIELDS[rng.random_range(0..FIELDS.len())];
            base.replacen(&format!("\"{field}\":"), "\"x-removed\":", 1)
                .into_bytes()
        }
        // Extra fields with random content, duplicate keys.
        5 => {
            let extra = random_json(rng, 0);
            let dup = if rng.random_bool(0.5) {
                r#""status":"stopped","#
            } else {
                ""
            };
            base.replacen('{', &format!("{{{dup}\"somethingNew\":{extra},"), 1)
                .into_bytes()
        }
        // Deep nesting, in an ignored field or as the whole document.
        6 => {
            let depth = rng.random_range(100..20_000);
            let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            if rng.random_bool(0.5) {
                base.replacen('{', &format!("{{\"deep\":{nested},"), 1).into_bytes()
            } else {
                nested.into_bytes()
            }
        }
        // Unclosed nesting.
        7 => "{\"a\":".repeat(rng.random_range(1..5_000)).into_bytes(),
        // Garbage around a valid document.
        8 => {
            let mut b = vec![0xEF, 0xBB, 0xBF];
            b.extend_from_slice(base.as_bytes());
            b.extend_from_slice(random_string(rng, 10).as_bytes());
            b
        }
        // Entirely random JSON.
        _ => random_json(rng, 0).into_bytes(),
    }
}

fn check_parsed(bytes: &[u8]) {
    if let Ok(i) = serde_json::from_slice::<Instance>(bytes) {
        // Whatever status came in is kept verbatim and survives a round trip.
        assert_eq!(InstanceStatus::parse(i.status.as_str()), i.status);
        let again: Instance = serde_json::from_slice(&serde_json::to_vec(&i).unwrap()).unwrap();
        assert_eq!(again, i);
    }
    if let Ok(p) = serde_json::from_slice::<InstancePage>(bytes) {
        let again: InstancePage = serde_json::from_slice(&serde_json::to_vec(&p).unwrap()).unwrap();
        assert_eq!(again, p);
    }
}

#[test]
fn malformed_admin_api_responses_never_panic() {
    let mut rng = StdRng::seed_from_u64(SEED);
    let page = page_json();
    for round in 0..4_000 {
        let base = if rng.random_bool(0.5) { INSTANCE } else { page.as_str() };
        let bytes = mutate(&mut rng, base);
        check_parsed(&bytes);
        // Now and then, mutations of a mutation.
        if round % 7 == 0
            && let Ok(text) = String::from_utf8(bytes)
            && !text.is_empty()
        {
            check_parsed(&mutate(&mut rng, &text));
        }
    }
    // Huge strings parse (the client caps bodies at 4 MiB before this point) and keep their length.
    for len in [1 << 20, 3 << 20] {
        let huge = "x".repeat(len);
        let doc = replace_value(INSTANCE, "name", &format!("\"{huge}\""));
        let i: Instance = serde_json::from_str(&doc).expect("a long name is still an instance");
        assert_eq!(i.name.len(), len);
        let doc = replace_value(INSTANCE, "status", &format!("\"{huge}\""));
        let i: Instance = serde_json::from_str(&doc).expect("a long unknown status is kept");
        assert!(matches!(&i.status, InstanceStatus::Other(s) if s.len() == len));
        assert!(
            i.status.is_transitional(),
            "an unknown status is never taken as settled"
        );
    }
    // Very deep nesting is refused or skipped, never a stack overflow.
    let deep = format!("{}{}", "[".repeat(1_000_000), "]".repeat(1_000_000));
    assert!(serde_json::from_str::<InstancePage>(&deep).is_err());
    let deep_field = INSTANCE.replacen('{', &format!("{{\"deep\":{deep},"), 1);
    // In a field nobody reads it is skipped without recursion; either way the instance is not harmed.
    if let Ok(i) = serde_json::from_str::<Instance>(&deep_field) {
        assert_eq!(i.id, "inst-7g2xq4bm");
    }
}

// ----------------------------------------------------------------------------------------------------------
// The planner
// ----------------------------------------------------------------------------------------------------------

const STATES: [ActionState; 6] = [
    ActionState::Requested,
    ActionState::Rejected,
    ActionState::Accepted,
    ActionState::Succeeded,
    ActionState::Failed,
    ActionState::OutcomeUnknown,
];

fn pick<T: Clone>(rng: &mut StdRng, items: &[T]) -> T {
    items[rng.random_range(0..items.len())].clone()
}

/// One of `items`, or now and then a random string.
fn pick_str(rng: &mut StdRng, items: &[&str], random_len: usize) -> String {
    if rng.random_range(0..=items.len()) == items.len() {
        random_string(rng, random_len)
    } else {
        pick(rng, items).to_owned()
    }
}

fn desired(rng: &mut StdRng) -> DesiredState {
    pick(
        rng,
        &[
            DesiredState::Running,
            DesiredState::Stopped,
            DesiredState::Restarted,
            DesiredState::Reset,
        ],
    )
}

fn status_value(rng: &mut StdRng) -> InstanceStatus {
    match rng.random_range(0..11) {
        0 => InstanceStatus::Provisioning,
        1 | 2 => InstanceStatus::Running,
        3 | 4 => InstanceStatus::Stopped,
        5 => InstanceStatus::Error,
        6 => InstanceStatus::Deleting,
        7 => InstanceStatus::Stopping,
        8 => InstanceStatus::Starting,
        9 => pick(rng, &[InstanceStatus::Restarting, InstanceStatus::Resetting]),
        _ => InstanceStatus::Other(random_string(rng, 12)),
    }
}

/// A time anywhere an API server could store (years 0..9999), mostly near `now`.
fn time_near(rng: &mut StdRng, now: DateTime<Utc>) -> DateTime<Utc> {
    match rng.random_range(0..8) {
        0 => Utc.with_ymd_and_hms(0, 1, 1, 0, 0, 0).unwrap(),
        1 => Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap(),
        2 => Utc
            .timestamp_opt(rng.random_range(-62_000_000_000..253_000_000_000), 0)
            .single()
            .unwrap_or(now),
        _ => now + chrono::Duration::milliseconds(rng.random_range(-7_200_000..600_000)),
    }
}

fn request_id(rng: &mut StdRng) -> Option<String> {
    match rng.random_range(0..6) {
        0 => None,
        1 => Some(random_string(rng, 80)),
        n => Some(format!("r{n}")),
    }
}

fn record(rng: &mut StdRng, now: DateTime<Utc>) -> ActionRecord {
    ActionRecord {
        action: pick(rng, &PowerAction::ALL),
        request_id: request_id(rng),
        generation: pick(rng, &[0, 1, 2, 3, -1, i64::MAX, i64::MIN]),
        state: pick(rng, &STATES),
        intent_at: time_near(rng, now),
        accepted_at: rng.random_bool(0.5).then(|| time_near(rng, now)),
        completed_at: rng.random_bool(0.3).then(|| time_near(rng, now)),
        attempts: pick(rng, &[0, 1, 2, 7, 1000]),
        from_status: rng.random_bool(0.7).then(|| status_value(rng).as_str().to_owned()),
        saw_transition: rng.random_bool(0.5),
        reason: rng.random_bool(0.5).then(|| random_string(rng, 20)),
        drift: rng.random_bool(0.2),
    }
}

fn status(rng: &mut StdRng, now: DateTime<Utc>) -> ComputeInstanceActionStatus {
    let conditions = (0..rng.random_range(0..5))
        .map(|_| Condition {
            type_: pick_str(rng, &["Ready", "Reconciling", "Stalled"], 8),
            status: pick(
                rng,
                &["True".to_owned(), "False".into(), "Unknown".into(), String::new()],
            ),
            observed_generation: rng.random_bool(0.5).then(|| rng.random_range(-2..5)),
            last_transition_time: time_near(rng, now),
            reason: pick_str(rng, &["OutcomeUnknown", "PolicyDenied", "Succeeded"], 10),
            message: random_string(rng, 30),
        })
        .collect();
    ComputeInstanceActionStatus {
        observed_generation: rng.random_bool(0.7).then(|| pick(rng, &[0, 1, 2, 3, i64::MAX, -5])),
        phase: pick(
            rng,
            &[
                None,
                Some(Phase::Pending),
                Some(Phase::InProgress),
                Some(Phase::Succeeded),
                Some(Phase::Failed),
                Some(Phase::Skipped),
                Some(Phase::Suspended),
            ],
        ),
        message: rng.random_bool(0.5).then(|| random_string(rng, 40)),
        conditions,
        instance: rng.random_bool(0.6).then(|| ObservedInstance {
            status: status_value(rng).as_str().to_owned(),
            name: random_string(rng, 10),
            zone: random_string(rng, 5),
            last_seen: rng.random_bool(0.5).then(|| time_near(rng, now)),
        }),
        action: rng.random_bool(0.8).then(|| record(rng, now)),
        history: (0..pick(rng, &[0, 0, 1, 3, 16, 20]))
            .map(|_| record(rng, now))
            .collect(),
        sent_one_shots: (0..pick(rng, &[0, 0, 1, 5])).map(|_| random_string(rng, 16)).collect(),
        held_by: None,
        held_until: rng.random_bool(0.1).then(|| time_near(rng, now)),
    }
}

fn api_error(rng: &mut StdRng) -> ApiError {
    let retry_after = rng
        .random_bool(0.5)
        .then(|| Duration::from_secs(pick(rng, &[0, 1, 30, 86_400, u64::from(u32::MAX)])));
    let sent = rng.random_bool(0.5);
    match rng.random_range(0..12) {
        0 => ApiError::BadRequest(random_string(rng, 30)),
        1 => ApiError::Unauthorized,
        2 => ApiError::Forbidden,
        3 => ApiError::NotFound,
        4 => ApiError::Conflict,
        5 => ApiError::RateLimited { retry_after },
        6 => ApiError::Server {
            status: pick(rng, &[500, 502, 503, 504, 599]),
            retry_after,
        },
        7 => ApiError::Timeout { sent },
        8 => ApiError::Transport {
            message: random_string(rng, 30),
            sent,
        },
        9 => ApiError::Malformed(random_string(rng, 30)),
        10 => ApiError::InvalidInstanceId(random_string(rng, 30)),
        _ => ApiError::Credentials(random_string(rng, 30)),
    }
}

fn settings(rng: &mut StdRng) -> PlanSettings {
    PlanSettings {
        resync: Duration::from_millis(rng.random_range(5_000..3_600_000)),
        settle: Duration::from_millis(rng.random_range(0..60_000)),
        poll_min: Duration::from_millis(rng.random_range(1..2_000)),
        poll_max: Duration::from_millis(rng.random_range(1..60_000)),
        slow_retry: Duration::from_millis(rng.random_range(1..600_000)),
        dry_run: rng.random_bool(0.1),
        max_one_shots: rng.random_range(1..10),
        one_shot_window: Duration::from_secs(rng.random_range(0..100 * 365 * 86_400)),
    }
}

/// Terminal one-shot records that already answer `rid`.
/// Was this (action, requestId) already answered? The key is both: a reset reusing a restart's requestId is new.
fn answered(status: &ComputeInstanceActionStatus, action: PowerAction, rid: &Option<String>) -> bool {
    status
        .action
        .iter()
        .chain(status.history.iter())
        .any(|a| a.action == action && &a.request_id == rid && a.state.is_terminal())
}

#[test]
fn planner_never_panics_and_never_resends_a_one_shot() {
    let mut rng = StdRng::seed_from_u64(SEED ^ 0x91A4);
    let real_now = Utc::now();
    let mut posts = 0;
    for _ in 0..6_000 {
        let now = if rng.random_bool(0.95) {
            real_now + chrono::Duration::seconds(rng.random_range(-3_600..3_600))
        } else {
            time_near(&mut rng, real_now)
        };
        let spec = ComputeInstanceActionSpec {
            instance_id: pick_str(&mut rng, &["i-1", "inst-7g2xq4bm"], 140),
            desired_state: desired(&mut rng),
            request_id: request_id(&mut rng),
            timeout_seconds: pick(&mut rng, &[0, 1, 10, 60, 600, 86_400, u32::MAX]),
            enforcement: pick(&mut rng, &[Enforcement::Continuous, Enforcement::Once]),
            dry_run: rng.random_bool(0.1),
            suspend: rng.random_bool(0.05),
            not_after: None,
            escalation: rng
                .random_bool(0.2)
                .then(|| compute_operator::crd::instance_action::Escalation {
                    after: pick_str(&mut rng, &["1s", "30s", "5m"], 4),
                    to: compute_operator::crd::instance_action::EscalationTarget::Reset,
                }),
        };
        let generation = pick(&mut rng, &[0, 1, 2, 3, i64::MAX, -1]);
        let st = status(&mut rng, now);
        let observation = if rng.random_bool(0.8) {
            let mut i: Instance = serde_json::from_str(INSTANCE).unwrap();
            i.id = spec.instance_id.clone();
            i.status = status_value(&mut rng);
            if rng.random_bool(0.1) {
                i.name = random_string(&mut rng, 200);
            }
            Observation::Instance(i)
        } else {
            Observation::Failed(api_error(&mut rng))
        };
        let peers: Vec<Peer> = (0..pick(&mut rng, &[0, 0, 1, 2, 3]))
            .map(|n| Peer {
                key: format!("ns/peer-{n}"),
                desired: desired(&mut rng),
                enforcement: pick(&mut rng, &[Enforcement::Continuous, Enforcement::Once]),
                suspended: rng.random_bool(0.2),
                acting: rng.random_bool(0.3),
            })
            .collect();
        let s = settings(&mut rng);
        let denial = rng.random_bool(0.1).then(|| random_string(&mut rng, 30));
        // Change control holds some action back now and then (until some time, or until woken).
        let mut held = Vec::new();
        for a in PowerAction::ALL {
            if rng.random_bool(0.1) {
                let until = rng.random_bool(0.7).then(|| time_near(&mut rng, now));
                let hold = plan::Hold {
                    by: random_string(&mut rng, 8),
                    reason: pick(&mut rng, &["WaitingForWindow", "WaitingForBudget"]),
                    message: random_string(&mut rng, 20),
                    until,
                };
                held.push((a, hold));
            }
        }
        let holds = plan::Holds(held);
        let input = PlanInput {
            spec: &spec,
            generation,
            status: &st,
            observation: &observation,
            peers: &peers,
            now,
            settings: &s,
            policy_denial: denial.as_deref(),
            recent_one_shots: rng.random_range(0..12),
            holds: &holds,
        };
        let p = plan::plan(&input);
        let _ = plan_suspended(&st, generation, now);
        let _ = plan::count_recent_one_shots([&st, &p.status], now, s.one_shot_window);

        let Some(action) = p.post else { continue };
        posts += 1;
        // A POST always follows a persisted intent for exactly that action.
        let rec = p.status.action.as_ref().expect("a POST has an intent record");
        assert_eq!(rec.action, action);
        assert_eq!(rec.state, ActionState::Requested);
        assert!(denial.is_none(), "a denied object never acts");
        assert!(
            matches!(observation, Observation::Instance(_)),
            "no POST without a fresh read"
        );
        assert!(!spec.dry_run && !s.dry_run, "dry run never acts");
        assert!(
            holds.of(action).is_none(),
            "an action change control holds back is never sent"
        );
        if action.is_one_shot() {
            let escalated = spec.escalation.is_some() && action == PowerAction::Reset;
            assert!(action == spec.desired_state.action() || escalated);
            assert_eq!(rec.request_id, spec.request_id);
            assert!(
                !answered(&st, action, &spec.request_id),
                "one-shot resent for an answered requestId: {st:#?}"
            );
            // An intent without outcome is never resent (the same action and requestId); once evidence showed it
            // ran and completed, a different request the spec now asks for may start.
            let open_unknown = st.action.as_ref().is_some_and(|a| {
                a.state == ActionState::Requested && a.action == action && a.request_id == spec.request_id
            });
            assert!(!open_unknown, "an intent without outcome must not be resent: {st:#?}");
        }

        // Whatever the POST's answer, the record afterwards never invites a resend of a one-shot that may
        // have run.
        let result = if rng.random_bool(0.4) {
            Ok(())
        } else {
            Err(api_error(&mut rng))
        };
        let later = now + chrono::Duration::milliseconds(rng.random_range(0..20_000));
        let next = after_post(&p.status, &spec, generation, &result, later, &s);
        assert!(next.post.is_none());
        let after = next.status.action.as_ref().expect("record kept").state;
        match &result {
            Ok(()) => assert_eq!(after, ActionState::Accepted),
            // An unclear answer keeps the intent open to be confirmed by evidence (never a refusal to resend).
            Err(e) if action.is_one_shot() && e.may_have_reached_server() => {
                assert_eq!(after, ActionState::Requested, "{e:?}")
            }
            Err(_) => {}
        }
        // And no second POST for the same requestId from the state it leaves behind.
        if action.is_one_shot() {
            let input2 = PlanInput {
                status: &next.status,
                now: later,
                ..input.clone()
            };
            let again = plan::plan(&input2);
            assert!(
                again.post.is_none() || !result.as_ref().is_err_and(ApiError::may_have_reached_server),
                "resent after an unknown outcome"
            );
        }
    }
    assert!(posts > 300, "the generator reaches the POST paths ({posts})");
}

#[test]
fn poll_delay_is_bounded_for_any_elapsed_time() {
    let mut rng = StdRng::seed_from_u64(SEED ^ 0x7011);
    for _ in 0..2_000 {
        let s = settings(&mut rng);
        let elapsed = Duration::from_millis(rng.random_range(0..u64::from(u32::MAX)));
        let d = plan::poll_delay(&s, elapsed);
        assert!(
            d >= s.poll_min.min(s.poll_max) && d <= s.poll_max.max(s.poll_min),
            "{d:?} {s:?}"
        );
    }
}

// ----------------------------------------------------------------------------------------------------------
// End to end: bodies over the cap
// ----------------------------------------------------------------------------------------------------------

mod huge {
    use std::net::SocketAddr;

    use axum::Router;
    use axum::body::{Body, Bytes};
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use axum::routing::{get, post};

    use super::*;

    const MIB: usize = 1 << 20;

    /// An instance whose `name` alone is 5 MiB, sent with a Content-Length.
    async fn huge_instance() -> impl IntoResponse {
        let doc = replace_value(INSTANCE, "name", &format!("\"{}\"", "x".repeat(5 * MIB)));
        ([("content-type", "application/json")], doc)
    }

    /// A page that never ends (chunked, no Content-Length): only a cap stops it.
    async fn endless_page() -> impl IntoResponse {
        let head = futures::stream::once(async { Ok::<_, std::io::Error>(Bytes::from_static(b"{\"instances\":[")) });
        let chunk = Bytes::from(format!("{INSTANCE},").repeat(64));
        let tail = futures::stream::repeat_with(move || Ok(chunk.clone()));
        use futures::StreamExt as _;
        (
            [("content-type", "application/json")],
            Body::from_stream(head.chain(tail)),
        )
    }

    /// 1 MiB of '[': under the cap, but nesting no parser should follow.
    async fn deep() -> impl IntoResponse {
        ([("content-type", "application/json")], "[".repeat(MIB))
    }

    /// An action accepted with 202, followed by a body over the cap.
    async fn accepted_with_huge_body() -> impl IntoResponse {
        (StatusCode::ACCEPTED, "x".repeat(5 * MIB))
    }

    /// A gateway's answers outside the spec: a 503 with a body over the cap, a redirect, a 422.
    async fn gateway_answer(axum::extract::Path(id): axum::extract::Path<String>) -> axum::response::Response {
        match id.as_str() {
            "gateway-503" => (StatusCode::SERVICE_UNAVAILABLE, "x".repeat(5 * MIB)).into_response(),
            "gateway-302" => (StatusCode::FOUND, [("location", "http://127.0.0.1:1/elsewhere")]).into_response(),
            _ => (StatusCode::UNPROCESSABLE_ENTITY, "no").into_response(),
        }
    }

    async fn serve() -> SocketAddr {
        let app = Router::new()
            .route("/api/compute/v1/admin/instances/{id}/reset", post(gateway_answer))
            .route("/api/compute/v1/admin/instances/huge", get(huge_instance))
            .route("/api/compute/v1/admin/instances/deep", get(deep))
            .route("/api/compute/v1/admin/instances", get(endless_page))
            .route(
                "/api/compute/v1/admin/instances/huge/restart",
                post(accepted_with_huge_body),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        addr
    }

    fn client(addr: SocketAddr) -> AdminClient {
        compute_operator::api::client::install_crypto_provider();
        AdminClient::new(
            ClientConfig {
                base_url: format!("http://{addr}/api/compute/v1"),
                timeout: Duration::from_secs(20),
                max_attempts: 1,
                ..ClientConfig::default()
            },
            CredentialSource::Static(Credentials::Bearer(Secret::new("t"))),
        )
        .unwrap()
    }

    fn peak_rss_mib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    l.strip_prefix("VmHWM:")
                        .map(|v| v.trim().trim_end_matches(" kB").to_owned())
                })
            })
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |k| k / 1024)
    }

    #[tokio::test]
    async fn bodies_over_the_cap_are_malformed_not_oom() {
        let addr = serve().await;
        let api = client(addr);
        let limit = Duration::from_secs(30);

        let got = tokio::time::timeout(limit, api.get_instance("huge"))
            .await
            .expect("no hang");
        assert!(
            matches!(&got, Err(ApiError::Malformed(m)) if m.contains("larger than")),
            "{got:?}"
        );

        let got = tokio::time::timeout(limit, api.list_page(&Default::default(), 1, 100))
            .await
            .expect("an endless body is cut off, not read forever");
        assert!(
            matches!(&got, Err(ApiError::Malformed(m)) if m.contains("larger than")),
            "{got:?}"
        );

        let got = tokio::time::timeout(limit, api.get_instance("deep"))
            .await
            .expect("no hang");
        assert!(matches!(&got, Err(ApiError::Malformed(_))), "{got:?}");

        // Reading stopped at the cap: memory stays far below what the endless body would take.
        assert!(peak_rss_mib() < 512, "peak RSS {} MiB", peak_rss_mib());
    }

    /// Only a client error proves a one-shot was refused: a 5xx whose body is over the cap, and a redirect, may
    /// have been carried out behind the gateway (once both became `Malformed`, "not reached", and a restart or
    /// reset would have been sent again); an unlisted 4xx is a refusal.
    #[tokio::test]
    async fn answers_outside_the_spec_are_refusals_only_when_they_are_client_errors() {
        let addr = serve().await;
        let api = client(addr);
        for (id, may_have_run) in [("gateway-503", true), ("gateway-302", true), ("gateway-422", false)] {
            let got = api.act(id, PowerAction::Reset, Repeat::Never).await;
            let err = got.expect_err("not accepted");
            assert_eq!(err.may_have_reached_server(), may_have_run, "{id}: {err:?}");
        }
    }

    /// A 202 is an accepted action whatever follows it: an oversized body after a 202 once became
    /// `Malformed`, which counts as "not reached", so a restart/reset would have been recorded as Rejected
    /// and sent again. The client now treats any 2xx to an action as accepted without reading the body.
    #[tokio::test]
    async fn an_accepted_action_with_an_oversized_body_is_never_reported_as_not_sent() {
        let addr = serve().await;
        let api = client(addr);
        let got = api.act("huge", PowerAction::Restart, Repeat::Never).await;
        assert!(
            got.as_ref().is_ok() || got.as_ref().is_err_and(ApiError::may_have_reached_server),
            "{got:?}"
        );
    }
}
