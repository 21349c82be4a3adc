//! Table tests of the simulated fleet: transitions, queued actions, pagination, list queries, generation.

use super::*;
use InstanceStatus as S;
use PowerAction as A;

fn inst(id: &str, status: S) -> Instance {
    Instance {
        id: id.into(),
        user_id: String::new(),
        customer_id: String::new(),
        name: String::new(),
        zone: String::new(),
        machine_type: String::new(),
        external_ip: String::new(),
        internal_ip: String::new(),
        status,
        template_id: String::new(),
        created_at: String::new(),
    }
}

const OPTS: TransitionOpts = TransitionOpts {
    duration: Duration::from_millis(100),
    invisible: false,
    never_finish: false,
    queue: Duration::ZERO,
    fails: false,
};

#[test]
fn transition_table() {
    let all = [
        S::Provisioning,
        S::Running,
        S::Stopped,
        S::Error,
        S::Deleting,
        S::Stopping,
        S::Starting,
        S::Restarting,
        S::Resetting,
        S::Other("x".into()),
    ];
    let allowed: &[(A, S, S, S)] = &[
        (A::Stop, S::Running, S::Stopping, S::Stopped),
        (A::Stop, S::Error, S::Stopping, S::Stopped),
        (A::Start, S::Stopped, S::Starting, S::Running),
        (A::Start, S::Error, S::Starting, S::Running),
        (A::Restart, S::Running, S::Restarting, S::Running),
        (A::Reset, S::Running, S::Resetting, S::Running),
        (A::Reset, S::Error, S::Resetting, S::Running),
    ];
    for action in A::ALL {
        for from in &all {
            let want = allowed
                .iter()
                .find(|(a, f, _, _)| *a == action && f == from)
                .map(|(_, _, shown, to)| (shown.clone(), to.clone()));
            assert_eq!(transition(from, action), want, "{action} from {from}");
        }
    }
}

#[test]
fn pagination_table() {
    // (total, page, size) -> (totalPages, hasNext, hasPrev)
    let cases: &[(u64, u32, u32, u64, bool, bool)] = &[
        (0, 1, 20, 0, false, false),
        (0, 2, 20, 0, false, true),
        (1, 1, 20, 1, false, false),
        (20, 1, 20, 1, false, false),
        (21, 1, 20, 2, true, false),
        (21, 2, 20, 2, false, true),
        (21, 3, 20, 2, false, true),
        (812, 1, 50, 17, true, false),
        (812, 17, 50, 17, false, true),
        (100, 1, 100, 1, false, false),
        (5, 4, 1, 5, true, true),
    ];
    for &(total, page, size, pages, next, prev) in cases {
        let p = pagination(total, page, size);
        assert_eq!(
            (
                p.total_count,
                p.page,
                p.page_size,
                p.total_pages,
                p.has_next,
                p.has_prev
            ),
            (total, page, size, pages, next, prev),
            "total={total} page={page} size={size}"
        );
    }
}

#[test]
fn list_query_table() {
    let ok: &[(&str, u32, u32)] = &[
        ("", 1, 20),
        ("page=2", 2, 20),
        ("pageSize=100", 1, 100),
        ("pageSize=1&page=7", 7, 1),
        ("page=&pageSize=", 1, 20),
        ("page=3&page=abc", 3, 20),
        ("foo=bar&page=2", 2, 20),
        ("page=4294967295", u32::MAX, 20),
    ];
    for &(raw, page, size) in ok {
        let q = ListQuery::parse(Some(raw)).unwrap_or_else(|e| panic!("{raw}: {e}"));
        assert_eq!((q.page, q.page_size), (page, size), "{raw}");
    }
    let bad = [
        "page=0",
        "page=-1",
        "page=abc",
        "page=1.5",
        "page=4294967296",
        "pageSize=0",
        "pageSize=101",
        "pageSize=-5",
        "pageSize=ten",
        "status=stopping",
        "status=Running",
        "status=bogus",
        "page=%ff",
    ];
    for raw in bad {
        assert!(ListQuery::parse(Some(raw)).is_err(), "{raw} should be rejected");
    }
    let q = ListQuery::parse(Some("userID=u%201&customerID=c+2&status=running&zone=z&templateID=t")).unwrap();
    assert_eq!(
        q.filter,
        ListFilter {
            user_id: Some("u 1".into()),
            customer_id: Some("c 2".into()),
            status: Some("running".into()),
            zone: Some("z".into()),
            template_id: Some("t".into()),
        }
    );
    assert_eq!(ListQuery::parse(None).unwrap(), ListQuery::default());
}

