//! How a request ended, and the other fixed label sets of the metrics: shared by the proxy, the metrics
//! and the logs, so that none of them imports another. (Why an authentication failed is `crate::auth`'s.)
//!
//! Each enum's list of values and labels is derived from its one definition by `labelled!`: a new variant
//! is counted, rendered and logged without a second list to keep in step.

/// Defines a fieldless enum with `ALL` (every variant, in order) and `label()` (its metric label).
macro_rules! labelled {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident => $label:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            pub const ALL: [$name; [$($label),+].len()] = [$($name::$variant),+];

            pub const fn label(self) -> &'static str {
                match self {
                    $($name::$variant => $label,)+
                }
            }

            /// Position in `ALL`, for arrays of counters.
            pub const fn index(self) -> usize {
                self as usize
            }
        }
    };
}
pub(crate) use labelled;

labelled! {
    /// How a request ended, for the access log and `pps_sidecar_requests_total{outcome}`.
    pub enum Outcome {
        Forwarded => "forwarded",
        Duplicate => "duplicate",
        Unauthorized => "unauthorized",
        BadRequest => "bad_request",
        TooLarge => "too_large",
        MethodNotAllowed => "method_not_allowed",
        Filtered => "filtered",
        NotFound => "not_found",
        UpstreamError => "upstream_error",
        /// The sidecar could not decide (an issuer's keys cannot be loaded): 503, Pitchpoint retries.
        Unavailable => "unavailable",
        /// Bodies in memory reached `server.max_buffered_bytes`: 503, Pitchpoint retries.
        Overloaded => "overloaded",
        /// The body did not arrive whole within `server.body_timeout_ms`: 408.
        Timeout => "timeout",
        /// The app answered a 4xx, turned into 503 + Retry-After (`upstream.app_4xx = "retry"`).
        Deferred => "deferred",
    }
}

labelled! {
    /// Why the listener closed a connection without answering.
    pub enum Closed {
        /// Over `server.max_connections`.
        TooManyConnections => "too_many_connections",
        /// No whole request head within `server.header_timeout_ms`.
        HeaderTimeout => "header_timeout",
    }
}

labelled! {
    /// Why the spool removed an entry nobody replayed, for `pps_sidecar_spool_dropped_total{reason}`.
    pub enum SpoolDropped {
        /// The oldest, to stay within `spool.max_bytes`.
        MaxBytes => "max_bytes",
        /// Older than `spool.max_age_hours`.
        MaxAge => "max_age",
        /// The same event was spooled again since (its newest entry stays).
        Superseded => "superseded",
    }
}

labelled! {
    /// What a replay of one spooled entry came to, for `pps_sidecar_spool_replayed_total{result}` and the
    /// operator's `pps-sidecar spool replay` (the admin listener's JSON answer names it by its label).
    #[derive(serde::Serialize, serde::Deserialize)]
    #[serde(rename_all = "lowercase")]
    pub enum Replayed {
        /// The app acknowledged it with a 2xx: the entry is removed.
        Delivered => "delivered",
        /// The event was acknowledged since (Pitchpoint's retry got through): not sent, entry removed.
        Duplicate => "duplicate",
        /// The app refused it again: the entry stays.
        Refused => "refused",
        /// The app could not be reached or did not answer in time: the entry stays.
        Failed => "failed",
        /// Another copy of the event is with the app right now: not sent, the entry stays.
        Busy => "busy",
        /// No such entry (dropped, replayed already, or a wrong id).
        Missing => "missing",
        /// Older than `dedup.ttl_seconds`: whether the app acknowledged it since can no longer be known,
        /// so it is not sent; the entry stays for an operator to look at (`spool show`).
        Expired => "expired",
    }
}

labelled! {
    /// Why spans were not exported, for `pps_sidecar_trace_spans_dropped_total{reason}`.
    pub enum Dropped {
        /// The queue was full: the collector is slower than the traffic, or down.
        QueueFull => "queue_full",
        /// The collector did not take the batch: refused, unreachable, or too slow.
        ExportFailed => "export_failed",
    }
}
