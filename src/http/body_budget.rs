//! One memory budget for request bodies, across every connection and stream: a body takes
//! its bytes from it as they arrive, before they are read further, and gives them back once
//! its request is answered (the parsed request lives as long, at about the body's size).
//! Bytes are counted as they arrive rather than as `Content-Length` declares them, so that a
//! client that declares a large body and sends nothing holds nothing.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::AppState;

/// The budget, in KiB.
pub(super) fn budget(bytes: usize) -> Arc<Semaphore> {
    Arc::new(Semaphore::new((bytes / 1024).max(1)))
}

/// The error of a body whose next bytes the budget cannot hold.
#[derive(Debug, thiserror::Error)]
#[error("the request bodies in flight fill the request body memory")]
pub(super) struct BodyMemoryFull;

/// What one request's body holds of the budget, shared by the body and the middleware:
/// released when both are gone.
#[derive(Clone)]
struct Reservation {
    budget: Arc<Semaphore>,
    held: Arc<Mutex<Held>>,
}

#[derive(Default)]
struct Held {
    bytes: u64,
    permit: Option<OwnedSemaphorePermit>,
}

impl Reservation {
    /// Takes `bytes` more from the budget, or fails without waiting.
    fn take(&self, bytes: usize) -> Result<(), BodyMemoryFull> {
        let mut held = self
            .held
            .lock()
            .expect("the reservation lock is never poisoned");
        held.bytes += bytes as u64;
        let needed = held.bytes.div_ceil(1024) as usize;
        let have = held
            .permit
            .as_ref()
            .map_or(0, OwnedSemaphorePermit::num_permits);
        if needed > have {
            let more = u32::try_from(needed - have).map_err(|_| BodyMemoryFull)?;
            let more = self
                .budget
                .clone()
                .try_acquire_many_owned(more)
                .map_err(|_| BodyMemoryFull)?;
            match &mut held.permit {
                Some(permit) => permit.merge(more),
                None => held.permit = Some(more),
            }
        }
        Ok(())
    }
}

/// Counts the request's body against the budget until the request is answered.
pub(super) async fn budget_body(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let reservation = Reservation {
        budget: state.body_memory.clone(),
        held: Arc::default(),
    };
    let request = request.map(|body| {
        Body::new(Budgeted {
            body,
            reservation: reservation.clone(),
            failed: false,
        })
    });
    let response = next.run(request).await;
    drop(reservation);
    response
}

/// A request body that takes each frame's bytes from the budget before handing it on.
struct Budgeted {
    body: Body,
    reservation: Reservation,
    failed: bool,
}

impl http_body::Body for Budgeted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        if self.failed {
            return Poll::Ready(None);
        }
        let frame = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &frame
            && let Some(data) = frame.data_ref()
            && let Err(full) = self.reservation.take(data.len())
        {
            self.failed = true;
            return Poll::Ready(Some(Err(axum::Error::new(full))));
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
