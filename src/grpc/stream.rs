//! `StreamCreateScriptDeviceStates`: a bidirectional stream of creates.
//!
//! Each request is one create, answered by one response naming its index
//! and `request_id`, in completion order. Backpressure: the gateway reads
//! the next request only while fewer than `stream_window` items are held
//! (being created, or answered but not yet taken by the caller), so a
//! sender faster than Graph waits on HTTP/2 flow control instead of
//! growing the gateway's memory.

use std::sync::Arc;

use tokio::{
    sync::{Semaphore, mpsc},
    time::Instant,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming, metadata::MetadataMap};

use super::{
    RunStateApi,
    batch::rpc_status,
    context,
    ops::{Create, fingerprint},
};
use crate::convert::names::DeviceStateParent;
use crate::pb::{
    StreamCreateScriptDeviceStatesRequest as Item,
    StreamCreateScriptDeviceStatesResponse as Answer, stream_create_script_device_states_response,
};

/// The response stream of `StreamCreateScriptDeviceStates`.
pub type AnswerStream = ReceiverStream<Result<Answer, Status>>;

/// What every item of one stream shares.
struct Feed {
    /// A handle on the service: each item is one `CreateScriptDeviceState`
    /// (validation, request-id records, client ids, write budget).
    api: RunStateApi,
    /// The caller's `authorization` only: each item gets the default deadline.
    metadata: MetadataMap,
    /// The caller's deadline for the whole stream, if it gave one.
    deadline: Option<Instant>,
}

impl RunStateApi {
    pub(super) async fn stream_create_device_states(
        &self,
        request: Request<Streaming<Item>>,
    ) -> Result<Response<AnswerStream>, Status> {
        let (metadata, _, inbound) = request.into_parts();
        // Refuse a stream without a token at once, not item by item.
        self.authorize(&metadata).await?;
        let mut item_metadata = MetadataMap::new();
        if let Some(value) = metadata.get("authorization") {
            item_metadata.insert("authorization", value.clone());
        }
        let window = self.stream_window;
        let (tx, rx) = mpsc::channel(window);
        let feed = Arc::new(Feed {
            api: self.clone(),
            metadata: item_metadata,
            deadline: context::grpc_timeout(&metadata).map(|t| Instant::now() + t),
        });
        tokio::spawn(pump(inbound, tx, feed, window));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Reads requests while the window has room, creating each in its own task.
async fn pump(
    mut inbound: Streaming<Item>,
    tx: mpsc::Sender<Result<Answer, Status>>,
    feed: Arc<Feed>,
    window: usize,
) {
    let permits = Arc::new(Semaphore::new(window));
    let mut index: u64 = 0;
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = tx.closed() => break,
        };
        let next = tokio::select! {
            m = inbound.message() => m,
            _ = tx.closed() => break,
        };
        let item = match next {
            Ok(Some(item)) => item,
            Ok(None) => break,
            Err(status) => {
                let _ = tx.send(Err(status)).await;
                break;
            }
        };
        let (tx, feed) = (tx.clone(), feed.clone());
        tokio::spawn(async move {
            let answer = create(&feed, index, item).await;
            // The permit is held until the answer is queued: answers the
            // caller has not read count against the window too.
            let _ = tx.send(Ok(answer)).await;
            drop(permit);
        });
        index += 1;
    }
    // Every item read is answered before the stream ends.
    let _ = permits.acquire_many(window as u32).await;
}

async fn create(feed: &Feed, index: u64, item: Item) -> Answer {
    use stream_create_script_device_states_response::Result as Outcome;
    let c = Create {
        fingerprint: fingerprint(&item, &item.request_id),
        parent: DeviceStateParent::parse(&item.parent),
        resource: item.script_device_state.clone(),
        id_field: "script_device_state_id",
        id: &item.script_device_state_id,
        request_id: &item.request_id,
    };
    let work = feed.api.create(&feed.metadata, c);
    let result = match feed.deadline {
        None => work.await,
        Some(d) => tokio::time::timeout_at(d, work)
            .await
            .unwrap_or_else(|_| Err(feed.api.deadline_exceeded())),
    };
    Answer {
        index,
        request_id: item.request_id.clone(),
        result: Some(match result {
            Ok(state) => Outcome::ScriptDeviceState(state.into_inner()),
            Err(s) => Outcome::Status(rpc_status(&s)),
        }),
    }
}
