//! Resumable downloads: one ranged GET after another until every requested byte arrived.
//!
//! The stream checks every response (`206` with exactly the requested `Content-Range`, `200` only
//! for a whole file from offset 0), counts bytes against the expected length, and on a broken,
//! short or stalled body asks again from the last byte received, a bounded number of times.

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use super::{ByteStream, DatastoreFile};
use crate::client::Client;
use crate::error::{Error, Result};
use crate::soap::{self, Http};

/// Parses `bytes a-b/total` (total may be `*`).
fn parse_content_range(value: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    let a = a.trim().parse().ok()?;
    let b = b.trim().parse().ok()?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    (a <= b).then_some((a, b, total))
}

/// An open response body and how many bytes it must deliver.
struct Opened {
    body: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    /// Absolute end (exclusive) this body must reach.
    end: Option<u64>,
}

/// State of a resumable download.
struct Download {
    client: Client,
    http: Arc<Http>,
    url: String,
    label: String,
    /// First byte requested.
    start: u64,
    /// Next byte we want.
    next: u64,
    /// End (exclusive), once known.
    end: Option<u64>,
    /// Whether the caller asked for a range (vs. the whole file).
    ranged: bool,
    body: Option<Opened>,
    resumes_left: u32,
    retry: u32,
    finished: bool,
}

impl Download {
    fn expected(&self) -> u64 {
        self.end.map_or(0, |e| e - self.start)
    }

    async fn open(&mut self) -> Result<Opened> {
        let whole = !self.ranged && self.next == 0;
        let mut relogged = false;
        loop {
            // The login generation the cookie belongs to, read before the cookie itself.
            let generation = self.client.login_count();
            let mut request = self.http.client.get(&self.url);
            if let Some(cookie) = self.http.cookie.header() {
                request = request.header(reqwest::header::COOKIE, cookie);
            }
            let range_end = self.end;
            if !whole {
                let value = match range_end {
                    Some(end) => format!("bytes={}-{}", self.next, end - 1),
                    None => format!("bytes={}-", self.next),
                };
                request = request.header(reqwest::header::RANGE, value);
            }
            let idle = self.client.config().transfer_idle_timeout;
            let response = match tokio::time::timeout(idle, request.send()).await {
                Err(_) => {
                    return Err(Error::Timeout {
                        context: format!("GET {}", self.label),
                        after: idle,
                    });
                }
                Ok(Err(e)) => {
                    return Err(self
                        .http
                        .map_error(&e, &format!("GET {}", self.label), idle));
                }
                Ok(Ok(r)) => r,
            };
            let status = response.status().as_u16();
            if (status == 401 || status == 403) && !relogged && !self.client.is_logged_out() {
                // The session behind the cookie expired (N8): log in again and repeat.
                relogged = true;
                self.client.relogin(generation).await?;
                continue;
            }
            let headers = response.headers().clone();
            let length = response.content_length();
            let end = match status {
                206 => {
                    let content_range = headers
                        .get(reqwest::header::CONTENT_RANGE)
                        .and_then(|v| v.to_str().ok())
                        .and_then(parse_content_range)
                        .ok_or_else(|| Error::BadRange {
                            file: self.label.clone(),
                            message: "206 without a valid Content-Range".into(),
                        })?;
                    let (a, b, _total) = content_range;
                    let wanted_end = range_end.map(|e| e - 1);
                    if whole || a != self.next || wanted_end.is_some_and(|w| w != b) {
                        return Err(Error::BadRange {
                            file: self.label.clone(),
                            message: format!(
                                "asked for bytes {}-{}, got Content-Range bytes {a}-{b}",
                                self.next,
                                wanted_end.map_or_else(String::new, |w| w.to_string())
                            ),
                        });
                    }
                    Some(b + 1)
                }
                200 if whole => length,
                200 => {
                    return Err(Error::BadRange {
                        file: self.label.clone(),
                        message: format!(
                            "server ignored the Range request for bytes {}- (HTTP 200)",
                            self.next
                        ),
                    });
                }
                416 => {
                    return Err(Error::BadRange {
                        file: self.label.clone(),
                        message: format!(
                            "range starting at {} not satisfiable (beyond the end of the file?)",
                            self.next
                        ),
                    });
                }
                _ => {
                    let message = response
                        .text()
                        .await
                        .map(|t| t.chars().take(200).collect())
                        .unwrap_or_default();
                    return Err(Error::Http {
                        context: format!("GET {}", self.label),
                        status,
                        message,
                        retry_after: soap::retry_after(&headers),
                    });
                }
            };
            return Ok(Opened {
                body: Box::pin(response.bytes_stream()),
                end,
            });
        }
    }

