//! Tests of the emulator through its HTTP routes, called in-process.

use std::time::Duration;

use axum::body::Body;
use http::{HeaderMap, Request, StatusCode};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::{ClientIds, Emulator, Fault};

mod throttling;

const USERS: &str = "/beta/deviceManagement/deviceShellScripts/s/userRunStates";

/// One answer: status, headers and the body as JSON (`Null` when empty or not JSON).
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    json: Value,
}

async fn call(e: &Emulator, method: &str, path: &str, body: Option<Value>) -> Answer {
    call_as(e, "t", method, path, body).await
}

/// [`call`] with this bearer token.
async fn call_as(
    e: &Emulator,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Answer {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {token}"));
    if body.is_some() {
        request = request.header("content-type", "application/json");
    }
    let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
    let response = e
        .router()
        .oneshot(request.body(body).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    Answer {
        status,
        headers,
        json: serde_json::from_slice(&bytes).unwrap_or_default(),
    }
}

async fn create_user(e: &Emulator, body: Value) -> Answer {
    call(e, "POST", USERS, Some(body)).await
}

#[tokio::test]
async fn ignore_is_the_default_and_assigns_its_own_ids() {
    let e = Emulator::new();
    assert_eq!(e.client_ids(), ClientIds::Ignore);
    let a = create_user(&e, json!({"id": "mine"})).await;
    let b = create_user(&e, json!({"id": "mine"})).await;
    assert_eq!(a.status, StatusCode::CREATED);
    assert_eq!(b.status, StatusCode::CREATED);
    assert_ne!(a.json["id"], "mine");
    assert_ne!(a.json["id"], b.json["id"]);
    let missing = call(&e, "GET", &format!("{USERS}/mine"), None).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let id = a.json["id"].as_str().unwrap();
    let found = call(&e, "GET", &format!("{USERS}/{id}"), None).await;
    assert_eq!(found.status, StatusCode::OK);
}

#[tokio::test]
async fn honour_keeps_the_id_and_answers_409_to_a_repeat() {
    let e = Emulator::new();
    e.set_client_ids(ClientIds::Honour);
    let a = create_user(&e, json!({"id": "mine"})).await;
    assert_eq!(a.status, StatusCode::CREATED);
    assert_eq!(a.json["id"], "mine");
    let b = create_user(&e, json!({"id": "mine", "successDeviceCount": 4})).await;
    assert_eq!(b.status, StatusCode::CONFLICT);
    assert_eq!(b.json["error"]["code"], "Conflict");
    let stored = call(&e, "GET", &format!("{USERS}/mine"), None).await;
    assert_eq!(
        stored.json["successDeviceCount"], 0,
        "the repeat changed nothing"
    );
}

#[tokio::test]
async fn reject_refuses_a_body_with_an_id_and_names_it() {
    let e = Emulator::new();
    e.set_client_ids(ClientIds::Reject);
    let a = create_user(&e, json!({"id": "mine"})).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.json["error"]["code"], "BadRequest");
    assert!(
        a.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("'id'"),
        "{}",
        a.json
    );
    let b = create_user(&e, json!({"successDeviceCount": 1})).await;
    assert_eq!(b.status, StatusCode::CREATED);
    let list = call(&e, "GET", USERS, None).await;
    assert_eq!(list.json["value"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn settings_route_sets_client_ids_and_the_write_limit() {
    let e = Emulator::new();
    let put = |body: Value| {
        let e = e.clone();
        async move { call(&e, "PUT", "/_emulator/settings", Some(body)).await }
    };
    assert_eq!(
        put(json!({"client_ids": "honour"})).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(e.client_ids(), ClientIds::Honour);
    assert_eq!(
        put(json!({"write_limit": {"writes": 3, "seconds": 2}}))
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(e.write_limit(), Some((3, Duration::from_secs(2))));
    let shown = call(&e, "GET", "/_emulator/settings", None).await;
    assert_eq!(shown.json["client_ids"], "honour");
    assert_eq!(shown.json["write_limit"]["writes"], 3);
    assert_eq!(
        put(json!({"write_limit": "off"})).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(e.write_limit(), None);
    for bad in [
        json!({"client_ids": "sometimes"}),
        json!({"write_limit": {"writes": 0, "seconds": 2}}),
        json!({"write_limit": {"writes": 5, "seconds": -1}}),
        json!({"write_limit": "on"}),
        json!({"no_such_setting": true}),
    ] {
        assert!(put(bad.clone()).await.status.is_client_error(), "{bad}");
    }
    assert_eq!(e.client_ids(), ClientIds::Honour);
}

#[tokio::test]
async fn the_write_limit_answers_429_with_retry_after_and_counts_them() {
    let e = Emulator::new();
    e.set_write_limit(Some((3, Duration::from_secs(60))));
    for _ in 0..3 {
        assert_eq!(create_user(&e, json!({})).await.status, StatusCode::CREATED);
    }
    // Reads are not writes.
    assert_eq!(call(&e, "GET", USERS, None).await.status, StatusCode::OK);
    let over = create_user(&e, json!({})).await;
    assert_eq!(over.status, StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = over.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(over.json["error"]["code"], "TooManyRequests");
    let patch = call(&e, "PATCH", &format!("{USERS}/x"), Some(json!({}))).await;
    assert_eq!(patch.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(e.throttled_count(), 2);
    assert_eq!(e.answered(429), 2);
    assert_eq!(e.answered(201), 3);
    let list = call(&e, "GET", USERS, None).await;
    assert_eq!(
        list.json["value"].as_array().unwrap().len(),
        3,
        "429s apply nothing"
    );
    e.set_write_limit(None);
    assert_eq!(create_user(&e, json!({})).await.status, StatusCode::CREATED);
}

#[test]
fn parses_write_limits() {
    assert_eq!(
        super::parse_write_limit("50/5s"),
        Ok((50, Duration::from_secs(5)))
    );
    assert_eq!(
        super::parse_write_limit("200/20s"),
        Ok((200, Duration::from_secs(20)))
    );
    assert_eq!(
        super::parse_write_limit("10/500ms"),
        Ok((10, Duration::from_millis(500)))
    );
    for bad in [
        "",
        "50",
        "/5s",
        "0/5s",
        "100001/5s",
        "x/5s",
        "50/0s",
        "50/25h",
        "50/five",
    ] {
        assert!(super::parse_write_limit(bad).is_err(), "{bad}");
    }
}

#[tokio::test]
async fn faults_still_answer_after_the_write_limit_lets_a_write_through() {
    let e = Emulator::new();
    e.set_write_limit(Some((1, Duration::from_secs(60))));
    e.inject(Fault::status(503).method("POST").times(1));
    assert_eq!(
        create_user(&e, json!({})).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        create_user(&e, json!({})).await.status,
        StatusCode::TOO_MANY_REQUESTS,
        "the faulted write counted"
    );
}

// Hardening of a development tool that `--emulator` runs inside the gateway.

async fn raw(e: &Emulator, method: &str, path: &str, token: bool, body: Vec<u8>) -> StatusCode {
    let mut request = Request::builder().method(method).uri(path);
    if token {
        request = request.header("authorization", "Bearer t");
    }
    e.router()
        .oneshot(request.body(Body::from(body)).unwrap())
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn requests_without_a_token_are_not_recorded() {
    let e = Emulator::new();
    let status = raw(&e, "POST", USERS, false, vec![b'x'; 1 << 20]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(e.requests().is_empty());
    assert_eq!(e.recorded_bytes(), 0);
    assert_eq!(e.request_count(), 0);
    assert_eq!(e.answered(401), 1);
}

#[tokio::test]
async fn a_recorded_request_keeps_at_most_8_kib_even_of_invalid_utf8() {
    let e = Emulator::new();
    raw(&e, "POST", USERS, true, vec![b'a'; 100_000]).await;
    raw(&e, "POST", USERS, true, vec![0xFF; 100_000]).await;
    let recorded = e.requests();
    assert_eq!(recorded.len(), 2);
    for r in &recorded {
        assert_eq!(r.body_len, 100_000);
        assert!(r.body.len() <= super::RECORD_BODY_BYTES, "{}", r.body.len());
        assert!(r.body.len() > super::RECORD_BODY_BYTES - 4);
    }
    assert!(recorded[1].body.starts_with('\u{FFFD}'));
    assert!(e.recorded_bytes() < 3 * super::RECORD_BODY_BYTES);
}

#[tokio::test]
async fn the_record_keeps_at_most_4_mib_dropping_the_oldest() {
    let e = Emulator::new();
    let n = 4 * super::RECORD_TOTAL_BYTES / super::RECORD_BODY_BYTES / 3;
    for i in 0..n {
        let path = format!("{USERS}?n={i}");
        raw(
            &e,
            "POST",
            &path,
            true,
            vec![b'b'; super::RECORD_BODY_BYTES],
        )
        .await;
    }
    assert_eq!(e.request_count(), n as u64, "every request counted");
    assert!(e.recorded_bytes() <= super::RECORD_TOTAL_BYTES);
    assert!(e.recorded_bytes() > super::RECORD_TOTAL_BYTES - 2 * super::RECORD_BODY_BYTES);
    let kept = e.requests();
    assert!(kept.len() < n);
    assert!(!kept[0].path.ends_with("?n=0"), "the oldest went first");
    assert!(
        kept.last()
            .unwrap()
            .path
            .ends_with(&format!("?n={}", n - 1))
    );
    let sum: usize = kept.iter().map(super::Recorded::size).sum();
    assert_eq!(sum, e.recorded_bytes());
    e.clear_requests();
    assert_eq!(e.recorded_bytes(), 0);
}

#[tokio::test]
async fn faults_over_http_are_checked_and_bounded() {
    let e = Emulator::new();
    let post = |body: Value| {
        let e = e.clone();
        async move {
            call(&e, "POST", "/_emulator/faults", Some(body))
                .await
                .status
        }
    };
    for bad in [
        json!({}),
        json!({"status": 500}),
        json!({"status": 500, "method": ""}),
        json!({"status": 99, "method": "GET"}),
        json!({"status": 600, "any": true}),
        json!({"status": 429, "any": true, "times": 0}),
        json!({"status": "x", "any": true}),
        json!([]),
    ] {
        assert_eq!(post(bad.clone()).await, StatusCode::BAD_REQUEST, "{bad}");
    }
    assert_eq!(e.fault_count(), 0);
    let huge = json!({"status": 500, "any": true, "raw_body": "x".repeat(100_000)});
    assert!(post(huge).await.is_client_error());
    assert_eq!(
        post(json!({"status": 503, "any": true})).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        create_user(&e, json!({})).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    for _ in 1..super::control::MAX_FAULTS {
        assert_eq!(
            post(json!({"status": 500, "method": "PATCH"})).await,
            StatusCode::NO_CONTENT
        );
    }
    assert_eq!(
        post(json!({"status": 500, "method": "PATCH"})).await,
        StatusCode::BAD_REQUEST,
        "one fault past the cap"
    );
    assert_eq!(e.fault_count(), super::control::MAX_FAULTS);
    assert_eq!(
        call(&e, "DELETE", "/_emulator/faults", None).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(e.fault_count(), 0);
}

#[tokio::test]
async fn latency_is_capped() {
    let e = Emulator::new();
    let put = |ms: u64| {
        let e = e.clone();
        async move {
            call(
                &e,
                "PUT",
                "/_emulator/settings",
                Some(json!({"latency_ms": ms})),
            )
            .await
            .status
        }
    };
    assert_eq!(put(u64::MAX).await, StatusCode::BAD_REQUEST);
    assert_eq!(put(60_001).await, StatusCode::BAD_REQUEST);
    assert_eq!(e.latency(), None, "a refused setting changes nothing");
    assert_eq!(put(60_000).await, StatusCode::NO_CONTENT);
    assert_eq!(e.latency(), Some(super::MAX_LATENCY));
    e.set_latency(Duration::from_secs(u64::MAX / 2));
    assert_eq!(e.latency(), Some(super::MAX_LATENCY));
    e.set_latency(Duration::ZERO);
    assert_eq!(e.latency(), None);
}

// Lifecycle: paging, $filter, $select, DELETE.

const DEVICES: &str = "/beta/deviceManagement/deviceManagementScripts/s/deviceRunStates";

async fn create_devices(e: &Emulator, n: usize, run_state: impl Fn(usize) -> &'static str) {
    for i in 0..n {
        let a = call(
            e,
            "POST",
            DEVICES,
            Some(json!({"runState": run_state(i), "errorCode": i})),
        )
        .await;
        assert_eq!(a.status, StatusCode::CREATED);
    }
}

/// Every item of a listing, following `@odata.nextLink`; and the page sizes.
async fn list_all(e: &Emulator, first: &str) -> (Vec<Value>, Vec<usize>) {
    let mut items = Vec::new();
    let mut sizes = Vec::new();
    let mut next = Some(first.to_owned());
    while let Some(url) = next {
        assert!(sizes.len() < 100, "too many pages");
        let a = call(e, "GET", &url, None).await;
        assert_eq!(a.status, StatusCode::OK, "{url}: {}", a.json);
        let value = a.json["value"].as_array().unwrap().clone();
        sizes.push(value.len());
        items.extend(value);
        next = a.json["@odata.nextLink"].as_str().map(|link| {
            let rest = link
                .strip_prefix("http://localhost")
                .unwrap_or_else(|| panic!("not on the emulator's base: {link}"));
            assert!(rest.contains("$skiptoken="), "{link}");
            rest.to_owned()
        });
    }
    (items, sizes)
}

#[tokio::test]
async fn lists_in_pages_with_top_and_next_links() {
    let e = Emulator::new();
    create_devices(&e, 250, |_| "success").await;
    let (items, sizes) = list_all(&e, &format!("{DEVICES}?$top=70")).await;
    assert_eq!(sizes, [70, 70, 70, 40]);
    let mut ids: Vec<_> = items.iter().map(|i| i["id"].as_str().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 250, "each state once");
    let (_, sizes) = list_all(&e, DEVICES).await;
    assert_eq!(sizes, [100, 100, 50], "the default page size");
    let (_, sizes) = list_all(&e, &format!("{DEVICES}?$top=999")).await;
    assert_eq!(sizes, [250]);
    let first = call(&e, "GET", &format!("{DEVICES}?$top=10"), None).await;
    assert_eq!(
        first.json["@odata.context"],
        "https://graph.microsoft.com/beta/$metadata#deviceManagement/deviceManagementScripts('s')/deviceRunStates"
    );
    let link = first.json["@odata.nextLink"].as_str().unwrap();
    assert!(link.starts_with(&format!("http://localhost{DEVICES}?$top=10&$skiptoken=")));
}

#[tokio::test]
async fn filters_on_the_run_state_and_selects_properties() {
    let e = Emulator::new();
    create_devices(
        &e,
        30,
        |i| if i % 3 == 0 { "scriptError" } else { "success" },
    )
    .await;
    let url = format!("{DEVICES}?$filter=runState%20eq%20'scriptError'&$top=4&$select=runState");
    let (items, sizes) = list_all(&e, &url).await;
    assert_eq!(sizes, [4, 4, 2]);
    for item in &items {
        assert_eq!(item["runState"], "scriptError");
        let keys: Vec<_> = item.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["@odata.type", "id", "runState"]);
    }
    let all = call(
        &e,
        "GET",
        &format!("{DEVICES}?$filter=runState%20eq%20'fail'"),
        None,
    )
    .await;
    assert_eq!(all.json["value"], json!([]));
    for bad in [
        "$filter=errorCode%20eq%203",
        "$filter=runState+eq+'nope'",
        "$filter=startswith(runState,'s')",
        "$select=nope",
        "$top=1000",
        "$orderby=id",
    ] {
        let a = call(&e, "GET", &format!("{DEVICES}?{bad}"), None).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(a.json["error"]["code"], "BadRequest", "{bad}");
    }
}

#[tokio::test]
async fn next_links_are_absolute_on_the_emulators_own_address() {
    let e = Emulator::new();
    create_devices(&e, 3, |_| "fail").await;
    let running = e.spawn(([127, 0, 0, 1], 0).into()).await.unwrap();
    let url = format!("http://{}{DEVICES}?$top=2", running.addr());
    let client = reqwest::Client::new();
    let get = |url: String| {
        let client = client.clone();
        async move {
            let bytes = client
                .get(url)
                .bearer_auth("t")
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            serde_json::from_slice::<Value>(&bytes).unwrap()
        }
    };
    let page = get(url).await;
    let next = page["@odata.nextLink"].as_str().unwrap();
    assert!(
        next.starts_with(&format!("http://{}{DEVICES}?", running.addr())),
        "{next}"
    );
    let rest = get(next.to_owned()).await;
    assert_eq!(rest["value"].as_array().unwrap().len(), 1);
    assert!(rest.get("@odata.nextLink").is_none());
    running.stop().await;
}

#[tokio::test]
async fn delete_removes_and_a_second_delete_is_404() {
    let e = Emulator::new();
    let id = create_user(&e, json!({})).await.json["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let item = format!("{USERS}/{id}");
    let nested = format!("{item}/deviceRunStates");
    assert_eq!(
        call(&e, "POST", &nested, Some(json!({}))).await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        call(&e, "DELETE", &item, None).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        call(&e, "GET", &item, None).await.status,
        StatusCode::NOT_FOUND
    );
    let again = call(&e, "DELETE", &item, None).await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    assert_eq!(again.json["error"]["code"], "ResourceNotFound");
    assert_eq!(
        call(&e, "GET", &nested, None).await.status,
        StatusCode::NOT_FOUND
    );
}

// $batch.

async fn batch(e: &Emulator, requests: Value) -> Answer {
    call(
        e,
        "POST",
        "/beta/$batch",
        Some(json!({ "requests": requests })),
    )
    .await
}

fn post_item(id: &str, url: &str, body: Value) -> Value {
    json!({"id": id, "method": "POST", "url": url,
           "headers": {"Content-Type": "application/json"}, "body": body})
}

/// The batch's responses by id, and their order.
fn by_id(a: &Answer) -> (std::collections::HashMap<String, Value>, Vec<String>) {
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    let responses = a.json["responses"].as_array().unwrap();
    let order: Vec<String> = responses
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    let map = responses
        .iter()
        .map(|r| (r["id"].as_str().unwrap().to_owned(), r.clone()))
        .collect();
    (map, order)
}

const DEVICES_URL: &str = "/deviceManagement/deviceManagementScripts/s/deviceRunStates";

#[tokio::test]
async fn a_batch_runs_every_item_and_answers_out_of_order() {
    let e = Emulator::new();
    let items: Vec<Value> = (1..=3)
        .map(|i| post_item(&i.to_string(), DEVICES_URL, json!({"errorCode": i})))
        .chain([json!({"id": "4", "method": "GET", "url": "deviceManagement/deviceManagementScripts/s/deviceRunStates?$top=1"})])
        .collect();
    let a = batch(&e, Value::Array(items)).await;
    let (responses, order) = by_id(&a);
    assert_eq!(order, ["4", "3", "2", "1"], "not in request order");
    for i in 1..=3 {
        let r = &responses[&i.to_string()];
        assert_eq!(r["status"], 201);
        assert_eq!(r["body"]["errorCode"], i);
        assert!(
            r["headers"]["Content-Type"]
                .as_str()
                .unwrap()
                .starts_with("application/json")
        );
    }
    assert_eq!(responses["4"]["status"], 200);
    assert_eq!(e.requests().len(), 1, "the envelope is one request");
    let (items, _) = list_all(&e, DEVICES).await;
    assert_eq!(items.len(), 3);
}

#[tokio::test]
async fn a_failed_dependency_is_424() {
    let e = Emulator::new();
    let user = create_user(&e, json!({})).await.json["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let users = "/deviceManagement/deviceShellScripts/s/userRunStates";
    let nested = format!("{users}/{user}/deviceRunStates");
    let mut bad = post_item("bad", DEVICES_URL, json!({"runState": "nope"}));
    bad["dependsOn"] = json!([]);
    let mut after_bad = post_item("after-bad", DEVICES_URL, json!({}));
    after_bad["dependsOn"] = json!(["bad"]);
    let mut chained = post_item("chained", DEVICES_URL, json!({}));
    chained["dependsOn"] = json!(["after-bad"]);
    let mut after_good = post_item("after-good", &nested, json!({}));
    after_good["dependsOn"] = json!(["good"]);
    let good = post_item("good", DEVICES_URL, json!({}));
    // Dependants may come before what they depend on.
    let a = batch(&e, json!([after_good, chained, after_bad, bad, good])).await;
    let (r, _) = by_id(&a);
    assert_eq!(r["bad"]["status"], 400);
    assert_eq!(r["after-bad"]["status"], 424);
    assert_eq!(r["after-bad"]["body"]["error"]["code"], "FailedDependency");
    assert_eq!(r["chained"]["status"], 424);
    assert_eq!(r["good"]["status"], 201);
    assert_eq!(r["after-good"]["status"], 201);
    let (items, _) = list_all(&e, DEVICES).await;
    assert_eq!(items.len(), 1, "failed and dependent items applied nothing");
}

#[tokio::test]
async fn faults_apply_to_batch_items_with_retry_after() {
    let e = Emulator::new();
    e.inject(
        Fault::status(429)
            .method("POST")
            .path_contains("deviceRunStates")
            .retry_after("3")
            .times(2),
    );
    let items: Vec<Value> = (0..5)
        .map(|i| post_item(&format!("i{i}"), DEVICES_URL, json!({})))
        .collect();
    let (r, _) = by_id(&batch(&e, Value::Array(items)).await);
    let throttled: Vec<_> = r.values().filter(|v| v["status"] == 429).collect();
    assert_eq!(throttled.len(), 2);
    for t in throttled {
        assert_eq!(t["headers"]["Retry-After"], "3");
        assert!(t["body"]["error"]["code"].is_string());
    }
    assert_eq!(r.values().filter(|v| v["status"] == 201).count(), 3);
    assert_eq!(e.answered(429), 2, "items count");
    assert_eq!(e.answered(201), 3);
    assert_eq!(e.answered(200), 1, "the envelope");
    assert_eq!(e.throttled_count(), 0, "faults are not the write limit");
    assert_eq!(list_all(&e, DEVICES).await.0.len(), 3);
    // A fault naming $batch answers the whole envelope.
    e.inject(Fault::status(503).path_contains("$batch").times(1));
    let a = batch(&e, json!([post_item("x", DEVICES_URL, json!({}))])).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(list_all(&e, DEVICES).await.0.len(), 3);
}

#[tokio::test]
async fn client_ids_and_the_write_limit_apply_to_batch_items() {
    let e = Emulator::new();
    e.set_client_ids(ClientIds::Honour);
    let a = batch(
        &e,
        json!([
            post_item("a", DEVICES_URL, json!({"id": "same"})),
            post_item("b", DEVICES_URL, json!({"id": "same"})),
        ]),
    )
    .await;
    let (r, _) = by_id(&a);
    let mut statuses = vec![r["a"]["status"].as_u64(), r["b"]["status"].as_u64()];
    statuses.sort();
    assert_eq!(statuses, [Some(201), Some(409)]);
    e.set_client_ids(ClientIds::Reject);
    let (r, _) = by_id(&batch(&e, json!([post_item("c", DEVICES_URL, json!({"id": "x"}))])).await);
    assert_eq!(r["c"]["status"], 400);
    e.set_client_ids(ClientIds::Ignore);
    e.set_write_limit(Some((2, Duration::from_secs(60))));
    let items: Vec<Value> = (0..3)
        .map(|i| post_item(&format!("w{i}"), DEVICES_URL, json!({})))
        .collect();
    let (r, _) = by_id(&batch(&e, Value::Array(items)).await);
    let over: Vec<_> = r.values().filter(|v| v["status"] == 429).collect();
    assert_eq!(over.len(), 1, "{r:?}");
    assert!(
        over[0]["headers"]["Retry-After"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    assert_eq!(e.throttled_count(), 1);
}

#[tokio::test]
async fn malformed_batches_are_400() {
    let e = Emulator::new();
    let item = |id: &str| post_item(id, DEVICES_URL, json!({}));
    let many: Vec<Value> = (0..21).map(|i| item(&i.to_string())).collect();
    let mut cycle_a = item("a");
    cycle_a["dependsOn"] = json!(["b"]);
    let mut cycle_b = item("b");
    cycle_b["dependsOn"] = json!(["a"]);
    let mut unknown_dep = item("a");
    unknown_dep["dependsOn"] = json!(["zzz"]);
    let mut self_dep = item("a");
    self_dep["dependsOn"] = json!(["a"]);
    let bad = [
        json!([]),
        Value::Array(many),
        json!([item("a"), item("a")]),
        json!([{"method": "GET", "url": DEVICES_URL}]),
        json!([{"id": "", "method": "GET", "url": DEVICES_URL}]),
        json!([{"id": "a", "method": "TRACE", "url": DEVICES_URL}]),
        json!([{"id": "a", "method": "GET"}]),
        json!([{"id": "a", "method": "GET", "url": format!("https://graph.microsoft.com/beta{DEVICES_URL}")}]),
        json!([{"id": "a", "method": "POST", "url": DEVICES_URL, "body": {}}]),
        json!([{"id": "a", "method": "GET", "url": DEVICES_URL, "headers": []}]),
        json!([cycle_a, cycle_b]),
        json!([unknown_dep]),
        json!([self_dep]),
    ];
    for requests in bad {
        let a = batch(&e, requests.clone()).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{requests}");
        assert_eq!(a.json["error"]["code"], "BadRequest");
    }
    let encoded = call(&e, "POST", "/beta/%24batch", Some(json!({"requests": []}))).await;
    assert_eq!(
        encoded.status,
        StatusCode::BAD_REQUEST,
        "served, and refused"
    );
    let not_json = call(&e, "POST", "/beta/$batch", None).await;
    assert_eq!(not_json.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        call(&e, "GET", "/beta/$batch", None).await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(list_all(&e, DEVICES).await.0.len(), 0, "nothing applied");
    // 20 is allowed; an item's bad url is that item's 400.
    let mut twenty: Vec<Value> = (0..19).map(|i| item(&i.to_string())).collect();
    twenty.push(json!({"id": "odd", "method": "GET", "url": "/deviceManagement/nope"}));
    let (r, _) = by_id(&batch(&e, Value::Array(twenty)).await);
    assert_eq!(r.len(), 20);
    assert_eq!(r["odd"]["status"], 400);
}
