//! Room for a fresh connection on a full listener (the admin port): the oldest connection
//! with no request in progress is closed. An idle socket, or a slowloris still sending its
//! head, has no request in progress. Oldest first, because the connection to protect is the
//! newest: a probe that has just connected and whose head is still being read. A flood that
//! reopens its sockets evicts its own older ones, never the probe that came after them; a
//! scraper's keep-alive connection, evicted, costs only a reconnect.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};

/// How long a new connection waits for an evicted one to give back its place.
const EVICTION_WAIT: Duration = Duration::from_secs(1);

/// The open connections of one listener, by age, with their count of requests in progress.
#[derive(Default)]
pub(super) struct Connections {
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    next_id: u64,
    connections: BTreeMap<u64, Entry>,
}

struct Entry {
    requests: watch::Receiver<usize>,
    evict: Arc<Notify>,
}

/// One connection's place in [`Connections`]: removed when dropped.
pub(super) struct Registered {
    connections: Arc<Connections>,
    id: u64,
    /// Notified when the connection is to close.
    pub(super) evicted: Arc<Notify>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.connections.lock().connections.remove(&self.id);
    }
}

impl Connections {
    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open
            .lock()
            .expect("the connection list lock is never poisoned")
    }

    /// Adds a connection whose requests in progress `requests` counts.
    pub(super) fn register(self: &Arc<Self>, requests: watch::Receiver<usize>) -> Registered {
        let evicted = Arc::new(Notify::new());
        let mut open = self.lock();
        let id = open.next_id;
        open.next_id += 1;
        open.connections.insert(
            id,
            Entry {
                requests,
                evict: evicted.clone(),
            },
        );
        Registered {
            connections: self.clone(),
            id,
            evicted,
        }
    }

    /// A place under `cap` for a new connection: evicts the oldest idle connection when
    /// there is none free, and waits for it to close. `None` when every connection has a
    /// request in progress.
    pub(super) async fn make_room(&self, cap: &Arc<Semaphore>) -> Option<OwnedSemaphorePermit> {
        let evicted = {
            let mut open = self.lock();
            let oldest_idle = open
                .connections
                .iter()
                .find(|(_, entry)| *entry.requests.borrow() == 0)
                .map(|(&id, _)| id)?;
            open.connections.remove(&oldest_idle)?
        };
        evicted.evict.notify_one();
        tokio::time::timeout(EVICTION_WAIT, cap.clone().acquire_owned())
            .await
            .ok()?
            .ok()
    }
}