    /// The next chunk, resuming as needed. `None` at the end.
    async fn next_chunk(&mut self) -> Option<Result<Bytes>> {
        if self.finished {
            return None;
        }
        loop {
            if self.end.is_some_and(|e| self.next >= e) {
                self.finished = true;
                return None;
            }
            if self.body.is_none() {
                match self.open().await {
                    Ok(opened) => {
                        if self.end.is_none() {
                            self.end = opened.end;
                        }
                        self.body = Some(opened);
                    }
                    Err(err) => {
                        if err.is_retryable() && self.resumes_left > 0 {
                            self.back_off(&err).await;
                            continue;
                        }
                        self.finished = true;
                        return Some(Err(err));
                    }
                }
            }
            let idle = self.client.config().transfer_idle_timeout;
            let Some(opened) = self.body.as_mut() else {
                continue;
            };
            let failure = match tokio::time::timeout(idle, opened.body.next()).await {
                Ok(Some(Ok(chunk))) => {
                    let len = chunk.len() as u64;
                    if self.end.is_some_and(|e| self.next + len > e) {
                        self.finished = true;
                        return Some(Err(Error::BadRange {
                            file: self.label.clone(),
                            message: format!(
                                "server sent more than the {} bytes requested",
                                self.expected()
                            ),
                        }));
                    }
                    self.next += len;
                    return Some(Ok(chunk));
                }
                Ok(None) => match self.end {
                    // A body without a known length ends where it ends.
                    None => {
                        self.finished = true;
                        return None;
                    }
                    Some(end) if self.next >= end => {
                        self.finished = true;
                        return None;
                    }
                    Some(_) => Error::Truncated {
                        file: self.label.clone(),
                        got: self.next - self.start,
                        expected: self.expected(),
                    },
                },
                Ok(Some(Err(e))) => Error::Network {
                    context: format!("GET {}", self.label),
                    message: soap::error_chain(&e),
                },
                Err(_) => Error::Timeout {
                    context: format!("reading {}", self.label),
                    after: idle,
                },
            };
            self.body = None;
            // Resuming needs to know where the file ends; without a length we cannot tell a
            // short body from a complete one.
            if self.end.is_some() && self.resumes_left > 0 {
                tracing::warn!(file = %self.label, offset = self.next, error = %failure, "download interrupted; resuming");
                self.back_off(&failure).await;
                continue;
            }
            self.finished = true;
            let failure = match failure {
                Error::Network { .. } if self.end.is_some() => Error::Truncated {
                    file: self.label.clone(),
                    got: self.next - self.start,
                    expected: self.expected(),
                },
                other => other,
            };
            return Some(Err(failure));
        }
    }

    async fn back_off(&mut self, err: &Error) {
        self.resumes_left -= 1;
        let retry_after = match err {
            Error::Http { retry_after, .. } => *retry_after,
            _ => None,
        };
        let delay = self.client.config().retry.delay(self.retry, retry_after);
        self.retry += 1;
        tokio::time::sleep(delay).await;
    }
}

impl Client {
    fn download(
        &self,
        file: &DatastoreFile,
        start: u64,
        end: Option<u64>,
        ranged: bool,
    ) -> Result<ByteStream> {
        let http = self.http()?.clone();
        let url = file.url(&http.origin);
        let state = Download {
            client: self.clone(),
            label: file.path.to_string(),
            http,
            url,
            start,
            next: start,
            end,
            ranged,
            body: None,
            resumes_left: self.config().transfer_resume_attempts,
            retry: 0,
            finished: false,
        };
        Ok(Box::pin(futures_util::stream::unfold(
            state,
            |mut state| async move { state.next_chunk().await.map(|item| (item, state)) },
        )))
    }

    /// Streams `length` bytes of a file from `offset`. The stream yields exactly that many bytes
    /// or ends with an error; broken connections resume from the last byte received.
    ///
    /// # Errors
    /// Stream items: [`Error::BadRange`] (wrong status or Content-Range, beyond end of file),
    /// [`Error::Truncated`] "truncated download (got X of Y bytes)" after the resume attempts,
    /// [`Error::Timeout`] on a stall, [`Error::Http`] (404 for a missing file). Immediately:
    /// [`Error::Unsupported`] on a client without the HTTP transport.
    pub fn get_range(&self, file: &DatastoreFile, offset: u64, length: u64) -> Result<ByteStream> {
        if length == 0 {
            return Ok(Box::pin(futures_util::stream::empty()));
        }
        let end = offset
            .checked_add(length)
            .ok_or_else(|| Error::InvalidInput(format!("range {offset}+{length} overflows")))?;
        self.download(file, offset, Some(end), true)
    }

    /// Streams a whole file (its length comes from the response; resumes like
    /// [`Client::get_range`]).
    ///
    /// # Errors
    /// As [`Client::get_range`].
    pub fn get(&self, file: &DatastoreFile) -> Result<ByteStream> {
        self.download(file, 0, None, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges_parse() {
        assert_eq!(
            parse_content_range("bytes 0-99/1000"),
            Some((0, 99, Some(1000)))
        );
        assert_eq!(parse_content_range("bytes 5-5/*"), Some((5, 5, None)));
        assert_eq!(parse_content_range("bytes 9-3/10"), None);
        assert_eq!(parse_content_range("items 0-1/2"), None);
        assert_eq!(parse_content_range("bytes */1000"), None);
    }
}
