//! Sends each call to the gRPC service its path names (`/package.Service/Method`);
//! a path that names no service is answered UNIMPLEMENTED, as tonic's router
//! does (whose `router` feature would bring in axum).

use std::{
    collections::HashMap,
    convert::Infallible,
    pin::Pin,
    sync::{Arc, OnceLock},
};

use http::{Request, Response};
use tonic::{Status, body::Body, server::NamedService};
use tower::{Service, ServiceExt, util::BoxCloneSyncService};

type Route = BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>;

/// The gRPC services by name; cheap to clone.
#[derive(Clone, Default)]
pub struct Routes {
    services: Arc<HashMap<&'static str, Route>>,
}

impl Routes {
    /// Adds `service` under its name.
    pub fn add_service<S>(mut self, service: S) -> Self
    where
        S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        Arc::make_mut(&mut self.services).insert(S::NAME, BoxCloneSyncService::new(service));
        self
    }

    /// Adds a service built on its first call: reflection's decoded
    /// descriptor sets (a few hundred KB) are not kept by a gateway nobody
    /// asks. `build` answering `None` makes every call INTERNAL.
    pub fn add_lazy<S>(mut self, build: impl Fn() -> Option<S> + Send + Sync + 'static) -> Self
    where
        S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        let built: Arc<OnceLock<Option<S>>> = Arc::default();
        let build = Arc::new(build);
        let route = tower::service_fn(move |request: Request<Body>| {
            let service = built.get_or_init(|| build()).clone();
            async move {
                match service {
                    Some(service) => service.oneshot(request).await,
                    None => Ok(Status::internal("this service could not be built").into_http()),
                }
            }
        });
        Arc::make_mut(&mut self.services).insert(S::NAME, BoxCloneSyncService::new(route));
        self
    }
}

/// The service name of a gRPC path, e.g. `grpc.health.v1.Health`.
fn service_name(path: &str) -> Option<&str> {
    let (name, method) = path.strip_prefix('/')?.split_once('/')?;
    (!name.is_empty() && !method.is_empty()).then_some(name)
}

type RouteFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

impl<B> Service<Request<B>> for Routes
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = RouteFuture;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> RouteFuture {
        let route = service_name(request.uri().path()).and_then(|name| self.services.get(name));
        match route {
            Some(route) => Box::pin(route.clone().oneshot(request.map(Body::new))),
            None => Box::pin(std::future::ready(Ok(
                Status::unimplemented("").into_http::<Body>()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone)]
    struct Named;

    impl NamedService for Named {
        const NAME: &'static str = "a.v1.Named";
    }

    impl Service<Request<Body>> for Named {
        type Response = Response<Body>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Response<Body>, Infallible>>;

        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Infallible>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: Request<Body>) -> Self::Future {
            let status = Status::ok(request.uri().path().to_owned());
            std::future::ready(Ok(status.into_http::<Body>()))
        }
    }

    async fn answer(routes: &Routes, path: &str) -> (String, String) {
        let request = Request::builder().uri(path).body(Body::empty()).unwrap();
        let Ok(response) = routes.clone().oneshot(request).await;
        let header = |name| {
            response
                .headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default()
        };
        (header("grpc-status"), header("grpc-message"))
    }

    #[tokio::test]
    async fn a_call_reaches_the_service_its_path_names() {
        let routes = Routes::default().add_service(Named);
        assert_eq!(
            answer(&routes, "/a.v1.Named/Get").await,
            ("0".to_owned(), "/a.v1.Named/Get".to_owned())
        );
        for path in [
            "/a.v1.Other/Get",
            "/a.v1.Named/",
            "/a.v1.Named",
            "/",
            "//Get",
        ] {
            assert_eq!(answer(&routes, path).await.0, "12", "{path}");
        }
    }

    #[tokio::test]
    async fn a_lazy_service_is_built_once_on_its_first_call() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let built = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&built);
        let routes = Routes::default().add_lazy(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            Some(Named)
        });
        assert_eq!(built.load(Ordering::SeqCst), 0);
        for _ in 0..2 {
            assert_eq!(answer(&routes, "/a.v1.Named/Get").await.0, "0");
        }
        assert_eq!(built.load(Ordering::SeqCst), 1);
        let broken = Routes::default().add_lazy(|| None::<Named>);
        assert_eq!(answer(&broken, "/a.v1.Named/Get").await.0, "13");
    }
}