#[test]
fn queued_actions_show_nothing_until_the_queue_time_ends() {
    let t0 = Instant::now();
    let ms = |n| t0 + Duration::from_millis(n);
    let queued = TransitionOpts {
        queue: Duration::from_millis(500),
        ..OPTS
    };
    let mut f = Fleet::new(vec![inst("a", S::Error), inst("b", S::Running)]).unwrap();
    f.apply("a", A::Start, t0, queued).unwrap();
    f.apply("b", A::Restart, t0, queued).unwrap();
    // (at, status of a, status of b): error/running while queued, then the transition, then settled.
    let table = [
        (ms(1), S::Error, S::Running),
        (ms(499), S::Error, S::Running),
        (ms(500), S::Starting, S::Restarting),
        (ms(599), S::Starting, S::Restarting),
        (ms(600), S::Running, S::Running),
    ];
    for (at, a, b) in table {
        assert_eq!(f.get("a", at).unwrap().status, a);
        assert_eq!(f.get("b", at).unwrap().status, b);
    }
    // Busy while queued: a second action is refused.
    let mut f = Fleet::new(vec![inst("a", S::Running)]).unwrap();
    f.apply("a", A::Stop, t0, queued).unwrap();
    assert_eq!(
        f.apply("a", A::Stop, ms(10), OPTS),
        Err(ActionError::Busy { action: A::Stop })
    );
    // Queued and never finishing: shows the transition after the queue time, then stays.
    let stuck = TransitionOpts {
        never_finish: true,
        ..queued
    };
    f.set_status("a", S::Running);
    f.apply("a", A::Stop, t0, stuck).unwrap();
    assert_eq!(f.get("a", ms(499)).unwrap().status, S::Running);
    assert_eq!(f.get("a", ms(10_000)).unwrap().status, S::Stopping);
    f.release_stuck(ms(10_000), Duration::from_millis(100));
    assert_eq!(f.get("a", ms(10_100)).unwrap().status, S::Stopped);
}

#[test]
fn timeline_of_an_action() {
    let t0 = Instant::now();
    let ms = |n| t0 + Duration::from_millis(n);
    let mut f = Fleet::new(vec![inst("a", S::Running)]).unwrap();
    assert_eq!(f.apply("a", A::Stop, t0, OPTS), Ok(()));
    // (at, action, expected result, expected status after)
    type Step = (Instant, Option<A>, Result<(), ActionError>, S);
    let steps: &[Step] = &[
        (ms(1), None, Ok(()), S::Stopping),
        (
            ms(50),
            Some(A::Start),
            Err(ActionError::Busy { action: A::Stop }),
            S::Stopping,
        ),
        (
            ms(99),
            Some(A::Stop),
            Err(ActionError::Busy { action: A::Stop }),
            S::Stopping,
        ),
        (ms(100), None, Ok(()), S::Stopped),
        (
            ms(101),
            Some(A::Stop),
            Err(ActionError::NotAllowed { status: S::Stopped }),
            S::Stopped,
        ),
        (
            ms(102),
            Some(A::Restart),
            Err(ActionError::NotAllowed { status: S::Stopped }),
            S::Stopped,
        ),
        (ms(103), Some(A::Start), Ok(()), S::Starting),
        (ms(250), None, Ok(()), S::Running),
        (ms(251), Some(A::Restart), Ok(()), S::Restarting),
        (ms(400), Some(A::Reset), Ok(()), S::Resetting),
        (ms(600), None, Ok(()), S::Running),
    ];
    for (i, (at, action, want, status)) in steps.iter().enumerate() {
        if let Some(a) = action {
            assert_eq!(&f.apply("a", *a, *at, OPTS), want, "step {i}");
        }
        assert_eq!(&f.get("a", *at).unwrap().status, status, "step {i}");
    }
    assert_eq!(f.apply("nope", A::Stop, ms(700), OPTS), Err(ActionError::NotFound));
}

