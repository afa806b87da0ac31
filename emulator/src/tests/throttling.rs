//! Intune's throttling: the limits per app and per tenant, the forms of
//! `Retry-After`, and `$batch` items throttled inside a 200 answer.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

use super::*;
use crate::{Limits, RetryAfter, Scope};

const MINUTE: Duration = Duration::from_secs(60);

/// An unsigned JWT with these claims (the emulator reads, never checks, them).
fn jwt(claims: Value) -> String {
    let part = |v: Value| URL_SAFE_NO_PAD.encode(v.to_string());
    format!(
        "{}.{}.c2ln",
        part(json!({"alg": "RS256", "typ": "JWT"})),
        part(claims)
    )
}

async fn post_as(e: &Emulator, token: &str) -> Answer {
    call_as(e, token, "POST", USERS, Some(json!({}))).await
}

fn message(a: &Answer) -> &str {
    a.json["error"]["message"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn the_tenant_write_limit_counts_every_app_told_apart_by_the_token() {
    let e = Emulator::new();
    e.set_limits(Limits {
        app_writes: Some((2, MINUTE)),
        tenant_writes: Some((3, MINUTE)),
        ..Default::default()
    });
    // v1 tokens name the app in `appid`, v2 tokens in `azp`.
    let a = jwt(json!({"tid": "t1", "appid": "app-a"}));
    let b = jwt(json!({"tid": "t1", "azp": "app-b"}));
    let c = jwt(json!({"tid": "t1", "appid": "app-c"}));
    for _ in 0..2 {
        assert_eq!(post_as(&e, &a).await.status, StatusCode::CREATED);
    }
    let over = post_as(&e, &a).await;
    assert_eq!(over.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        message(&over).contains("application's write limit"),
        "{}",
        over.json
    );
    assert_eq!(post_as(&e, &b).await.status, StatusCode::CREATED);
    // App c has written nothing, but the tenant has had its 3.
    let over = post_as(&e, &c).await;
    assert_eq!(over.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        message(&over).contains("tenant's write limit"),
        "{}",
        over.json
    );
    assert!(over.headers.contains_key("retry-after"));
    // Reads are not writes.
    let read = call_as(&e, &c, "GET", USERS, None).await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(e.throttled_by(Scope::AppWrites), 1);
    assert_eq!(e.throttled_by(Scope::TenantWrites), 1);
    assert_eq!(e.throttled_count(), 2);
    assert_eq!(read.json["value"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn tokens_that_name_no_app_count_as_one_and_issued_tokens_as_their_client() {
    let e = Emulator::new();
    e.set_write_limit(Some((2, MINUTE)));
    assert_eq!(post_as(&e, "static-1").await.status, StatusCode::CREATED);
    assert_eq!(post_as(&e, "static-2").await.status, StatusCode::CREATED);
    assert_eq!(
        post_as(&e, "static-3").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    let no_app = jwt(json!({"tid": "t1", "oid": "someone"}));
    assert_eq!(
        post_as(&e, &no_app).await.status,
        StatusCode::TOO_MANY_REQUESTS,
        "a JWT without appid or azp is the static app too"
    );
    // A token issued here belongs to the client it went to.
    let issued = e
        .router()
        .oneshot(
            Request::post("/tenant-1/oauth2/v2.0/token")
                .header("content-type", "application/x-www-form-urlencoded")
                .body(Body::from(
                    "grant_type=client_credentials&client_id=gateway-app&client_secret=s&scope=https%3A%2F%2Fgraph.microsoft.com%2F.default",
                ))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(issued.status(), StatusCode::OK);
    let body = axum::body::to_bytes(issued.into_body(), usize::MAX)
        .await
        .unwrap();
    let token: Value = serde_json::from_slice(&body).unwrap();
    let token = token["access_token"].as_str().unwrap();
    assert_eq!(e.app_of(token), "gateway-app");
    assert_eq!(post_as(&e, token).await.status, StatusCode::CREATED);
    // App ids from tokens are bounded.
    let long = jwt(json!({"appid": "x".repeat(10_000)}));
    assert_eq!(e.app_of(&long).len(), 128);
}

#[tokio::test]
async fn requests_of_any_kind_are_limited_per_app_and_per_tenant() {
    let e = Emulator::new();
    e.set_limits(Limits {
        app_requests: Some((3, MINUTE)),
        tenant_requests: Some((5, MINUTE)),
        ..Default::default()
    });
    let a = jwt(json!({"appid": "app-a"}));
    let b = jwt(json!({"appid": "app-b"}));
    assert_eq!(
        call_as(&e, &a, "GET", USERS, None).await.status,
        StatusCode::OK
    );
    assert_eq!(post_as(&e, &a).await.status, StatusCode::CREATED);
    assert_eq!(
        call_as(&e, &a, "GET", USERS, None).await.status,
        StatusCode::OK
    );
    let over = call_as(&e, &a, "GET", USERS, None).await;
    assert_eq!(over.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        message(&over).contains("application's request limit"),
        "{}",
        over.json
    );
    for _ in 0..2 {
        assert_eq!(
            call_as(&e, &b, "GET", USERS, None).await.status,
            StatusCode::OK
        );
    }
    let over = post_as(&e, &b).await;
    assert_eq!(over.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        message(&over).contains("tenant's request limit"),
        "{}",
        over.json
    );
    assert_eq!(e.throttled_by(Scope::AppRequests), 1);
    assert_eq!(e.throttled_by(Scope::TenantRequests), 1);
}

#[tokio::test]
async fn retry_after_takes_the_chosen_form() {
    let e = Emulator::new();
    e.set_write_limit(Some((1, Duration::from_secs(30))));
    assert_eq!(e.retry_after(), RetryAfter::Seconds);
    assert_eq!(create_user(&e, json!({})).await.status, StatusCode::CREATED);
    let retry_after = |a: &Answer| {
        assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
        a.headers
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let seconds = retry_after(&create_user(&e, json!({})).await).unwrap();
    assert!(
        (1..=30).contains(&seconds.parse::<u64>().unwrap()),
        "{seconds}"
    );
    e.set_retry_after(RetryAfter::Decimal);
    let decimal = retry_after(&create_user(&e, json!({})).await).unwrap();
    let (whole, tenths) = decimal.split_once('.').unwrap();
    assert_eq!(tenths.len(), 1, "{decimal}");
    assert!(whole.parse::<u64>().unwrap() <= 30, "{decimal}");
    e.set_retry_after(RetryAfter::Zero);
    assert_eq!(
        retry_after(&create_user(&e, json!({})).await).as_deref(),
        Some("0")
    );
    e.set_retry_after(RetryAfter::None);
    assert_eq!(retry_after(&create_user(&e, json!({})).await), None);
    assert_eq!(e.throttled_count(), 4);
}

#[tokio::test]
async fn batch_items_over_a_limit_get_429_inside_a_200_with_their_own_retry_after() {
    let e = Emulator::new();
    e.set_limits(Limits {
        tenant_writes: Some((2, MINUTE)),
        app_requests: Some((4, MINUTE)),
        ..Default::default()
    });
    e.set_retry_after(RetryAfter::Decimal);
    let get = |id: &str| json!({"id": id, "method": "GET", "url": DEVICES_URL});
    let a = batch(
        &e,
        json!([
            post_item("p0", DEVICES_URL, json!({})),
            post_item("p1", DEVICES_URL, json!({})),
            post_item("p2", DEVICES_URL, json!({})),
            get("g0"),
            get("g1"),
            get("g2"),
        ]),
    )
    .await;
    assert!(
        !a.headers.contains_key("retry-after"),
        "the envelope is not throttled"
    );
    let (r, _) = by_id(&a);
    let status = |id: &str| r[id]["status"].as_u64().unwrap();
    assert_eq!(
        ["p0", "p1", "p2", "g0", "g1", "g2"].map(status),
        [201, 201, 429, 200, 200, 429]
    );
    for (id, limit) in [
        ("p2", "tenant's write limit"),
        ("g2", "application's request limit"),
    ] {
        let item = &r[id];
        let text = item["body"]["error"]["message"].as_str().unwrap();
        assert!(text.contains(limit), "{id}: {text}");
        let after = item["headers"]["Retry-After"].as_str().unwrap();
        assert!(after.contains('.'), "{id}: {after}");
    }
    assert_eq!(e.answered(429), 2, "items count");
    e.set_limits(Limits::default());
    assert_eq!(
        list_all(&e, DEVICES).await.0.len(),
        2,
        "429s applied nothing"
    );
}

#[tokio::test]
async fn settings_route_sets_every_limit_and_the_retry_after_form() {
    let e = Emulator::new();
    let put = |body: Value| {
        let e = e.clone();
        async move { call(&e, "PUT", "/_emulator/settings", Some(body)).await }
    };
    let all = json!({
        "tenant_write_limit": {"writes": 400, "seconds": 20},
        "read_limit": {"requests": 2000, "seconds": 20},
        "tenant_read_limit": {"requests": 4000, "seconds": 20},
        "retry_after": "none",
    });
    assert_eq!(put(all).await.status, StatusCode::NO_CONTENT);
    let twenty = Duration::from_secs(20);
    assert_eq!(
        e.limits(),
        Limits {
            app_writes: None,
            tenant_writes: Some((400, twenty)),
            app_requests: Some((2000, twenty)),
            tenant_requests: Some((4000, twenty)),
        }
    );
    assert_eq!(e.retry_after(), RetryAfter::None);
    let shown = call(&e, "GET", "/_emulator/settings", None).await.json;
    assert_eq!(shown["write_limit"], "off");
    assert_eq!(shown["tenant_write_limit"]["writes"], 400);
    assert_eq!(shown["read_limit"]["requests"], 2000);
    assert_eq!(shown["tenant_read_limit"]["seconds"], 20.0);
    assert_eq!(shown["retry_after"], "none");
    assert_eq!(shown["throttled_by"]["tenant_write_limit"], 0);
    // One limit changes; the others stay.
    assert_eq!(
        put(json!({"read_limit": "off"})).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(e.limits().app_requests, None);
    assert_eq!(e.limits().tenant_requests, Some((4000, twenty)));
    for bad in [
        json!({"tenant_write_limit": {"writes": 3, "seconds": 5}, "tenant_read_limit": {"requests": 0, "seconds": 1}}),
        json!({"read_limit": {"requests": 5}}),
        json!({"retry_after": "sometimes"}),
    ] {
        assert!(put(bad.clone()).await.status.is_client_error(), "{bad}");
    }
    assert_eq!(
        e.limits().tenant_writes,
        Some((400, twenty)),
        "nothing changed"
    );
    assert_eq!(e.retry_after(), RetryAfter::None);
}

#[test]
fn the_command_line_sets_each_limit_with_intunes_values_when_bare() {
    use clap::{CommandFactory, Parser};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: crate::Args,
    }
    let parse = |argv: &[&str]| Cli::try_parse_from(argv).map(|c| c.args);
    let none = parse(&["emulator"]).unwrap();
    assert_eq!(
        (
            none.write_limit,
            none.tenant_write_limit,
            none.read_limit,
            none.tenant_read_limit
        ),
        (None, None, None, None)
    );
    assert_eq!(none.retry_after, RetryAfter::Seconds);
    let bare = parse(&[
        "emulator",
        "--write-limit",
        "--tenant-write-limit",
        "--read-limit",
        "--tenant-read-limit",
        "--retry-after",
        "decimal",
    ])
    .unwrap();
    let per_20s = |n| Some((n, Duration::from_secs(20)));
    assert_eq!(bare.write_limit, per_20s(200));
    assert_eq!(bare.tenant_write_limit, per_20s(400));
    assert_eq!(bare.read_limit, per_20s(2000));
    assert_eq!(bare.tenant_read_limit, per_20s(4000));
    assert_eq!(bare.retry_after, RetryAfter::Decimal);
    let chosen = parse(&["emulator", "--read-limit", "5/2s", "--retry-after", "none"]).unwrap();
    assert_eq!(chosen.read_limit, Some((5, Duration::from_secs(2))));
    assert_eq!(chosen.retry_after, RetryAfter::None);
    assert!(parse(&["emulator", "--tenant-write-limit", "0/20s"]).is_err());
    assert!(parse(&["emulator", "--retry-after", "sometimes"]).is_err());
    let help = Cli::command().render_long_help().to_string();
    for text in [
        "--tenant-write-limit",
        "400/20s",
        "--read-limit",
        "2000/20s",
        "--tenant-read-limit",
        "4000/20s",
        "--retry-after",
        "decimal",
        "zero",
        "none",
        "inside the batch's 200",
    ] {
        assert!(help.contains(text), "--help lacks {text:?}:\n{help}");
    }
}
