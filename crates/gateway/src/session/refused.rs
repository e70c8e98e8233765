//! A refused subscription: what `pusher:subscription_error` says and which
//! limit it is counted under. Its own module because the subscribe steps,
//! presence joins and the subscribe rate all refuse the same way.

/// A refused subscription, answered with `pusher:subscription_error`.
pub(super) struct Refused {
    /// The error `type` (`AuthError`, `LimitReached`, `InvalidChannel`).
    pub(super) kind: &'static str,
    pub(super) error: String,
    pub(super) status: u16,
    /// The `herald_limit_rejections_total` label it counts under, unless
    /// it is a refused signature (401).
    pub(super) limit: &'static str,
}

impl Refused {
    pub fn new(kind: &'static str, error: impl Into<String>, status: u16) -> Self {
        Self {
            kind,
            error: error.into(),
            status,
            limit: "subscription",
        }
    }

    /// A `LimitReached` refusal counted under a `limit` label of its own.
    pub fn over_limit(limit: &'static str, error: impl Into<String>, status: u16) -> Self {
        Self {
            limit,
            ..Self::new("LimitReached", error, status)
        }
    }
}