#[test]
fn invisible_transitions_report_the_old_status_but_stay_busy() {
    let t0 = Instant::now();
    let opts = TransitionOpts {
        invisible: true,
        ..OPTS
    };
    let mut f = Fleet::new(vec![inst("a", S::Running), inst("b", S::Error), inst("c", S::Running)]).unwrap();
    f.apply("a", A::Restart, t0, opts).unwrap();
    f.apply("b", A::Reset, t0, opts).unwrap();
    f.apply("c", A::Stop, t0, opts).unwrap();
    let t1 = t0 + Duration::from_millis(10);
    assert_eq!(f.get("a", t1).unwrap().status, S::Running);
    assert_eq!(f.get("b", t1).unwrap().status, S::Error);
    assert_eq!(f.get("c", t1).unwrap().status, S::Stopping, "stop/start stay visible");
    assert_eq!(
        f.apply("a", A::Restart, t1, opts),
        Err(ActionError::Busy { action: A::Restart })
    );
    assert_eq!(f.busy_with("a", t1), Some(A::Restart));
    let t2 = t0 + Duration::from_millis(100);
    assert_eq!(f.get("b", t2).unwrap().status, S::Running);
    assert_eq!(f.busy_with("a", t2), None);
    assert_eq!(f.apply("a", A::Restart, t2, opts), Ok(()));
}

#[test]
fn never_finish_release_and_cancel() {
    let t0 = Instant::now();
    let stuck = TransitionOpts {
        never_finish: true,
        ..OPTS
    };
    let mut f = Fleet::new(vec![
        inst("a", S::Running),
        inst("b", S::Running),
        inst("c", S::Stopped),
    ])
    .unwrap();
    f.apply("a", A::Stop, t0, stuck).unwrap();
    f.apply("b", A::Restart, t0, stuck).unwrap();
    f.apply("c", A::Start, t0, OPTS).unwrap();
    let late = t0 + Duration::from_secs(3600);
    assert_eq!(f.get("a", late).unwrap().status, S::Stopping);
    assert_eq!(f.get("c", late).unwrap().status, S::Running);
    assert!(f.set_status("b", S::Error), "cancel b");
    assert!(!f.set_status("zzz", S::Error));
    f.release_stuck(late, Duration::from_millis(10));
    assert_eq!(f.get("a", late).unwrap().status, S::Stopping);
    let later = late + Duration::from_millis(10);
    assert_eq!(f.get("a", later).unwrap().status, S::Stopped);
    assert_eq!(
        f.get("b", later).unwrap().status,
        S::Error,
        "cancelled transition does not come back"
    );
    assert_eq!(f.busy_with("b", later), None);
    // A huge duration never overflows: it is simply stuck.
    let huge = TransitionOpts {
        duration: Duration::MAX,
        ..OPTS
    };
    f.apply("a", A::Start, later, huge).unwrap();
    assert_eq!(f.get("a", later).unwrap().status, S::Starting);
}

#[test]
fn upsert_replaces_and_cancels() {
    let t0 = Instant::now();
    let mut f = Fleet::new(vec![inst("a", S::Running)]).unwrap();
    f.apply("a", A::Stop, t0, OPTS).unwrap();
    assert!(!f.upsert(inst("a", S::Running)));
    assert!(f.upsert(inst("b", S::Stopped)));
    let t1 = t0 + Duration::from_secs(1);
    assert_eq!(f.get("a", t1).unwrap().status, S::Running);
    assert_eq!(f.len(), 2);
    assert_eq!(f.apply("a", A::Stop, t1, OPTS), Ok(()));
}

#[test]
fn list_filters_and_pages() {
    let t0 = Instant::now();
    let mut insts = Vec::new();
    for i in 0..30 {
        let mut x = inst(&format!("i{i:02}"), if i % 3 == 0 { S::Stopped } else { S::Running });
        x.zone = if i % 2 == 0 { "z1".into() } else { "z2".into() };
        insts.push(x);
    }
    let mut f = Fleet::new(insts).unwrap();
    let q = |raw: &str| ListQuery::parse(Some(raw)).unwrap();
    // (query, ids on the page, total)
    let cases: &[(&str, &[&str], u64)] = &[
        ("pageSize=3", &["i00", "i01", "i02"], 30),
        ("pageSize=7&page=5", &["i28", "i29"], 30),
        ("pageSize=7&page=6", &[], 30),
        ("status=stopped&pageSize=3&page=2", &["i09", "i12", "i15"], 10),
        (
            "status=stopped&zone=z1&pageSize=100",
            &["i00", "i06", "i12", "i18", "i24"],
            5,
        ),
        ("status=stopped&zone=z3", &[], 0),
        ("status=error", &[], 0),
    ];
    for &(raw, ids, total) in cases {
        let (page, p) = f.list(&q(raw), t0);
        let got: Vec<&str> = page.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(got, ids, "{raw}");
        assert_eq!(p.total_count, total, "{raw}");
    }
    // The cached JSON is exactly what serializing the page gives, also after status changes.
    for raw in ["pageSize=4&page=2", "status=stopped&zone=z1", "zone=z3"] {
        let query = q(raw);
        let json: serde_json::Value = serde_json::from_slice(&f.list_json(&query, t0)).unwrap();
        let (page, p) = f.list(&query, t0);
        let page = crate::api::types::InstancePage {
            instances: page.into_iter().cloned().collect(),
            pagination: p,
        };
        assert_eq!(json, serde_json::to_value(&page).unwrap(), "{raw}");
    }
    // Lists see settled transitions.
    f.apply("i01", A::Stop, t0, OPTS).unwrap();
    let (_, p) = f.list(&q("status=stopped"), t0);
    assert_eq!(p.total_count, 10);
    let (_, p) = f.list(&q("status=stopped"), t0 + Duration::from_secs(1));
    assert_eq!(p.total_count, 11);
    let json: Instance = serde_json::from_slice(f.get_json("i01", t0).unwrap()).unwrap();
    assert_eq!(json.status, S::Stopped);
    assert!(f.get_json("nope", t0).is_none());
}

