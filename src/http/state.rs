//! What the routes share: the settings, the metrics, the models once loaded, and the API
//! key's digest.

use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use super::error::ApiError;
use crate::metrics::Metrics;
use crate::service::{Service, ServiceError};
use crate::settings::Settings;

pub struct AppState {
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    service: OnceLock<Service>,
    /// KiB of `request_body_memory_bytes`: each request holds its body's bytes until answered.
    pub(super) body_memory: Arc<tokio::sync::Semaphore>,
    /// SHA-256 of the API key: keys are compared as fixed-size digests, in constant time.
    pub(super) api_key_digest: Option<[u8; 32]>,
    pub(super) created: u64,
}

impl AppState {
    pub fn new(settings: Settings, metrics: Arc<Metrics>) -> Self {
        AppState {
            api_key_digest: settings.server.api_key.as_deref().map(digest),
            body_memory: super::body_budget::budget(settings.server.request_body_memory_bytes),
            settings,
            metrics,
            service: OnceLock::new(),
            created: unix_now(),
        }
    }

    /// Makes the models available to the routes; `/health` turns 200.
    pub fn set_ready(&self, service: Service) {
        let _ = self.service.set(service);
    }

    pub(super) fn service(&self) -> Result<&Service, ApiError> {
        match self.service.get() {
            Some(service) if service.is_healthy() => Ok(service),
            Some(_) => Err(ServiceError::Unavailable.into()),
            None => Err(ApiError::NotReady),
        }
    }
}

pub(super) fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
