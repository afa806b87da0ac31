//! The List RPCs (AIP-132/158): one Graph page per call, behind a sealed
//! page token.

use prost_types::FieldMask;
use tonic::{Status, metadata::MetadataMap};

use super::{RunStateApi, status};
use crate::convert::{
    FieldViolation, Invalid,
    names::{Id, Parent},
    page_token::Binding,
    query::{self, Filterable},
    resources::Resource,
};

/// The fields of a list request, before validation.
pub(super) struct List<'a, P> {
    /// Names the RPC a page token is bound to.
    pub rpc: &'static str,
    pub parent: Result<P, Invalid>,
    pub page_size: i32,
    pub page_token: &'a str,
    pub filter: &'a str,
    pub filterable: Filterable,
    pub read_mask: Option<&'a FieldMask>,
}

/// Records a violation on `field` when `result` is an error.
pub(super) fn check<T>(
    errors: &mut Vec<FieldViolation>,
    field: &str,
    result: Result<T, Invalid>,
) -> Option<T> {
    result
        .map_err(|why| errors.push(FieldViolation::new(field, why)))
        .ok()
}

/// A page: the resources and the token of the next page (empty at the end).
pub(super) struct Listed<R> {
    pub items: Vec<R>,
    pub next_page_token: String,
    pub graph_request_id: Option<String>,
}

impl RunStateApi {
    pub(super) async fn list<P: Parent, R: Resource>(
        &self,
        metadata: &MetadataMap,
        l: List<'_, P>,
    ) -> Result<Listed<R>, Status> {
        let mut errors = Vec::new();
        let parent = check(&mut errors, "parent", l.parent);
        let top = check(&mut errors, "page_size", query::page_size(l.page_size));
        let filter = check(&mut errors, "filter", query::filter(l.filter, l.filterable));
        let select = query::select(l.read_mask, R::WRITABLE)
            .map_err(|e| errors.extend(e))
            .ok();
        let (Some(parent), Some(top), Some(filter), Some(select)) = (parent, top, filter, select)
        else {
            return Err(status::invalid_argument(errors));
        };
        let collection = parent.collection_path();
        let binding = Binding {
            rpc: l.rpc,
            collection: &collection,
            filter: filter.as_deref().unwrap_or_default(),
            select: select.as_deref().unwrap_or_default(),
        };
        let query = if l.page_token.is_empty() {
            query::first_page(top, filter.as_deref(), select.as_deref())
        } else {
            self.page_tokens
                .open(&binding, l.page_token)
                .map(|next| query::next_page(&next, top))
                .map_err(|why| {
                    status::invalid_argument(vec![FieldViolation::new("page_token", why)])
                })?
        };
        let caller = self.caller(metadata).await?;
        let call = caller.call();
        self.within(call.deadline, async {
            let reply = self
                .engine
                .list::<R::Graph>(&collection, &query, &call)
                .await
                .map_err(|e| self.graph_status(e))?;
            let mut items = Vec::with_capacity(reply.value.value.len());
            for graph in reply.value.value {
                let id = R::graph_id(&graph)
                    .ok_or_else(|| Status::internal("Graph listed an entity without an id"))
                    .and_then(|id| {
                        Id::parse(id).map_err(|why| {
                            Status::internal(format!("Graph listed an entity whose id {why}"))
                        })
                    })?;
                items.push(R::from_graph(graph, parent.child_name(id.as_str())));
            }
            let next_page_token = match reply.value.next_link {
                Some(link) => self
                    .page_tokens
                    .seal(&binding, &link, self.engine.root())
                    .map_err(|e| Status::internal(e.to_string()))?,
                None => String::new(),
            };
            Ok(Listed {
                items,
                next_page_token,
                graph_request_id: reply.request_id,
            })
        })
        .await
    }
}
