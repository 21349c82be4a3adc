//! Checks the simulator's real responses against `src/api/openapi.yaml`: every path, method and status code
//! it returns is declared there, and JSON bodies validate against the declared schemas (a small validator
//! for the subset the document uses: $ref, type, required, properties, items, enum, minimum, maximum).

use std::time::Duration;

use compute_operator::api::types::{Instance, InstanceStatus};
use compute_operator::sim::{self, SimConfig, SimServer};
use reqwest::Method;
use serde_json::Value;

const OPENAPI: &str = include_str!("../../src/api/openapi.yaml");
const ADMIN: &str = "dev-admin-token";

fn spec() -> Value {
    serde_norway::from_str(OPENAPI).expect("openapi.yaml is valid YAML")
}

/// Follow a local `$ref` (`#/a/b/c`), if any.
fn resolve<'a>(doc: &'a Value, node: &'a Value) -> &'a Value {
    match node.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let target = r.strip_prefix('#').and_then(|p| doc.pointer(p));
            resolve(doc, target.unwrap_or_else(|| panic!("dangling $ref {r}")))
        }
        None => node,
    }
}

/// Errors of `value` against `schema`, each prefixed with its JSON path. With `strict`, properties that the
/// schema does not declare are errors too (so the document cannot fall behind the simulator).
fn validate(doc: &Value, schema: &Value, value: &Value, path: &str, strict: bool, errors: &mut Vec<String>) {
    let schema = resolve(doc, schema);
    if let Some(t) = schema.get("type").and_then(Value::as_str) {
        let ok = match t {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            other => panic!("schema type {other} not supported by this validator"),
        };
        if !ok {
            errors.push(format!("{path}: expected {t}, got {value}"));
            return;
        }
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array)
        && !options.contains(value)
    {
        errors.push(format!("{path}: {value} is not one of {options:?}"));
    }
    if let Some(n) = value.as_f64() {
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
            && n < min
        {
            errors.push(format!("{path}: {n} < minimum {min}"));
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
            && n > max
        {
            errors.push(format!("{path}: {n} > maximum {max}"));
        }
    }
    if let Some(obj) = value.as_object() {
        for req in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
            let name = req.as_str().unwrap_or_default();
            if !obj.contains_key(name) {
                errors.push(format!("{path}: missing required {name}"));
            }
        }
        let props = schema.get("properties").and_then(Value::as_object);
        for (k, v) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(s) => validate(doc, s, v, &format!("{path}.{k}"), strict, errors),
                None if strict => errors.push(format!("{path}: property {k} is not declared")),
                None => {}
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), value.as_array()) {
        for (i, v) in arr.iter().enumerate() {
            validate(doc, items, v, &format!("{path}[{i}]"), strict, errors);
        }
    }
}

/// The path template of the document that matches a concrete path (relative to the server URL).
fn template<'a>(doc: &'a Value, concrete: &str) -> Option<&'a str> {
    let paths = doc["paths"].as_object()?;
    let want: Vec<&str> = concrete.split('/').collect();
    // Literal segments beat parameters, so `/x/{id}` never shadows `/x/stop`-style literals.
    let mut best: Option<(&str, usize)> = None;
    for tpl in paths.keys() {
        let segs: Vec<&str> = tpl.split('/').collect();
        if segs.len() != want.len() {
            continue;
        }
        let mut literals = 0;
        let matched = segs.iter().zip(&want).all(|(t, c)| {
            if t.starts_with('{') && t.ends_with('}') {
                !c.is_empty()
            } else {
                literals += 1;
                t == c
            }
        });
        if matched && best.is_none_or(|(_, l)| literals > l) {
            best = Some((tpl.as_str(), literals));
        }
    }
    best.map(|(t, _)| t)
}

struct Checker {
    doc: Value,
    sim: SimServer,
    http: reqwest::Client,
    checked: Vec<String>,
}

