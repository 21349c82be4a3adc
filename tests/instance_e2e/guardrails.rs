//! Guardrails against the real API server and the simulator: access policy, dry run, suspend, loop protection.

use crate::support;

use std::time::Duration;

use compute_operator::api::InstanceStatus;
use compute_operator::crd::access_policy::{
    ComputeAccessPolicy, ComputeAccessPolicySpec, InstanceMatch, NamespaceMatch, PolicyMode,
};
use compute_operator::crd::instance_action::{ComputeInstanceAction, DesiredState};
use compute_operator::sim::{SimConfig, SimServer};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use support::*;

const TOKEN: &str = "dev-admin-token";

fn add(sim: &SimServer, id: &str, customer: &str, user: &str, zone: &str, template: &str) {
    let mut i = compute_operator::devenv::dev::demo_instances().remove(0);
    i.id = id.into();
    i.customer_id = customer.into();
    i.user_id = user.into();
    i.zone = zone.into();
    i.template_id = template.into();
    i.status = InstanceStatus::Running;
    sim.upsert_instance(i);
}

fn strings(v: &[&str]) -> Option<Vec<String>> {
    Some(v.iter().map(|s| s.to_string()).collect())
}

fn policy(
    name: &str,
    namespaces: NamespaceMatch,
    instances: InstanceMatch,
    states: &[DesiredState],
) -> ComputeAccessPolicy {
    ComputeAccessPolicy::new(
        name,
        ComputeAccessPolicySpec {
            namespaces,
            instances,
            desired_states: states.to_vec(),
        },
    )
}

fn names(ns: &str) -> NamespaceMatch {
    NamespaceMatch {
        names: strings(&[ns]),
        selector: None,
    }
}

