//! The Delete RPCs (AIP-135): Graph DELETE `{name}`.

use http::StatusCode;
use tonic::{Response, Status, metadata::MetadataMap};

use super::{RunStateApi, ops::respond, status};
use crate::convert::{FieldViolation, Invalid, names::ResourcePath};
use crate::graph::GraphError;

impl RunStateApi {
    /// DELETE `{name}`; with `allow_missing`, a missing state is OK.
    pub(super) async fn delete<N: ResourcePath>(
        &self,
        metadata: &MetadataMap,
        name: &str,
        parse: fn(&str) -> Result<N, Invalid>,
        allow_missing: bool,
    ) -> Result<Response<()>, Status> {
        let name = parse(name)
            .map_err(|why| status::invalid_argument(vec![FieldViolation::new("name", why)]))?;
        let caller = self.caller(metadata).await?;
        let call = caller.call();
        self.within(call.deadline, async {
            match self.engine.delete(name.graph_path(), &call).await {
                Ok(request_id) => Ok(respond((), request_id)),
                Err(GraphError::Status(e))
                    if e.status == StatusCode::NOT_FOUND && allow_missing =>
                {
                    Ok(respond((), e.request_id))
                }
                Err(e) => Err(self.graph_status(e)),
            }
        })
        .await
    }
}