impl Checker {
    /// Send a request and check the response against the document; the response body as JSON (or Null).
    async fn check(&mut self, method: Method, path_and_query: &str, token: Option<&str>, want: u16) -> Value {
        let url = format!("{}{path_and_query}", self.sim.base_url());
        let mut req = self.http.request(method.clone(), url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = resp.bytes().await.expect("body");
        let what = format!("{method} {path_and_query} -> {status}");
        assert_eq!(status, want, "{what}: {}", String::from_utf8_lossy(&body));

        let path = path_and_query.split('?').next().unwrap_or_default();
        let tpl = template(&self.doc, path).unwrap_or_else(|| panic!("{what}: path not in openapi.yaml"));
        let op = &self.doc["paths"][tpl][method.as_str().to_lowercase()];
        assert!(op.is_object(), "{what}: {method} {tpl} not in openapi.yaml");
        let response = op["responses"]
            .get(status.to_string())
            .unwrap_or_else(|| panic!("{what}: status {status} not declared for {method} {tpl}"));
        let response = resolve(&self.doc, response).clone();
        let json = match response.pointer("/content/application~1json/schema") {
            Some(schema) => {
                assert!(
                    content_type.starts_with("application/json"),
                    "{what}: content-type {content_type:?}"
                );
                let json: Value = serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{what}: not JSON: {e}"));
                let mut errors = Vec::new();
                validate(&self.doc, schema, &json, "$", true, &mut errors);
                assert!(
                    errors.is_empty(),
                    "{what}: body does not match the schema:\n{}",
                    errors.join("\n")
                );
                json
            }
            None => {
                assert!(body.is_empty(), "{what}: a body where none is declared");
                Value::Null
            }
        };
        self.checked.push(format!("{method} {tpl} {status}"));
        json
    }
}

#[test]
fn document_is_complete_and_its_examples_validate() {
    let doc = spec();
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.0")));
    let want: &[(&str, &str, &[&str])] = &[
        ("/admin/instances", "get", &["200", "400", "401", "403"]),
        ("/admin/instances/{id}", "get", &["200", "401", "403", "404"]),
        (
            "/admin/instances/{id}/stop",
            "post",
            &["202", "401", "403", "404", "409"],
        ),
        (
            "/admin/instances/{id}/start",
            "post",
            &["202", "401", "403", "404", "409"],
        ),
        (
            "/admin/instances/{id}/restart",
            "post",
            &["202", "401", "403", "404", "409"],
        ),
        (
            "/admin/instances/{id}/reset",
            "post",
            &["202", "401", "403", "404", "409"],
        ),
    ];
    assert_eq!(doc["paths"].as_object().unwrap().len(), want.len());
    for (path, method, codes) in want {
        let responses = doc["paths"][path][method]["responses"]
            .as_object()
            .unwrap_or_else(|| panic!("{method} {path}"));
        let got: Vec<&str> = responses.keys().map(String::as_str).collect();
        assert_eq!(&got, codes, "{method} {path}");
    }
    let params: Vec<&str> = doc["paths"]["/admin/instances"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        params,
        [
            "page",
            "pageSize",
            "userID",
            "customerID",
            "status",
            "zone",
            "templateID"
        ]
    );
    let filter_enum = &doc["paths"]["/admin/instances"]["get"]["parameters"][4]["schema"]["enum"];
    assert_eq!(filter_enum, &serde_json::json!(InstanceStatus::FILTERABLE));

    for (path, method) in [("/admin/instances", "get"), ("/admin/instances/{id}", "get")] {
        let content = &doc["paths"][path][method]["responses"]["200"]["content"]["application/json"];
        let mut errors = Vec::new();
        validate(&doc, &content["schema"], &content["example"], "$", true, &mut errors);
        assert!(errors.is_empty(), "{method} {path} example: {errors:?}");
    }
    // The validator does catch problems.
    let schema = serde_json::json!({"$ref": "#/components/schemas/InstancePage"});
    let bad = serde_json::json!({"instances": [{"id": 1, "status": "weird"}], "pagination": {"page": 0}, "extra": 1});
    let mut errors = Vec::new();
    validate(&doc, &schema, &bad, "$", true, &mut errors);
    for needle in [
        "$.instances[0].id: expected string",
        "not one of",
        "missing required userId",
        "< minimum",
        "missing required hasNext",
        "extra is not declared",
    ] {
        assert!(errors.iter().any(|e| e.contains(needle)), "{needle} in {errors:?}");
    }
}

#[tokio::test]
async fn simulator_responses_match_the_document() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sim = sim::start(SimConfig {
        instances: 30,
        seed: 9,
        transition: Duration::from_secs(30),
        ..SimConfig::default()
    })
    .await
    .expect("simulator starts");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut c = Checker {
        doc: spec(),
        sim,
        http,
        checked: Vec::new(),
    };
    let instances: Vec<Instance> = c.sim.instances();
    let running = instances
        .iter()
        .find(|i| i.status == InstanceStatus::Running)
        .expect("a running instance")
        .id
        .clone();
    let stopped = instances
        .iter()
        .find(|i| i.status == InstanceStatus::Stopped)
        .expect("a stopped instance")
        .id
        .clone();
    let other = instances
        .iter()
        .filter(|i| i.status == InstanceStatus::Running)
        .nth(1)
        .unwrap()
        .id
        .clone();
    let (get, post) = (Method::GET, Method::POST);

