//! How a request ended: the one value the access line records and the metrics count. The pipeline, the
//! pass-through and the router build it; nothing writes it on the side.

use std::time::{Duration, Instant};

use crate::auth::{Failure, Verified};
use crate::delivery::Delivery;
use crate::outcome::Outcome;

use super::forward::AppCall;
use super::reply::Reply;

/// How a request ended.
#[derive(Debug)]
pub struct Ended {
    /// What the sender got (or was being sent when it went away).
    pub status: u16,
    pub outcome: Outcome,
    /// The delivery's identity as its headers gave it; `verified` says whether it was proven.
    pub delivery: Option<Delivery>,
    /// How the delivery was proven authentic; `None` while it is not (refused, shadow mode, pass-through).
    pub verified: Option<Verified>,
    /// Why authentication failed, when it did.
    pub failure: Option<Failure>,
    /// Time spent with the app, when it was asked.
    pub app_time: Option<Duration>,
    /// When the app was asked (the client span's start).
    pub app_started: Option<Instant>,
    /// What the app answered, when it did (a deferred 4xx too).
    pub app_status: Option<u16>,
}

impl Ended {
    /// A request whose identity is `delivery` as claimed, before anything is proven.
    pub fn claimed(delivery: Option<Delivery>) -> Self {
        Self {
            status: 0,
            outcome: Outcome::BadRequest,
            delivery,
            verified: None,
            failure: None,
            app_time: None,
            app_started: None,
            app_status: None,
        }
    }

    /// The app was asked, as `call` tells.
    pub fn asked(&mut self, call: AppCall) {
        self.app_time = Some(call.took);
        self.app_started = Some(call.started);
        self.app_status = call.status;
    }

    /// The request ended with the sidecar's own answer.
    pub fn replied(mut self, reply: &Reply) -> Self {
        self.status = reply.status;
        self.outcome = reply.outcome;
        self.failure = self.failure.or(reply.failure);
        self
    }

    /// The request ended with the app's answer relayed as `status` (a 5xx makes Pitchpoint retry, as a
    /// 502 or 504 would: both count as upstream errors).
    pub fn relayed(mut self, status: u16) -> Self {
        self.status = status;
        self.outcome = if status >= 500 {
            Outcome::UpstreamError
        } else {
            Outcome::Forwarded
        };
        self
    }
}
