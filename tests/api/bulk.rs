//! Batch and Stream creates: `$batch` groups, per-item throttling and
//! failures in place, and a stream through a slow Graph.

use std::{collections::HashSet, time::Duration};

use runstate_emulator::Fault;
use runstate_gateway::pb::{
    BatchCreateComplianceScriptDeviceStatesRequest, BatchCreateScriptDeviceStatesRequest,
    ComplianceScriptDeviceState, CreateComplianceScriptDeviceStateRequest,
    CreateScriptDeviceStateRequest, ListScriptDeviceStatesRequest, RunState, ScriptDeviceState,
    StreamCreateScriptDeviceStatesRequest, compliance_script_device_state_result,
    script_device_state_result, stream_create_script_device_states_response,
};
use tonic::Code;

use crate::helpers::{TestApp, assert_violation, spawn_app, spawn_app_with};

fn create(parent: &str, error_code: i32, request_id: &str) -> CreateScriptDeviceStateRequest {
    CreateScriptDeviceStateRequest {
        parent: parent.into(),
        script_device_state: Some(ScriptDeviceState {
            run_state: RunState::Success as i32,
            error_code,
            ..Default::default()
        }),
        request_id: request_id.into(),
        ..Default::default()
    }
}

/// Every device state under `parent`, following every page.
async fn list_all(app: &mut TestApp, parent: &str) -> Vec<ScriptDeviceState> {
    let mut all = Vec::new();
    let mut token = String::new();
    for _ in 0..1000 {
        let page = app
            .client
            .list_script_device_states(ListScriptDeviceStatesRequest {
                parent: parent.into(),
                page_size: 999,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        all.extend(page.script_device_states);
        token = page.next_page_token;
        if token.is_empty() {
            return all;
        }
    }
    panic!("the list never ended");
}

#[tokio::test]
async fn a_thousand_items_with_throttling_and_failures_land_once_each_in_order() {
    // The gateway's own write budget (200/20s by default) would pace 1,000
    // writes over 100 s: this test is about Graph's per-item throttling.
    let mut app = spawn_app_with(&["--graph-token", "t", "--write-budget", "off"]).await;
    let parent = "deviceManagementScripts/s1";
    // Device states under a user state that does not exist fail for good.
    let missing = "deviceManagementScripts/s1/userRunStates/missing";
    let failing: HashSet<usize> = [0, 7, 333, 500, 999].into();
    let requests: Vec<_> = (0..1000)
        .map(|i| {
            let p = if failing.contains(&i) {
                missing
            } else {
                parent
            };
            create(p, i as i32, &uuid::Uuid::new_v4().to_string())
        })
        .collect();
    // Graph throttles 150 of the item creates, whichever come first.
    app.graph.inject(
        Fault::status(429)
            .path_contains("deviceManagementScripts/s1/deviceRunStates")
            .retry_after("1")
            .times(150),
    );
    let results = app
        .client
        .batch_create_script_device_states(BatchCreateScriptDeviceStatesRequest {
            parent: String::new(),
            requests: requests.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results.len(), 1000);
    let mut created = HashSet::new();
    for (i, r) in results.iter().enumerate() {
        match r.result.as_ref().unwrap() {
            script_device_state_result::Result::ScriptDeviceState(s) => {
                assert!(!failing.contains(&i), "item {i} should have failed");
                // Results are in request order: each carries its own error_code.
                assert_eq!(s.error_code, i as i32);
                assert_eq!(s.name, format!("{parent}/deviceRunStates/{}", s.id));
                assert!(created.insert(s.id.clone()), "{} twice", s.id);
            }
            script_device_state_result::Result::Status(st) => {
                assert!(failing.contains(&i), "item {i} failed: {st:?}");
                assert_eq!(st.code, Code::NotFound as i32, "{st:?}");
            }
        }
    }
    assert_eq!(created.len(), 995);

    // Sent as $batch POSTs of at most 20; some items were throttled and re-sent.
    let batches: Vec<_> = app
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/$batch"))
        .collect();
    assert!(batches.len() >= 50, "{} batches", batches.len());
    for b in &batches {
        assert_eq!(b.method, "POST");
        let n = b.json()["requests"].as_array().map_or(0, Vec::len);
        assert!((1..=20).contains(&n), "{n} items in one batch");
    }
    assert_eq!(app.graph.answered(429), 150);

    // Graph holds exactly the created states, each once.
    let stored = list_all(&mut app, parent).await;
    let stored_ids: Vec<_> = stored.iter().map(|s| s.id.clone()).collect();
    let unique: HashSet<_> = stored_ids.iter().cloned().collect();
    assert_eq!(stored_ids.len(), unique.len(), "a state was stored twice");
    assert_eq!(unique, created);

    // The same batch again (a caller's retry): the request ids find the
    // first copies; nothing new is stored.
    let again = app
        .client
        .batch_create_script_device_states(BatchCreateScriptDeviceStatesRequest {
            parent: String::new(),
            requests,
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    for (i, r) in again.iter().enumerate() {
        if let Some(script_device_state_result::Result::ScriptDeviceState(s)) = &r.result {
            assert_eq!(s.error_code, i as i32);
            assert!(created.contains(&s.id), "item {i} created anew");
        }
    }
    assert_eq!(list_all(&mut app, parent).await.len(), 995);
}

#[tokio::test]
async fn compliance_batches_share_a_parent() {
    let mut app = spawn_app().await;
    let requests: Vec<_> = (0..25)
        .map(|i| CreateComplianceScriptDeviceStateRequest {
            parent: if i % 2 == 0 {
                String::new()
            } else {
                "deviceComplianceScripts/c1".into()
            },
            compliance_script_device_state: Some(ComplianceScriptDeviceState {
                detection_state: RunState::Fail as i32,
                script_output: Some(format!("out {i}")),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    let results = app
        .client
        .batch_create_compliance_script_device_states(
            BatchCreateComplianceScriptDeviceStatesRequest {
                parent: "deviceComplianceScripts/c1".into(),
                requests,
            },
        )
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results.len(), 25);
    for (i, r) in results.iter().enumerate() {
        let Some(compliance_script_device_state_result::Result::ComplianceScriptDeviceState(s)) =
            &r.result
        else {
            panic!("item {i}: {r:?}");
        };
        assert_eq!(
            s.script_output.as_deref(),
            Some(format!("out {i}").as_str())
        );
        assert!(
            s.name
                .starts_with("deviceComplianceScripts/c1/deviceRunStates/")
        );
    }
    let batches = app
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/$batch"))
        .count();
    assert_eq!(batches, 2);
}

#[tokio::test]
async fn malformed_batches_are_refused_whole_and_never_sent() {
    let mut app = spawn_app().await;
    let ok = create("deviceManagementScripts/s1", 0, "");
    let rid = uuid::Uuid::new_v4().to_string();
    let cases: Vec<(BatchCreateScriptDeviceStatesRequest, &str)> = vec![
        (Default::default(), "requests"),
        (
            BatchCreateScriptDeviceStatesRequest {
                parent: String::new(),
                requests: vec![ok.clone(); 1001],
            },
            "requests",
        ),
        (
            BatchCreateScriptDeviceStatesRequest {
                parent: "deviceShellScripts/other".into(),
                requests: vec![ok.clone()],
            },
            "requests[0].parent",
        ),
        (
            BatchCreateScriptDeviceStatesRequest {
                parent: "../../x".into(),
                requests: vec![ok.clone()],
            },
            "parent",
        ),
        (
            BatchCreateScriptDeviceStatesRequest {
                parent: String::new(),
                requests: vec![ok.clone(), create("deviceManagementScripts/s1/../x", 0, "")],
            },
            "requests[1].parent",
        ),
        (
            BatchCreateScriptDeviceStatesRequest {
                parent: String::new(),
                requests: vec![create("deviceManagementScripts/s1", 0, "not-a-uuid")],
            },
            "requests[0].request_id",
        ),
        (
            BatchCreateScriptDeviceStatesRequest {
                parent: String::new(),
                requests: vec![
                    create("deviceManagementScripts/s1", 0, &rid),
                    create("deviceManagementScripts/s1", 1, &rid),
                ],
            },
            "requests[1].request_id",
        ),
        (
            BatchCreateScriptDeviceStatesRequest {
                parent: String::new(),
                requests: vec![CreateScriptDeviceStateRequest {
                    script_device_state_id: "a/b".into(),
                    ..ok.clone()
                }],
            },
            "requests[0].script_device_state_id",
        ),
        (
            BatchCreateScriptDeviceStatesRequest {
                parent: String::new(),
                requests: vec![CreateScriptDeviceStateRequest {
                    script_device_state: Some(ScriptDeviceState {
                        run_state: 99,
                        ..Default::default()
                    }),
                    ..ok.clone()
                }],
            },
            "requests[0].script_device_state.run_state",
        ),
    ];
    for (req, field) in cases {
        let err = app
            .client
            .batch_create_script_device_states(req)
            .await
            .unwrap_err();
        assert_violation(&err, field);
    }
    assert_eq!(app.graph.request_count(), 0);
}

#[tokio::test]
async fn a_stream_through_a_slow_graph_answers_every_item_once() {
    let mut app = spawn_app_with(&[
        "--graph-token",
        "t",
        "--stream-max-in-flight",
        "8",
        "--write-budget",
        "off",
    ])
    .await;
    app.graph.set_latency(Duration::from_millis(3));
    let parent = "deviceShellScripts/s9";
    let n = 1000usize;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let feeder = tokio::spawn(async move {
        for i in 0..n {
            let item = StreamCreateScriptDeviceStatesRequest {
                // Every 100th item is malformed: answered with its own status.
                parent: if i % 100 == 50 {
                    "deviceShellScripts/s9/../x".into()
                } else {
                    parent.into()
                },
                script_device_state: Some(ScriptDeviceState {
                    run_state: RunState::Pending as i32,
                    error_code: i as i32,
                    ..Default::default()
                }),
                request_id: uuid::Uuid::new_v4().to_string(),
                ..Default::default()
            };
            if tx.send(item).await.is_err() {
                break;
            }
        }
    });
    let mut answers = app
        .client
        .stream_create_script_device_states(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut seen = HashSet::new();
    let mut ok_ids = HashSet::new();
    let mut failed = 0;
    while let Some(answer) = tokio::time::timeout(Duration::from_secs(60), answers.message())
        .await
        .expect("answers keep coming")
        .unwrap()
    {
        let index = answer.index as usize;
        assert!(index < n);
        assert!(seen.insert(index), "index {index} answered twice");
        assert!(uuid::Uuid::try_parse(&answer.request_id).is_ok());
        match answer.result.unwrap() {
            stream_create_script_device_states_response::Result::ScriptDeviceState(s) => {
                assert_eq!(s.error_code, index as i32);
                assert!(ok_ids.insert(s.id));
            }
            stream_create_script_device_states_response::Result::Status(st) => {
                assert_eq!(index % 100, 50);
                assert_eq!(st.code, Code::InvalidArgument as i32);
                failed += 1;
            }
        }
    }
    feeder.await.unwrap();
    assert_eq!(seen.len(), n);
    assert_eq!(failed, 10);
    let stored: HashSet<_> = list_all(&mut app, parent)
        .await
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(stored, ok_ids);
}

/// A stream is answered item by item while the caller is still sending, and
/// its whole feed may exceed `--max-request-bytes` (a limit per message).
#[tokio::test]
async fn a_stream_is_answered_while_the_caller_still_sends() {
    let mut app = spawn_app_with(&[
        "--graph-token",
        "t",
        "--max-request-bytes",
        "1024",
        "--request-read-timeout",
        "1s",
        "--write-budget",
        "off",
    ])
    .await;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut client = app.client.clone();
    let mut call = Some(tokio::spawn(async move {
        client
            .stream_create_script_device_states(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    }));
    let mut answers = None;
    // 30 items of ~200 bytes: ~6 KB in all, over the 1 KiB message limit,
    // and longer than the read timeout, since each waits for its answer.
    for i in 0..30 {
        let item = StreamCreateScriptDeviceStatesRequest {
            parent: "deviceShellScripts/s10".into(),
            script_device_state: Some(ScriptDeviceState {
                run_state: RunState::Success as i32,
                result_message: Some("x".repeat(150)),
                error_code: i,
                ..Default::default()
            }),
            ..Default::default()
        };
        tx.send(item).await.unwrap();
        if i == 0 {
            tokio::time::sleep(Duration::from_millis(1200)).await;
        }
        if answers.is_none() {
            answers = Some(
                tokio::time::timeout(Duration::from_secs(20), call.take().unwrap())
                    .await
                    .expect("the stream is accepted")
                    .unwrap()
                    .unwrap()
                    .into_inner(),
            );
        }
        let answers = answers.as_mut().unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(20), answers.message())
            .await
            .expect("each item is answered before the stream ends")
            .unwrap()
            .expect("an answer");
        assert_eq!(answer.index, i as u64);
        match answer.result.unwrap() {
            stream_create_script_device_states_response::Result::ScriptDeviceState(s) => {
                assert_eq!(s.error_code, i)
            }
            stream_create_script_device_states_response::Result::Status(st) => {
                panic!("item {i}: {st:?}")
            }
        }
    }
    drop(tx);
    let mut answers = answers.unwrap();
    assert!(answers.message().await.unwrap().is_none());
    assert_eq!(list_all(&mut app, "deviceShellScripts/s10").await.len(), 30);
}

/// A batch of `n` creates under `parent`, each with a fresh request id.
fn batch_with_request_ids(
    parent: &str,
    n: usize,
) -> (Vec<String>, BatchCreateScriptDeviceStatesRequest) {
    let ids: Vec<String> = (0..n).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    let batch = BatchCreateScriptDeviceStatesRequest {
        parent: parent.into(),
        requests: ids
            .iter()
            .enumerate()
            .map(|(i, id)| create("", i as i32, id))
            .collect(),
    };
    (ids, batch)
}

/// POSTs the emulator saw ($batch included).
fn post_count(app: &TestApp) -> usize {
    app.graph
        .requests()
        .iter()
        .filter(|r| r.method == "POST")
        .count()
}

#[tokio::test]
async fn request_ids_make_a_resent_batch_safe_where_graph_ignores_ids() {
    let mut app = spawn_app_with(&["--graph-token", "t", "--write-budget", "off"]).await;
    app.graph
        .set_client_ids(runstate_emulator::ClientIds::Ignore);
    let parent = "deviceManagementScripts/s1";
    let (ids, batch) = batch_with_request_ids(parent, 5);
    let first = app
        .client
        .batch_create_script_device_states(batch.clone())
        .await
        .unwrap()
        .into_inner();
    let posts = post_count(&app);
    let again = app
        .client
        .batch_create_script_device_states(batch)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, again, "a re-sent batch answers as the first did");
    assert_eq!(post_count(&app), posts, "the re-sent batch reached Graph");
    assert_eq!(list_all(&mut app, parent).await.len(), 5);
    // A single create with an item's request id replays the item's answer.
    let single = app
        .client
        .create_script_device_state(create(parent, 3, &ids[3]))
        .await
        .unwrap()
        .into_inner();
    let Some(script_device_state_result::Result::ScriptDeviceState(item)) =
        &first.results[3].result
    else {
        panic!("item 3: {:?}", first.results[3]);
    };
    assert_eq!(&single, item);
    assert_eq!(post_count(&app), posts);
    // The same request id with other content is refused for that item only.
    let reused = app
        .client
        .batch_create_script_device_states(BatchCreateScriptDeviceStatesRequest {
            parent: parent.into(),
            requests: vec![create("", 77, &ids[0]), create("", 8, "")],
        })
        .await
        .unwrap()
        .into_inner();
    let Some(script_device_state_result::Result::Status(s)) = &reused.results[0].result else {
        panic!("reused: {:?}", reused.results[0]);
    };
    assert_eq!(s.code, Code::InvalidArgument as i32);
    assert!(matches!(
        reused.results[1].result,
        Some(script_device_state_result::Result::ScriptDeviceState(_))
    ));
    assert_eq!(list_all(&mut app, parent).await.len(), 6);
}

/// A `$batch` whose answer is lost (Graph applied it, then 504) where Graph
/// ignores ids: every item is UNKNOWN (outcome unknown), never re-sent, and
/// re-sending the batch with the same request ids replays those answers.
#[tokio::test]
async fn a_lost_batch_answer_is_outcome_unknown_and_never_posted_twice() {
    let mut app = spawn_app_with(&["--graph-token", "t", "--write-budget", "off"]).await;
    app.graph
        .set_client_ids(runstate_emulator::ClientIds::Ignore);
    let parent = "deviceManagementScripts/s7";
    app.graph.inject(
        Fault::status(504)
            .method("POST")
            .path_contains("$batch")
            .times(1)
            .after_apply(),
    );
    let (_, batch) = batch_with_request_ids(parent, 3);
    let first = app
        .client
        .batch_create_script_device_states(batch.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.results.len(), 3);
    for (i, r) in first.results.iter().enumerate() {
        let Some(script_device_state_result::Result::Status(s)) = &r.result else {
            panic!("item {i} should be unknown: {r:?}");
        };
        assert_eq!(s.code, Code::Unknown as i32, "item {i}: {s:?}");
        assert!(s.message.contains("may have been applied"), "{s:?}");
    }
    let posts = post_count(&app);
    assert_eq!(posts, 1, "the lost $batch was re-sent");
    assert_eq!(app.graph.fault_count(), 0);
    // Graph did apply it: three entities, and a re-send adds none.
    assert_eq!(list_all(&mut app, parent).await.len(), 3);
    let again = app
        .client
        .batch_create_script_device_states(batch)
        .await
        .unwrap()
        .into_inner();
    for (i, (a, b)) in first.results.iter().zip(&again.results).enumerate() {
        let (
            Some(script_device_state_result::Result::Status(a)),
            Some(script_device_state_result::Result::Status(b)),
        ) = (&a.result, &b.result)
        else {
            panic!("item {i}: {a:?} then {b:?}");
        };
        assert_eq!((a.code, &a.message), (b.code, &b.message), "item {i}");
    }
    assert_eq!(post_count(&app), posts, "the replay reached Graph");
    assert_eq!(list_all(&mut app, parent).await.len(), 3);
}
