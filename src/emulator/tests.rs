//! Tests of the emulator through its HTTP routes, called in-process.

use std::time::Duration;

use axum::body::Body;
use http::{HeaderMap, Request, StatusCode};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::{ClientIds, Emulator, Fault};

const USERS: &str = "/beta/deviceManagement/deviceShellScripts/s/userRunStates";

/// One answer: status, headers and the body as JSON (`Null` when empty or not JSON).
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    json: Value,
}

async fn call(e: &Emulator, method: &str, path: &str, body: Option<Value>) -> Answer {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", "Bearer t");
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
fn the_write_window_slides() {
    let mut limiter = super::WriteLimiter {
        limit: Some((2, Duration::from_secs(10))),
        ..Default::default()
    };
    let t0 = std::time::Instant::now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    assert!(limiter.admit(at(0)).is_ok());
    assert!(limiter.admit(at(6)).is_ok());
    assert_eq!(limiter.admit(at(9)), Err(Duration::from_secs(1)));
    assert!(
        limiter.admit(at(10)).is_ok(),
        "the first write left the window"
    );
    assert_eq!(limiter.admit(at(15)), Err(Duration::from_secs(1)));
    assert!(limiter.admit(at(16)).is_ok());
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
    for bad in ["", "50", "/5s", "0/5s", "x/5s", "50/0s", "50/five"] {
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