async fn events_for(client: &kube::Client, ns: &str, name: &str) -> Vec<String> {
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), ns);
    api.list(&Default::default())
        .await
        .map(|l| {
            l.items
                .into_iter()
                .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
                .filter_map(|e| e.reason)
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_policy_allows_denies_and_is_picked_up_at_run_time() {
    let client = client().await;
    let ns = namespace(&client, "policy").await;
    let api: Api<ComputeInstanceAction> = Api::namespaced(client.clone(), &ns);
    let policies: Api<ComputeAccessPolicy> = Api::all(client.clone());
    let sim = simulator(SimConfig {
        instances: 0,
        transition: Duration::from_millis(200),
        ..SimConfig::default()
    })
    .await;
    add(&sim, "i-id", "c0", "u0", "z0", "t0");
    add(&sim, "i-cust", "c1", "u0", "z0", "t0");
    add(&sim, "i-user", "c0", "u1", "z0", "t0");
    add(&sim, "i-zone", "c0", "u0", "z1", "t0");
    add(&sim, "i-tmpl", "c0", "u0", "z0", "t1");
    add(&sim, "i-sel", "c0", "u0", "z0", "t0");
    add(&sim, "i-late", "c0", "u0", "z0", "t0");
    // Label the namespace for the selector case.
    let labels = serde_json::json!({"metadata": {"labels": {"compute-access": ns.clone()}}});
    Api::<Namespace>::all(client.clone())
        .patch(&ns, &PatchParams::default(), &Patch::Merge(&labels))
        .await
        .unwrap();
    let p = |suffix: &str| format!("{ns}-{suffix}");
    let all = [
        DesiredState::Running,
        DesiredState::Stopped,
        DesiredState::Restarted,
        DesiredState::Reset,
    ];
    let granted = [
        policy(
            &p("id"),
            names(&ns),
            InstanceMatch {
                ids: strings(&["i-id"]),
                ..Default::default()
            },
            &all,
        ),
        policy(
            &p("cust"),
            names(&ns),
            InstanceMatch {
                customer_ids: strings(&["c1"]),
                ..Default::default()
            },
            &all,
        ),
        policy(
            &p("user"),
            names(&ns),
            InstanceMatch {
                user_ids: strings(&["u1"]),
                ..Default::default()
            },
            &all,
        ),
        policy(
            &p("zone"),
            names(&ns),
            InstanceMatch {
                zones: strings(&["z1"]),
                ..Default::default()
            },
            &all,
        ),
        policy(
            &p("tmpl"),
            names(&ns),
            InstanceMatch {
                template_ids: strings(&["t1"]),
                ..Default::default()
            },
            &[DesiredState::Stopped],
        ),
        policy(
            &p("sel"),
            NamespaceMatch {
                names: None,
                selector: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
                    match_labels: Some([("compute-access".to_string(), ns.clone())].into()),
                    match_expressions: None,
                }),
            },
            InstanceMatch {
                ids: strings(&["i-sel"]),
                ..Default::default()
            },
            &all,
        ),
    ];
    for pol in &granted {
        policies
            .create(&PostParams::default(), pol)
            .await
            .expect("create policy");
    }
    let mut config = test_controller_config(&ns);
    config.policy_mode = PolicyMode::Enforce;
    let ctl = start_controller(&sim, TOKEN, config).await;
    for (name, id) in [
        ("id", "i-id"),
        ("cust", "i-cust"),
        ("user", "i-user"),
        ("zone", "i-zone"),
        ("tmpl", "i-tmpl"),
        ("sel", "i-sel"),
    ] {
        create(&api, &cia(name, id, DesiredState::Stopped, None)).await;
    }
    // Denied: the template policy grants only `stopped`; nothing grants i-late.
    create(&api, &cia("tmpl-reset", "i-tmpl", DesiredState::Reset, Some("1"))).await;
    create(&api, &cia("late", "i-late", DesiredState::Stopped, None)).await;
    for name in ["id", "cust", "user", "zone", "tmpl", "sel"] {
        wait_ready(&api, name).await;
    }
    let o = wait_reason(&api, "tmpl-reset", "Stalled", "PolicyDenied").await;
    let msg = &condition(&o, "Stalled").unwrap().message;
    assert!(
        msg.contains("`reset`") && msg.contains(&ns),
        "the message names what to change: {msg}"
    );
    wait_reason(&api, "late", "Stalled", "PolicyDenied").await;
    assert!(audit_for(&sim, "i-late").is_empty(), "denied objects never POST");
    assert_eq!(
        audit_for(&sim, "i-tmpl"),
        vec!["stop"],
        "only the allowed state was acted on"
    );
    // Events are published in the background: give them a moment.
    let mut denied_event = false;
    for _ in 0..50 {
        denied_event = events_for(&client, &ns, "late")
            .await
            .contains(&"PolicyDenied".to_string());
        if denied_event {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(denied_event, "a PolicyDenied Event was published");
    // A policy added at run time is picked up without a restart.
    policies
        .create(
            &PostParams::default(),
            &policy(
                &p("late"),
                names(&ns),
                InstanceMatch {
                    ids: strings(&["i-late"]),
                    ..Default::default()
                },
                &all,
            ),
        )
        .await
        .unwrap();
    wait_ready(&api, "late").await;
    assert_eq!(audit_for(&sim, "i-late"), vec!["stop"]);
    ctl.stop().await;
    for pol in granted
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .chain([p("late")])
    {
        let _ = policies.delete(&pol, &DeleteParams::default()).await;
    }
}

/// A policy that selects namespaces by label follows label changes at run time, both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_label_changes_are_re_evaluated() {
    let client = client().await;
    let ns = namespace(&client, "policy-labels").await;
    let api: Api<ComputeInstanceAction> = Api::namespaced(client.clone(), &ns);
    let policies: Api<ComputeAccessPolicy> = Api::all(client.clone());
    let namespaces = Api::<Namespace>::all(client.clone());
    let sim = simulator(SimConfig {
        instances: 0,
        transition: Duration::from_millis(200),
        ..SimConfig::default()
    })
    .await;
    add(&sim, "i-labelled", "c0", "u0", "z0", "t0");
    let name = format!("{ns}-by-label");
    let by_label = policy(
        &name,
        NamespaceMatch {
            names: None,
            selector: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
                match_labels: Some([("compute-tenant".to_string(), ns.clone())].into()),
                match_expressions: None,
            }),
        },
        InstanceMatch {
            ids: strings(&["i-labelled"]),
            ..Default::default()
        },
        &[DesiredState::Stopped, DesiredState::Running],
    );
    policies
        .create(&PostParams::default(), &by_label)
        .await
        .expect("create policy");
    let mut config = test_controller_config(&ns);
    config.policy_mode = PolicyMode::Enforce;
    // Serving one namespace, its labels are read by name (a Role cannot grant a watch of namespaces).
    config.namespace_label_poll = Duration::from_secs(1);
    let ctl = start_controller(&sim, TOKEN, config).await;

    create(&api, &cia("stop", "i-labelled", DesiredState::Stopped, None)).await;
    wait_reason(&api, "stop", "Stalled", "PolicyDenied").await;
    assert!(sim.audit().is_empty(), "the namespace is not labelled yet");

    let label = |value: serde_json::Value| serde_json::json!({"metadata": {"labels": {"compute-tenant": value}}});
    namespaces
        .patch(
            &ns,
            &PatchParams::default(),
            &Patch::Merge(&label(serde_json::json!(ns))),
        )
        .await
        .unwrap();
    wait_ready(&api, "stop").await;
    assert_eq!(
        audit_for(&sim, "i-labelled"),
        vec!["stop"],
        "allowed once the label is there"
    );

    // The label goes: a new request on the same instance is denied again.
    namespaces
        .patch(
            &ns,
            &PatchParams::default(),
            &Patch::Merge(&label(serde_json::Value::Null)),
        )
        .await
        .unwrap();
    api.delete("stop", &DeleteParams::default()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    create(&api, &cia("start", "i-labelled", DesiredState::Running, None)).await;
    wait_reason(&api, "start", "Stalled", "PolicyDenied").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        audit_for(&sim, "i-labelled"),
        vec!["stop"],
        "no start without the label"
    );
    ctl.stop().await;
    let _ = policies.delete(&name, &DeleteParams::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_and_suspend_make_no_post() {
    let client = client().await;
    let ns = namespace(&client, "dryrun").await;
    let api: Api<ComputeInstanceAction> = Api::namespaced(client.clone(), &ns);
    let sim = simulator(SimConfig {
        instances: 0,
        transition: Duration::from_millis(200),
        ..SimConfig::default()
    })
    .await;
    add(&sim, "i-dry", "c", "u", "z", "t");
    add(&sim, "i-sus", "c", "u", "z", "t");
    let ctl = start_controller(&sim, TOKEN, test_controller_config(&ns)).await;
    let mut dry = cia("dry", "i-dry", DesiredState::Reset, Some("1"));
    dry.spec.dry_run = true;
    create(&api, &dry).await;
    let o = wait_reason(&api, "dry", "Ready", "DryRun").await;
    assert!(o.status.unwrap().message.unwrap().contains("would reset"));
    let mut sus = cia("sus", "i-sus", DesiredState::Stopped, None);
    sus.spec.suspend = true;
    create(&api, &sus).await;
    wait_reason(&api, "sus", "Ready", "Suspended").await;
    let gets_before = sim.stats().requests.get;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        audit_for(&sim, "i-dry").is_empty() && audit_for(&sim, "i-sus").is_empty(),
        "no POST"
    );
    // Suspended objects make no API calls at all (the dry-run object keeps reading: one GET per resync at most).
    assert!(sim.stats().requests.get <= gets_before + 1);
    // Resuming continues where it stopped.
    api.patch(
        "sus",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"suspend": false}})),
    )
    .await
    .unwrap();
    // (Ready=True/Suspended is already there: wait for the real result.)
    wait_reason(&api, "sus", "Ready", "Succeeded").await;
    assert_eq!(audit_for(&sim, "i-sus"), vec!["stop"]);
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loop_protection_stops_a_reboot_loop() {
    let client = client().await;
    let ns = namespace(&client, "loop").await;
    let api: Api<ComputeInstanceAction> = Api::namespaced(client.clone(), &ns);
    let sim = simulator(SimConfig {
        instances: 0,
        transition: Duration::from_millis(200),
        ..SimConfig::default()
    })
    .await;
    add(&sim, "i-1", "c", "u", "z", "t");
    let mut config = test_controller_config(&ns);
    config.plan.max_one_shots = 2;
    let ctl = start_controller(&sim, TOKEN, config).await;
    create(&api, &cia("reboot", "i-1", DesiredState::Restarted, Some("1"))).await;
    for rid in ["1", "2", "3"] {
        let patch = serde_json::json!({"spec": {"requestId": rid}});
        api.patch("reboot", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
        if rid != "3" {
            wait_ready_for_request(&api, "reboot", rid).await;
        }
    }
    let o = wait_reason(&api, "reboot", "Stalled", "RateLimited").await;
    assert!(condition(&o, "Stalled").unwrap().message.contains("limit 2"));
    assert_eq!(audit_for(&sim, "i-1"), vec!["restart", "restart"]);
    // The bounded history keeps what was done.
    assert_eq!(o.status.unwrap().history.len(), 1);
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_policies_are_rejected_with_readable_messages() {
    let client = client().await;
    let raw: Api<kube::api::DynamicObject> = Api::all_with(
        client.clone(),
        &kube::api::ApiResource::erase::<ComputeAccessPolicy>(&()),
    );
    let obj = |spec: serde_json::Value| {
        serde_json::from_value::<kube::api::DynamicObject>(serde_json::json!({
            "apiVersion": "compute.threatwinds.com/v1alpha1", "kind": "ComputeAccessPolicy",
            "metadata": {"name": "bad-policy"}, "spec": spec
        }))
        .unwrap()
    };
    let table = [
        (
            serde_json::json!({"namespaces": {}, "instances": {"ids": ["i"]}, "desiredStates": ["running"]}),
            "namespaces must give names or a selector",
        ),
        (
            serde_json::json!({"namespaces": {"names": ["a"]}, "instances": {}, "desiredStates": ["running"]}),
            "instances must give ids or at least one of",
        ),
        (
            serde_json::json!({"namespaces": {"selector": {}}, "instances": {"ids": ["i"]}, "desiredStates": ["running"]}),
            "namespaces.selector must not be empty",
        ),
        (
            serde_json::json!({"namespaces": {"selector": {"matchLabels": {}}}, "instances": {"ids": ["i"]}, "desiredStates": ["running"]}),
            "would match every namespace",
        ),
        (
            serde_json::json!({"namespaces": {"names": ["a"]}, "instances": {"ids": ["i"]}, "desiredStates": ["explode"]}),
            "Unsupported value: \"explode\"",
        ),
        (
            serde_json::json!({"namespaces": {"names": ["a"]}, "instances": {"ids": ["i"]}, "desiredStates": []}),
            "should have at least 1 items",
        ),
    ];
    for (spec, want) in table {
        let err = raw
            .create(&PostParams::default(), &obj(spec.clone()))
            .await
            .expect_err("rejected");
        assert!(err.to_string().contains(want), "{spec}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_cannot_see_block_or_spend_for_each_other() {
    let client = client().await;
    let allowed_ns = namespace(&client, "tenant-a").await;
    let other_ns = namespace(&client, "tenant-b").await;
    let allowed: Api<ComputeInstanceAction> = Api::namespaced(client.clone(), &allowed_ns);
    let other: Api<ComputeInstanceAction> = Api::namespaced(client.clone(), &other_ns);
    let policies: Api<ComputeAccessPolicy> = Api::all(client.clone());
    let sim = simulator(SimConfig {
        instances: 0,
        transition: Duration::from_millis(300),
        ..SimConfig::default()
    })
    .await;
    let mut shared = compute_operator::devenv::dev::demo_instances().remove(0);
    shared.id = "i-shared".into();
    shared.name = "secret-name-7".into();
    shared.zone = "secret-zone-7".into();
    shared.customer_id = "secret-customer-7".into();
    shared.user_id = "secret-user-7".into();
    shared.template_id = "secret-template-7".into();
    shared.status = InstanceStatus::Stopped;
    sim.upsert_instance(shared.clone());
    let mut foreign = shared;
    foreign.id = "i-foreign".into();
    sim.upsert_instance(foreign);
    let secrets = [
        "secret-name-7",
        "secret-zone-7",
        "secret-customer-7",
        "secret-user-7",
        "secret-template-7",
    ];
    let grant = policy(
        &format!("{allowed_ns}-grant"),
        names(&allowed_ns),
        InstanceMatch {
            ids: strings(&["i-shared"]),
            ..Default::default()
        },
        &[DesiredState::Running, DesiredState::Restarted],
    );
    policies.create(&PostParams::default(), &grant).await.expect("policy");
    // The other tenant may restart the shared instance too (and nothing else).
    let grant_other = policy(
        &format!("{other_ns}-grant"),
        names(&other_ns),
        InstanceMatch {
            ids: strings(&["i-shared"]),
            ..Default::default()
        },
        &[DesiredState::Restarted],
    );
    policies
        .create(&PostParams::default(), &grant_other)
        .await
        .expect("policy");
    let mut config = test_controller_config(&allowed_ns);
    config.namespaces = vec![allowed_ns.clone(), other_ns.clone()];
    config.policy_mode = PolicyMode::Enforce;
    let ctl = start_controller(&sim, TOKEN, config).await;

    // The other tenant names the same instance with the opposite level first, and an instance that does not exist.
    create(&other, &cia("deny-stop", "i-shared", DesiredState::Stopped, None)).await;
    create(
        &other,
        &cia("missing", "i-does-not-exist", DesiredState::Restarted, Some("m1")),
    )
    .await;
    create(
        &other,
        &cia("deny-foreign", "i-foreign", DesiredState::Restarted, Some("m1")),
    )
    .await;
    wait_reason(&other, "deny-stop", "Stalled", "PolicyDenied").await;
    let missing = wait_reason(&other, "missing", "Stalled", "PolicyDenied").await;
    let existing = wait_reason(&other, "deny-foreign", "Stalled", "PolicyDenied").await;
    // No enumeration: a missing instance and an existing one it may not touch look the same.
    let words = |o: &ComputeInstanceAction, id: &str| condition(o, "Stalled").unwrap().message.replace(id, "ID");
    assert_eq!(words(&existing, "i-foreign"), words(&missing, "i-does-not-exist"));
    // No blocking: the allowed object starts the instance although a denied `stopped` object contradicts it.
    create(&allowed, &cia("run", "i-shared", DesiredState::Running, None)).await;
    wait_ready(&allowed, "run").await;
    assert_eq!(audit_for(&sim, "i-shared"), vec!["start"]);

    // No disclosure: nothing about the instance in the denied objects' status or Events.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for name in ["deny-stop", "missing", "deny-foreign"] {
        let o = other.get(name).await.unwrap();
        let status = serde_json::to_string(&o.status).unwrap();
        assert!(o.status.as_ref().unwrap().instance.is_none(), "{name}: {status}");
        for secret in secrets {
            assert!(!status.contains(secret), "{name} status shows {secret}: {status}");
        }
    }
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &other_ns);
    for e in events.list(&Default::default()).await.unwrap() {
        let note = e.note.unwrap_or_default();
        for secret in secrets {
            assert!(!note.contains(secret), "an Event shows {secret}: {note}");
        }
    }

    // The other tenant's allowed restart runs; then a tenant who can write status forges an action in flight
    // on it: the forged record blocks nobody.
    create(
        &other,
        &cia("b-restart", "i-shared", DesiredState::Restarted, Some("b1")),
    )
    .await;
    wait_ready(&other, "b-restart").await;
    assert_eq!(audit_for(&sim, "i-shared"), vec!["start", "restart"]);
    let mut forged = other.get_status("b-restart").await.unwrap();
    let status = forged.status.get_or_insert_with(Default::default);
    status.action = Some(compute_operator::crd::instance_action::ActionRecord {
        action: compute_operator::api::PowerAction::Restart,
        request_id: Some("forged".into()),
        generation: 1,
        state: compute_operator::crd::instance_action::ActionState::Accepted,
        intent_at: chrono::Utc::now(),
        accepted_at: Some(chrono::Utc::now()),
        completed_at: None,
        attempts: 1,
        from_status: Some("running".into()),
        saw_transition: false,
        reason: None,
        drift: false,
    });
    let pp = PostParams {
        field_manager: Some("tenant-b".into()),
        ..Default::default()
    };
    other
        .replace_status("b-restart", &pp, &forged)
        .await
        .expect("forge status");
    create(
        &allowed,
        &cia("restart", "i-shared", DesiredState::Restarted, Some("r1")),
    )
    .await;
    wait_ready(&allowed, "restart").await;
    assert_eq!(audit_for(&sim, "i-shared"), vec!["start", "restart", "restart"]);

    // No spending: settled and denied objects make no admin API requests between resyncs.
    let before = sim.stats().requests.get;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(sim.stats().requests.get, before, "denied objects do not poll");
    ctl.stop().await;
    for name in [format!("{allowed_ns}-grant"), format!("{other_ns}-grant")] {
        let _ = policies.delete(&name, &DeleteParams::default()).await;
    }
}