    let page = c.check(get.clone(), "/admin/instances", Some(ADMIN), 200).await;
    assert_eq!(page["instances"].as_array().unwrap().len(), 20);
    c.check(
        get.clone(),
        "/admin/instances?page=2&pageSize=100&status=running",
        Some(ADMIN),
        200,
    )
    .await;
    c.check(
        get.clone(),
        &format!("/admin/instances?zone={}", instances[0].zone),
        Some(ADMIN),
        200,
    )
    .await;
    c.check(get.clone(), "/admin/instances?pageSize=101", Some(ADMIN), 400)
        .await;
    c.check(get.clone(), "/admin/instances?status=nope", Some(ADMIN), 400)
        .await;
    c.check(get.clone(), "/admin/instances", None, 401).await;
    c.check(get.clone(), "/admin/instances", Some("dev-user-token"), 403)
        .await;
    let one = c
        .check(get.clone(), &format!("/admin/instances/{running}"), Some(ADMIN), 200)
        .await;
    assert_eq!(one["id"], running.as_str());
    c.check(get.clone(), "/admin/instances/inst-missing", Some(ADMIN), 404)
        .await;
    c.check(get.clone(), "/admin/instances/inst-missing", None, 401).await;
    c.check(
        get.clone(),
        &format!("/admin/instances/{running}"),
        Some("dev-user-token"),
        403,
    )
    .await;

    c.check(
        post.clone(),
        &format!("/admin/instances/{running}/stop"),
        Some(ADMIN),
        202,
    )
    .await;
    // Transitional statuses are declared too.
    c.check(get.clone(), &format!("/admin/instances/{running}"), Some(ADMIN), 200)
        .await;
    c.check(
        post.clone(),
        &format!("/admin/instances/{running}/start"),
        Some(ADMIN),
        409,
    )
    .await;
    c.check(
        post.clone(),
        &format!("/admin/instances/{stopped}/start"),
        Some(ADMIN),
        202,
    )
    .await;
    c.check(
        post.clone(),
        &format!("/admin/instances/{stopped}/restart"),
        Some(ADMIN),
        409,
    )
    .await;
    c.check(
        post.clone(),
        &format!("/admin/instances/{stopped}/stop"),
        Some(ADMIN),
        409,
    )
    .await;
    c.check(
        post.clone(),
        &format!("/admin/instances/{other}/restart"),
        Some(ADMIN),
        202,
    )
    .await;
    c.check(get.clone(), "/admin/instances?pageSize=100", Some(ADMIN), 200)
        .await;
    c.check(
        post.clone(),
        &format!("/admin/instances/{other}/reset"),
        Some(ADMIN),
        409,
    )
    .await;
    c.sim.set_status(&other, InstanceStatus::Error);
    c.check(
        post.clone(),
        &format!("/admin/instances/{other}/reset"),
        Some(ADMIN),
        202,
    )
    .await;
    for action in ["stop", "start", "restart", "reset"] {
        c.check(
            post.clone(),
            &format!("/admin/instances/inst-missing/{action}"),
            Some(ADMIN),
            404,
        )
        .await;
        c.check(post.clone(), &format!("/admin/instances/{running}/{action}"), None, 401)
            .await;
        c.check(
            post.clone(),
            &format!("/admin/instances/{running}/{action}"),
            Some("dev-user-token"),
            403,
        )
        .await;
    }

    // Every declared (path, method, status) was exercised.
    let doc = c.doc.clone();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            for status in op["responses"].as_object().unwrap().keys() {
                let key = format!("{} {path} {status}", method.to_uppercase());
                assert!(c.checked.contains(&key), "not exercised: {key}");
            }
        }
    }
}