#[test]
fn generation_is_deterministic_and_well_formed() {
    let a = generate(500, 7);
    assert_eq!(a, generate(500, 7));
    assert_ne!(a, generate(500, 8));
    let ids: HashSet<&str> = a.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids.len(), 500);
    assert!(a.windows(2).all(|w| w[0].id < w[1].id));
    for i in &a {
        let suffix = i.id.strip_prefix("inst-").expect("prefix");
        assert_eq!(suffix.len(), 8);
        assert!(
            suffix.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
            "{}",
            i.id
        );
        for u in [&i.user_id, &i.customer_id] {
            let parts: Vec<usize> = u.split('-').map(str::len).collect();
            assert_eq!(parts, [8, 4, 4, 4, 12], "{u}");
        }
        assert!(matches!(i.status, S::Running | S::Stopped));
        assert!(
            chrono::DateTime::parse_from_rfc3339(&i.created_at).is_ok(),
            "{}",
            i.created_at
        );
    }
    let stopped = a.iter().filter(|i| i.status == S::Stopped).count();
    assert!((25..150).contains(&stopped), "{stopped}");
    let users: HashSet<&str> = a.iter().map(|i| i.user_id.as_str()).collect();
    assert!(users.len() <= USERS as usize && users.len() > 1);
    assert!(Fleet::new(a).is_ok());
    assert!(generate(0, 1).is_empty());
}

#[test]
fn fleet_json_formats() {
    let one = r#"{"id":"a","status":"running"}"#;
    assert_eq!(parse_fleet_json(&format!("[{one}]")).unwrap().len(), 1);
    assert_eq!(
        parse_fleet_json(&format!(r#"{{"instances":[{one},{{"id":"b","status":"x"}}]}}"#))
            .unwrap()
            .len(),
        2
    );
    assert!(parse_fleet_json(r#"{"nope":[]}"#).is_err());
    assert!(
        parse_fleet_json("[{\"status\":\"running\"}]").is_err(),
        "id is required"
    );
    let dup = parse_fleet_json(&format!("[{one},{one}]")).unwrap();
    assert!(matches!(Fleet::new(dup), Err(FleetError::DuplicateId(id)) if id == "a"));
    let empty = parse_fleet_json(r#"[{"id":"","status":"running"}]"#).unwrap();
    assert!(matches!(Fleet::new(empty), Err(FleetError::EmptyId)));
}

#[test]
fn a_failing_action_is_accepted_runs_and_ends_in_error() {
    let t0 = Instant::now();
    let ms = |n| t0 + Duration::from_millis(n);
    let failing = TransitionOpts { fails: true, ..OPTS };
    let mut f = Fleet::new(vec![inst("a", S::Running), inst("b", S::Stopped)]).unwrap();
    f.apply("a", A::Restart, t0, failing).unwrap();
    f.apply("b", A::Start, t0, failing).unwrap();
    assert_eq!(
        f.get("a", ms(50)).unwrap().status,
        S::Restarting,
        "it runs like any other"
    );
    assert_eq!(f.get("b", ms(50)).unwrap().status, S::Starting);
    assert_eq!(f.get("a", ms(100)).unwrap().status, S::Error);
    assert_eq!(f.get("b", ms(100)).unwrap().status, S::Error);
    // From error, a reset may be tried (and succeed without the fault).
    f.apply("a", A::Reset, ms(100), OPTS).unwrap();
    assert_eq!(f.get("a", ms(200)).unwrap().status, S::Running);
}
