//! What a route answers.

use std::borrow::Cow;

/// The content type of the Prometheus text exposition format.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// A route's answer: status, content type and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The HTTP status code.
    pub status: u16,
    /// The `Content-Type` value.
    pub content_type: Cow<'static, str>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// Any answer.
    pub fn new(
        status: u16,
        content_type: impl Into<Cow<'static, str>>,
        body: impl Into<Vec<u8>>,
    ) -> Self {
        Response {
            status,
            content_type: content_type.into(),
            body: body.into(),
        }
    }

    /// A `text/plain` answer.
    pub fn text(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Response::new(status, "text/plain", body)
    }

    /// An `application/json` answer.
    pub fn json(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Response::new(status, "application/json", body)
    }

    /// `200` with a Prometheus text exposition ([`PROMETHEUS_CONTENT_TYPE`]).
    pub fn prometheus(body: impl Into<Vec<u8>>) -> Self {
        Response::new(200, PROMETHEUS_CONTENT_TYPE, body)
    }
}
