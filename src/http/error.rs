//! Protocol errors and the one table that maps them to status codes; never builds responses or does IO.

/// Everything a client can do wrong at the HTTP/1.1 framing layer.
///
/// Every variant is the client's fault (a downstream error): the server answers with `status()`
/// and closes the connection, because after a framing error it cannot know where the next request
/// starts. Retrying the same bytes is never useful.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpError {
    /// The request head (or the trailer section) is larger than its byte bound.
    HeadTooLarge,
    /// More header fields than `HeadLimits::header_count_max`.
    TooManyHeaders,
    /// The request-target is longer than `HeadLimits::uri_bytes_max`.
    UriTooLong,
    /// The body (declared or decoded so far) is larger than its byte bound.
    BodyTooLarge,
    /// The bytes break the grammar or a rule of RFC 9110/9112; the text says which.
    Malformed(&'static str),
    /// A transfer coding other than `chunked` (we decode none).
    UnsupportedTransferEncoding,
    /// An HTTP version other than 1.0 and 1.1.
    UnsupportedVersion,
    /// An `Expect` value other than `100-continue`.
    ExpectationFailed,
}

impl HttpError {
    /// The status code to answer with (the single error-to-status table).
    pub fn status(&self) -> u16 {
        match self {
            HttpError::HeadTooLarge => 431,
            HttpError::TooManyHeaders => 431,
            HttpError::UriTooLong => 414,
            HttpError::BodyTooLarge => 413,
            HttpError::Malformed(_) => 400,
            HttpError::UnsupportedTransferEncoding => 501,
            HttpError::UnsupportedVersion => 505,
            HttpError::ExpectationFailed => 417,
        }
    }

    /// The reason phrase of `status()`.
    pub fn reason(&self) -> &'static str {
        crate::http::reason_phrase(self.status())
    }

    /// Short human text for the error body.
    pub fn message(&self) -> &'static str {
        match self {
            HttpError::HeadTooLarge => "request header fields too large",
            HttpError::TooManyHeaders => "too many header fields",
            HttpError::UriTooLong => "request-target too long",
            HttpError::BodyTooLarge => "request body too large",
            HttpError::Malformed(detail) => detail,
            HttpError::UnsupportedTransferEncoding => "transfer coding not implemented",
            HttpError::UnsupportedVersion => "only HTTP/1.0 and HTTP/1.1 are supported",
            HttpError::ExpectationFailed => "only the 100-continue expectation is supported",
        }
    }
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status(), self.reason(), self.message())
    }
}

impl std::error::Error for HttpError {}

#[cfg(test)]
mod tests {
    use super::HttpError;

    fn check(error: HttpError, expected: (u16, &str)) {
        assert_eq!((error.status(), error.reason()), expected, "{error:?}");
        assert!(!error.message().is_empty(), "{error:?}");
    }

    #[test]
    fn status_table() {
        let cases = [
            (
                HttpError::HeadTooLarge,
                (431, "Request Header Fields Too Large"),
            ),
            (
                HttpError::TooManyHeaders,
                (431, "Request Header Fields Too Large"),
            ),
            (HttpError::UriTooLong, (414, "URI Too Long")),
            (HttpError::BodyTooLarge, (413, "Content Too Large")),
            (HttpError::Malformed("x"), (400, "Bad Request")),
            (
                HttpError::UnsupportedTransferEncoding,
                (501, "Not Implemented"),
            ),
            (
                HttpError::UnsupportedVersion,
                (505, "HTTP Version Not Supported"),
            ),
            (HttpError::ExpectationFailed, (417, "Expectation Failed")),
        ];
        for (error, expected) in cases {
            check(error, expected);
        }
    }
}
